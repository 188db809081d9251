package cachemiddleware

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/cache"
	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/distribution/v3/registry/storage/driver/factory"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Garbage collection, end to end. distribution's mark and sweep removes blobs (and
// repositories' layer and manifest links) from storage behind any cache's back, so a
// registry that uses the service would go on answering the collected blobs. GarbageCollect
// runs distribution's own storage.MarkAndSweep, unchanged and with the same options as
// `registry garbage-collect`, and then revalidates in the service exactly what it
// removed (the storage's blobs and links are listed before and after the sweep): each
// removed link in its repository, each removed blob in the global scope. The service
// reads its own backend and drops those entries, fenced as a Clear's removal is.

// GCOptions are the command's flags.
type GCOptions struct {
	DryRun         bool // mark only: nothing removed, nothing revalidated
	RemoveUntagged bool // distribution's --delete-untagged
	Quiet          bool // distribution's --quiet (the mark and sweep's own output)
	Concurrency    int  // revalidations in flight at once (default 16)
}

// GCReport counts what the collection removed and what the service was told.
type GCReport struct {
	BlobsRemoved int // blobs removed from storage
	LinksRemoved int // repository links (layers, manifest revisions) removed
	Revalidated  int // revalidations the service answered BLOB_UNKNOWN: entry removed
	StillHeld    int // the service's backend still holds the blob (another storage, or pushed again)
	Skipped      int // global revalidations the service's token may not make (the repository ones removed the global entries)
	Failed       []GCFailure
}

// GCFailure is a revalidation the service could not make.
type GCFailure struct {
	Digest     digest.Digest
	Repository string // "" = the global scope
	Err        error
}

// ServiceOptions returns the options of the descriptorcache middleware in config.
func ServiceOptions(config *configuration.Configuration) (map[string]any, error) {
	for _, m := range config.Middleware["repository"] {
		if m.Name == Name && !m.Disabled {
			return m.Options, nil
		}
	}
	return nil, fmt.Errorf("the configuration enables no %s repository middleware: nothing to revalidate (use distribution's registry garbage-collect)", Name)
}

type link struct {
	repo string
	dgst digest.Digest
}

// GarbageCollect runs distribution's mark and sweep on the configuration's storage and
// revalidates what it removed through the service configured in the middleware. The
// service must answer its health check before anything is removed. err is non-nil
// when the collection failed or some revalidation failed (the report lists them).
func GarbageCollect(ctx context.Context, config *configuration.Configuration, opts GCOptions, out io.Writer) (GCReport, error) {
	var report GCReport
	options, err := ServiceOptions(config)
	if err != nil {
		return report, err
	}
	provider, err := ProviderFor(options)
	if err != nil {
		return report, fmt.Errorf("%s middleware: %w", Name, err)
	}
	if err := checkService(ctx, provider); err != nil {
		return report, fmt.Errorf("the descriptor service is not serving, nothing was collected: %w", err)
	}
	drv, err := factory.Create(ctx, config.Storage.Type(), config.Storage.Parameters())
	if err != nil {
		return report, fmt.Errorf("failed to construct %s driver: %w", config.Storage.Type(), err)
	}
	registry, err := storage.NewRegistry(ctx, drv)
	if err != nil {
		return report, fmt.Errorf("failed to construct registry: %w", err)
	}
	var blobsBefore map[digest.Digest]bool
	var linksBefore map[link]bool
	if !opts.DryRun {
		if blobsBefore, linksBefore, err = inventory(ctx, registry); err != nil {
			return report, fmt.Errorf("listing storage before the collection: %w", err)
		}
	}
	err = storage.MarkAndSweep(ctx, drv, registry, storage.GCOpts{
		DryRun: opts.DryRun, RemoveUntagged: opts.RemoveUntagged, Quiet: opts.Quiet,
	})
	if opts.DryRun {
		return report, err
	}
	// Even after a failed sweep, what it did remove is revalidated.
	gcErr := err
	blobsAfter, linksAfter, err := inventory(ctx, registry)
	if err != nil {
		return report, errors.Join(gcErr, fmt.Errorf("listing storage after the collection (the service was not told; revalidate every collected blob with descriptorctl revalidate): %w", err))
	}
	var removedLinks []link
	for l := range linksBefore {
		if !linksAfter[l] {
			removedLinks = append(removedLinks, l)
		}
	}
	var removedBlobs []digest.Digest
	for d := range blobsBefore {
		if !blobsAfter[d] {
			removedBlobs = append(removedBlobs, d)
		}
	}
	sort.Slice(removedLinks, func(i, j int) bool {
		if removedLinks[i].repo != removedLinks[j].repo {
			return removedLinks[i].repo < removedLinks[j].repo
		}
		return removedLinks[i].dgst < removedLinks[j].dgst
	})
	sort.Slice(removedBlobs, func(i, j int) bool { return removedBlobs[i] < removedBlobs[j] })
	report.BlobsRemoved, report.LinksRemoved = len(removedBlobs), len(removedLinks)
	// Repository scopes first: their revalidation also removes the global entries.
	work := removedLinks
	for _, d := range removedBlobs {
		work = append(work, link{"", d})
	}
	revalidateAll(ctx, provider, work, opts.Concurrency, &report)
	fmt.Fprintf(out, "descriptor service: %d blobs and %d links removed from storage; %d entries revalidated and removed, %d still held by the service's backend, %d global revalidations not allowed to the token, %d failed\n",
		report.BlobsRemoved, report.LinksRemoved, report.Revalidated, report.StillHeld, report.Skipped, len(report.Failed))
	if len(report.Failed) > 0 {
		fmt.Fprintf(out, "the descriptor service may still answer these collected blobs; once it is reachable, run for each:\n")
		for _, f := range report.Failed {
			if f.Repository == "" {
				fmt.Fprintf(out, "  descriptorctl revalidate %s    # %v\n", f.Digest, f.Err)
			} else {
				fmt.Fprintf(out, "  descriptorctl revalidate %s --repository %s    # %v\n", f.Digest, f.Repository, f.Err)
			}
		}
		return report, errors.Join(gcErr, fmt.Errorf("%d of %d revalidations failed", len(report.Failed), len(work)))
	}
	return report, gcErr
}

