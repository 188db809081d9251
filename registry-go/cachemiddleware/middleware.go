// Package cachemiddleware makes a descriptor service the blob descriptor cache of a
// distribution v3 registry, without modifying distribution.
//
// distribution picks its blob descriptor cache from a fixed list (storage.cache:
// inmemory or redis), so this package plugs in one level up: it registers the
// repository middleware "descriptorcache" (distribution's
// registry/middleware/repository hook). Importing the package registers it; a
// registry built with it (cmd/registry-descriptor) enables it in its configuration:
//
//	middleware:
//	  repository:
//	    - name: descriptorcache
//	      options:
//	        target: 127.0.0.1:5051
//
// and leaves storage.cache unset, so the service is the only cache. For every
// repository the middleware wraps the registry's blob store:
//
//   - Stat (blob HEAD and GET, and every other blob lookup through the repository)
//     asks the service in the repository's scope; on BLOB_UNKNOWN it asks the
//     registry's storage and primes the service with the answer; when the service
//     fails it falls back to storage and writes nothing (distribution's cached
//     statter rule). A HEAD answered by the service does not touch storage at all.
//   - A blob pushed through the registry (upload commit, cross-repository mount,
//     Put) primes the service with the canonical descriptor (and the provisional
//     digest when it uses another algorithm).
//   - A blob deleted through the registry is cleared in the service first, then
//     deleted from storage; a service that refuses (UNAVAILABLE, UNSUPPORTED)
//     fails the DELETE with nothing changed.
//   - Where storage finds a blob missing that the service claimed (a GET's body, a
//     manifest PUT's verification, the source of a cross-repository mount), the
//     registry answers as it would alone (404 BLOB_UNKNOWN, MANIFEST_BLOB_UNKNOWN,
//     an upload instead of a mount) and the service's entry is revalidated (the
//     Revalidate RPC: the service reads its backend and drops the entry), so the
//     next HEAD is right (heal.go).
//
// Bodies (GET) are still served from storage, after the service answered the Stat.
package cachemiddleware

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/distribution/distribution/v3"
	middleware "github.com/distribution/distribution/v3/registry/middleware/repository"
	"github.com/distribution/distribution/v3/registry/storage/cache"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// Name is the repository middleware name to put in the registry's configuration.
const Name = "descriptorcache"

func init() {
	if err := middleware.Register(Name, initRepository); err != nil {
		panic(err)
	}
}

// providers holds one provider (one gRPC connection) per distinct set of options:
// distribution calls the middleware's InitFunc for every request.
var providers sync.Map // options key -> *providerEntry

type providerEntry struct {
	once     sync.Once
	provider cache.BlobDescriptorCacheProvider
	batchers *batchers // nil: batchstat off
	err      error
}

// ProviderFor returns the provider for these middleware options, creating it on the
// first call and sharing it afterwards. Exported so a registry's main can check the
// options at start (and for tests).
func ProviderFor(options map[string]any) (cache.BlobDescriptorCacheProvider, error) {
	e, err := entryFor(options)
	if err != nil {
		return nil, err
	}
	return e.provider, nil
}

func entryFor(options map[string]any) (*providerEntry, error) {
	key, err := optionsKey(options)
	if err != nil {
		return nil, err
	}
	entry, _ := providers.LoadOrStore(key, &providerEntry{})
	e := entry.(*providerEntry)
	e.once.Do(func() {
		var batch batchOptions
		e.provider, batch, e.err = newProvider(options)
		if e.err == nil && batch.enabled {
			if p, ok := e.provider.(interface{ Client() *descriptor.Client }); ok {
				e.batchers = newBatchers(p.Client(), batch.maxBatch)
			}
		}
	})
	return e, e.err
}

func optionsKey(options map[string]any) (string, error) {
	keys := make([]string, 0, len(options))
	for k := range options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%v;", k, options[k])
	}
	return b.String(), nil
}

func initRepository(ctx context.Context, repository distribution.Repository, options map[string]any) (distribution.Repository, error) {
	e, err := entryFor(options)
	if err != nil {
		return nil, fmt.Errorf("%s middleware: %w", Name, err)
	}
	name := repository.Named().Name()
	scoped, err := e.provider.RepositoryScoped(name)
	if err != nil {
		return nil, fmt.Errorf("%s middleware: %w", Name, err)
	}
	return &repositoryWithCache{Repository: repository, service: scoped, batchers: e.batchers, provider: e.provider}, nil
}

// repositoryWithCache is the registry's repository with its blob store wrapped.
type repositoryWithCache struct {
	distribution.Repository
	service  distribution.BlobDescriptorService
	batchers *batchers
	provider cache.BlobDescriptorCacheProvider
}

func (r *repositoryWithCache) Blobs(ctx context.Context) distribution.BlobStore {
	return &blobStore{
		BlobStore: r.Repository.Blobs(ctx),
		service:   r.service,
		batchers:  r.batchers,
		repo:      r.Repository.Named().Name(),
		provider:  r.provider,
	}
}

// blobStore answers Stat through the service and keeps it current on pushes and
// deletes. One is made per request (per Blobs call), so the descriptor of the last
// Stat can serve the HEAD that follows it without asking the service twice.
type blobStore struct {
	distribution.BlobStore
	service  distribution.BlobDescriptorService
	batchers *batchers // nil: one Stat RPC per Stat
	repo     string
	provider cache.BlobDescriptorCacheProvider // for the scope of a mount's source

	mu      sync.Mutex
	last    *distribution.Descriptor // the last Stat answered, for ServeBlob
	lastKey digest.Digest            // the digest that Stat was asked (an alias of last's, or the same)
}

func (bs *blobStore) log(ctx context.Context) *logrus.Entry {
	return logrus.WithFields(logrus.Fields{"middleware": Name, "repository": bs.repo})
}

// serviceStat asks the service, through the repository's batcher when batchstat is on.
func (bs *blobStore) serviceStat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	if bs.batchers == nil {
		return bs.service.Stat(ctx, dgst)
	}
	return bs.batchers.get(bs.repo, bs.service).Stat(ctx, bs.batchers, bs.repo, dgst)
}

func (bs *blobStore) Stat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	desc, err := bs.serviceStat(ctx, dgst)
	switch {
	case err == nil:
		bs.remember(dgst, desc)
		return desc, nil
	case errors.Is(err, distribution.ErrBlobUnknown):
		desc, err = bs.BlobStore.Stat(ctx, dgst)
		if err != nil {
			return desc, err
		}
		if err := bs.service.SetDescriptor(ctx, dgst, desc); err != nil {
			bs.log(ctx).WithError(err).Warn("priming the descriptor service after a miss failed")
		}
	case isDigestError(err):
		// The registry's router only passes well-formed digests, but a caller inside
		// the registry may not: answer as storage would.
		return bs.BlobStore.Stat(ctx, dgst)
	default:
		// The service failed: storage answers and nothing is written back, as
		// distribution's cached statter does after a cache error.
		bs.log(ctx).WithError(err).Warn("descriptor service failed, answering from storage")
		desc, err = bs.BlobStore.Stat(ctx, dgst)
		if err != nil {
			return desc, err
		}
	}
	bs.remember(dgst, desc)
	return desc, nil
}

func isDigestError(err error) bool {
	return errors.Is(err, digest.ErrDigestInvalidFormat) ||
		errors.Is(err, digest.ErrDigestInvalidLength) ||
		errors.Is(err, digest.ErrDigestUnsupported)
}

func (bs *blobStore) remember(key digest.Digest, desc distribution.Descriptor) {
	bs.mu.Lock()
	bs.last, bs.lastKey = &desc, key
	bs.mu.Unlock()
}

// aliasOf is the digest the handler's Stat asked for when it was another algorithm's
// digest of dgst (the handler serves the canonical digest the Stat answered).
func (bs *blobStore) aliasOf(dgst digest.Digest) digest.Digest {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.last != nil && bs.last.Digest == dgst && bs.lastKey != dgst {
		return bs.lastKey
	}
	return ""
}

func (bs *blobStore) recall(dgst digest.Digest) (distribution.Descriptor, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	if bs.last != nil && bs.last.Digest == dgst {
		return *bs.last, true
	}
	return distribution.Descriptor{}, false
}