// checkService asks the service's health: a collection whose removals the service
// cannot be told of is refused before it removes anything.
func checkService(ctx context.Context, provider cache.BlobDescriptorCacheProvider) error {
	p, ok := provider.(interface{ Client() *descriptor.Client })
	if !ok {
		return nil
	}
	st, err := p.Client().Health(ctx, descriptor.Service)
	if err != nil {
		return err
	}
	if st != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %s", st)
	}
	return nil
}

func revalidateAll(ctx context.Context, provider cache.BlobDescriptorCacheProvider, work []link, concurrency int, report *GCReport) {
	if concurrency <= 0 {
		concurrency = 16
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	jobs := make(chan link)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for l := range jobs {
				err := revalidateOne(ctx, provider, l)
				mu.Lock()
				switch {
				case errors.Is(err, distribution.ErrBlobUnknown):
					report.Revalidated++
				case err == nil:
					report.StillHeld++
				case l.repo == "" && errors.Is(err, descriptor.ErrPermissionDenied):
					report.Skipped++
				default:
					report.Failed = append(report.Failed, GCFailure{l.dgst, l.repo, err})
				}
				mu.Unlock()
			}
		}()
	}
	for _, l := range work {
		jobs <- l
	}
	close(jobs)
	wg.Wait()
	sort.Slice(report.Failed, func(i, j int) bool {
		a, b := report.Failed[i], report.Failed[j]
		return a.Repository < b.Repository || (a.Repository == b.Repository && a.Digest < b.Digest)
	})
}

func revalidateOne(ctx context.Context, provider cache.BlobDescriptorCacheProvider, l link) error {
	var service any = provider
	if l.repo != "" {
		scoped, err := provider.RepositoryScoped(l.repo)
		if err != nil {
			return err
		}
		service = scoped
	}
	rv, ok := service.(revalidator)
	if !ok {
		return errors.New("the provider cannot revalidate")
	}
	_, err := rv.Revalidate(ctx, l.dgst)
	return err
}

// inventory lists the storage's blobs and every repository's layer and manifest links.
func inventory(ctx context.Context, registry distribution.Namespace) (map[digest.Digest]bool, map[link]bool, error) {
	blobs := map[digest.Digest]bool{}
	err := registry.Blobs().Enumerate(ctx, func(d digest.Digest) error {
		blobs[d] = true
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return nil, nil, err
	}
	links := map[link]bool{}
	repos, ok := registry.(distribution.RepositoryEnumerator)
	if !ok {
		return nil, nil, errors.New("the storage cannot enumerate repositories")
	}
	err = repos.Enumerate(ctx, func(name string) error {
		named, err := reference.WithName(name)
		if err != nil {
			return fmt.Errorf("repository %s: %w", name, err)
		}
		repo, err := registry.Repository(ctx, named)
		if err != nil {
			return err
		}
		add := func(d digest.Digest) error {
			links[link{name, d}] = true
			return nil
		}
		if layers, ok := repo.Blobs(ctx).(distribution.ManifestEnumerator); ok {
			if err := layers.Enumerate(ctx, add); err != nil && !isPathNotFound(err) {
				return err
			}
		}
		manifests, err := repo.Manifests(ctx)
		if err != nil {
			return err
		}
		if revisions, ok := manifests.(distribution.ManifestEnumerator); ok {
			if err := revisions.Enumerate(ctx, add); err != nil && !isPathNotFound(err) {
				return err
			}
		}
		return nil
	})
	if err != nil && !isPathNotFound(err) {
		return nil, nil, err
	}
	return blobs, links, nil
}

func isPathNotFound(err error) bool {
	var notFound driver.PathNotFoundError
	return errors.As(err, &notFound)
}