// ServeBlob answers a HEAD from the descriptor (the service's answer to the Stat
// the handler made just before, else a new Stat) with the headers distribution's
// blob server sets; a GET is served from storage.
func (bs *blobStore) ServeBlob(ctx context.Context, w http.ResponseWriter, r *http.Request, dgst digest.Digest) error {
	if r.Method != http.MethodHead {
		err := bs.BlobStore.ServeBlob(ctx, w, r, dgst)
		if errors.Is(err, distribution.ErrBlobUnknown) {
			// The service answered the handler's Stat, storage lacks the blob:
			// distribution's handler would turn this error into a 500. Answer the 404
			// the registry alone answers, and drop the service's stale entry.
			bs.heal(ctx, bs.service, bs.repo, dgst, "GET")
			asked := dgst
			if alias := bs.aliasOf(dgst); alias != "" {
				bs.heal(ctx, bs.service, bs.repo, alias, "GET")
				asked = alias // the digest of the request, as distribution's 404 names it
			}
			return serveBlobUnknown(w, asked)
		}
		return err
	}
	desc, ok := bs.recall(dgst)
	if !ok {
		var err error
		if desc, err = bs.Stat(ctx, dgst); err != nil {
			return err
		}
	}
	h := w.Header()
	etag := fmt.Sprintf(`"%s"`, desc.Digest)
	h.Set("ETag", etag)
	h.Set("Cache-Control", "max-age=31536000")
	h.Set("Accept-Ranges", "bytes")
	if h.Get("Docker-Content-Digest") == "" {
		h.Set("Docker-Content-Digest", desc.Digest.String())
	}
	if h.Get("Content-Type") == "" {
		h.Set("Content-Type", desc.MediaType)
	}
	if match := r.Header.Get("If-None-Match"); match != "" && (match == etag || match == "*") {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	if h.Get("Content-Length") == "" {
		h.Set("Content-Length", fmt.Sprint(desc.Size))
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// Delete clears the service's entry, then deletes from storage, then clears the
// service again if the storage delete removed a link. distribution's handler compares
// the result with its sentinels, so they are returned as they are.
//
// The second Clear is the plug-in's half of the service's rule that a blob leaves
// storage only between two invalidations (docs/registry-go.md): a push may link the
// blob again and prime the service after the first Clear has returned (its
// SetDescriptor, checked against the backend, finds the link and is written), and the
// storage delete then removes that link. Nothing else would remove the entry: the
// service would answer HEAD 200 for a blob whose link is gone.
func (bs *blobStore) Delete(ctx context.Context, dgst digest.Digest) error {
	cleared := true
	if err := bs.service.Clear(ctx, dgst); err != nil {
		if !errors.Is(err, distribution.ErrBlobUnknown) {
			bs.log(ctx).WithError(err).Warn("descriptor service refused the clear: nothing deleted")
			if errors.Is(err, distribution.ErrUnsupported) {
				return distribution.ErrUnsupported
			}
			return err
		}
		cleared = false
	}
	err := bs.BlobStore.Delete(ctx, dgst)
	if errors.Is(err, distribution.ErrBlobUnknown) {
		// Storage found no link: this DELETE removed nothing outside the service's Clear.
		if cleared {
			// The service's own backend may be this very storage and has already
			// removed the link: the blob is deleted.
			return nil
		}
		return distribution.ErrBlobUnknown
	}
	// Storage removed a link (or may have, on an error): whatever a push primed since
	// the first Clear goes now. Run to the end even if the client has gone, as the
	// service's Clear does.
	if again := bs.service.Clear(context.WithoutCancel(ctx), dgst); again != nil && !errors.Is(again, distribution.ErrBlobUnknown) {
		bs.log(ctx).WithError(again).WithField("digest", dgst).Warn(
			"storage deleted the blob's link but the descriptor service could not clear it again: retry the DELETE")
		if err == nil {
			// The deletion is done but the service may still answer the blob: not OK,
			// so the client retries (a retry's Clear removes the entry).
			return again
		}
	}
	return err
}

func (bs *blobStore) prime(ctx context.Context, provisional digest.Digest, desc distribution.Descriptor) {
	if err := bs.service.SetDescriptor(ctx, desc.Digest, desc); err != nil {
		bs.log(ctx).WithError(err).Warn("priming the descriptor service after a push failed")
	}
	if provisional != "" && provisional != desc.Digest {
		if err := bs.service.SetDescriptor(ctx, provisional, desc); err != nil {
			bs.log(ctx).WithError(err).Warn("priming the descriptor service after a push failed")
		}
	}
	// The push linked the blob, then primed the service; a DELETE of the same blob may
	// have removed the link in between, its Clear returning before this SetDescriptor
	// started (so the service wrote it, as its API says). Storage, read after the
	// priming, tells: a link gone now was either deleted before the priming (then the
	// entry is stale, and Revalidate removes it) or after it (then that DELETE's own
	// Clear removed it). Either way nothing stale is left.
	if _, err := bs.BlobStore.Stat(ctx, desc.Digest); errors.Is(err, distribution.ErrBlobUnknown) {
		bs.heal(ctx, bs.service, bs.repo, desc.Digest, "push raced by a delete")
		if provisional != "" && provisional != desc.Digest {
			bs.heal(ctx, bs.service, bs.repo, provisional, "push raced by a delete")
		}
	}
}

func (bs *blobStore) Put(ctx context.Context, mediaType string, p []byte) (distribution.Descriptor, error) {
	desc, err := bs.BlobStore.Put(ctx, mediaType, p)
	if err == nil {
		bs.prime(ctx, "", desc)
	}
	return desc, err
}

func (bs *blobStore) Create(ctx context.Context, options ...distribution.BlobCreateOption) (distribution.BlobWriter, error) {
	w, err := bs.BlobStore.Create(ctx, options...)
	var mounted distribution.ErrBlobMounted
	if errors.As(err, &mounted) {
		bs.prime(ctx, "", mounted.Descriptor)
	} else if from, ok := mountSource(options); ok {
		// Storage did not mount: the source repository lacks the blob (or its data),
		// whatever the service says of it there.
		bs.healMountSource(ctx, from)
	}
	if err != nil {
		return w, err // the handler type-asserts ErrBlobMounted: returned as it is
	}
	return &blobWriter{BlobWriter: w, store: bs}, nil
}

func (bs *blobStore) Resume(ctx context.Context, id string) (distribution.BlobWriter, error) {
	w, err := bs.BlobStore.Resume(ctx, id)
	if err != nil {
		return w, err
	}
	return &blobWriter{BlobWriter: w, store: bs}, nil
}

// blobWriter primes the service when an upload is committed.
type blobWriter struct {
	distribution.BlobWriter
	store *blobStore
}

func (w *blobWriter) Commit(ctx context.Context, provisional distribution.Descriptor) (distribution.Descriptor, error) {
	desc, err := w.BlobWriter.Commit(ctx, provisional)
	if err == nil {
		w.store.prime(ctx, provisional.Digest, desc)
	}
	return desc, err
}
