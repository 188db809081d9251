package cachemiddleware

import (
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/api/errcode"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// The registry plug-in heals what it sees. The service can claim a blob that storage
// no longer holds: removed behind its back by garbage collection, or deleted while a
// push of the same blob was being committed. The registry alone answers such a blob
// 404; distribution's handlers, given a Stat that succeeded and a read that then
// fails, answer 500. Wherever storage finds such a blob missing, the middleware
// answers what the registry alone answers and asks the service to revalidate the
// entry (the Revalidate RPC: the service reads its own backend, bypassing its cache,
// and removes the entry when the blob is gone, fenced as a Clear's removal is), so the
// next HEAD, answered by the service alone, is right.

// revalidator is the service's Revalidate, in one scope (descriptorcache's provider
// and its repository-scoped services have it).
type revalidator interface {
	Revalidate(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error)
}

// heal revalidates dgst in the service's scope (repo names it in the log). It waits
// for the answer, so the registry's response (404) is sent once the service agrees.
func (bs *blobStore) heal(ctx context.Context, service any, repo string, dgst digest.Digest, seen string) {
	log := bs.log(ctx).WithFields(map[string]any{"digest": dgst, "scope": repo, "seen": seen})
	rv, ok := service.(revalidator)
	if !ok {
		log.Warn("storage lacks a blob the descriptor service may claim; the service cannot revalidate")
		return
	}
	_, err := rv.Revalidate(context.WithoutCancel(ctx), dgst)
	switch {
	case errors.Is(err, distribution.ErrBlobUnknown):
		log.Warn("storage lacks the blob the descriptor service claimed: its entry was revalidated and removed")
	case err == nil:
		// The service's backend still holds it (a backend other than this storage).
		log.Warn("storage lacks the blob but the descriptor service's backend holds it: its entry stays")
	default:
		log.WithError(err).Warn("storage lacks the blob; revalidating the descriptor service's entry failed")
	}
}

// serveBlobUnknown writes the response distribution's handler writes for a blob that
// is not there: 404 with errcode BLOB_UNKNOWN. (Returned as an error, the handler
// would answer 500 UNKNOWN.)
func serveBlobUnknown(w http.ResponseWriter, dgst digest.Digest) error {
	return errcode.ServeJSON(w, errcode.ErrorCodeBlobUnknown.WithDetail(dgst))
}

// Get and Open read storage after a Stat: a blob it lacks heals the service too.
func (bs *blobStore) Get(ctx context.Context, dgst digest.Digest) ([]byte, error) {
	p, err := bs.BlobStore.Get(ctx, dgst)
	if errors.Is(err, distribution.ErrBlobUnknown) {
		bs.heal(ctx, bs.service, bs.repo, dgst, "read")
	}
	return p, err
}

func (bs *blobStore) Open(ctx context.Context, dgst digest.Digest) (io.ReadSeekCloser, error) {
	rc, err := bs.BlobStore.Open(ctx, dgst)
	if errors.Is(err, distribution.ErrBlobUnknown) {
		bs.heal(ctx, bs.service, bs.repo, dgst, "read")
	}
	return rc, err
}

// mountSource is the source of a cross-repository mount the options ask for.
func mountSource(options []distribution.BlobCreateOption) (reference.Canonical, bool) {
	var opts distribution.CreateOptions
	for _, option := range options {
		if err := option.Apply(&opts); err != nil {
			return nil, false
		}
	}
	if !opts.Mount.ShouldMount || opts.Mount.From == nil {
		return nil, false
	}
	return opts.Mount.From, true
}

// healMountSource revalidates the source repository's entry of a mount storage
// refused (so a client that HEADs the source is answered 404 too).
func (bs *blobStore) healMountSource(ctx context.Context, from reference.Canonical) {
	if bs.provider == nil {
		return
	}
	name := from.Name()
	scoped, err := bs.provider.RepositoryScoped(name)
	if err != nil {
		return
	}
	bs.heal(ctx, scoped, name, from.Digest(), "mount")
}

// manifestService heals the service when a manifest PUT is refused for blobs storage
// lacks (MANIFEST_BLOB_UNKNOWN): the refusal is the registry's own, returned as it is
// (distribution's handler type-switches on it); the service's entries for those blobs,
// which made the client skip their upload, are revalidated.
type manifestService struct {
	distribution.ManifestService
	store *blobStore
}

func (r *repositoryWithCache) Manifests(ctx context.Context, options ...distribution.ManifestServiceOption) (distribution.ManifestService, error) {
	ms, err := r.Repository.Manifests(ctx, options...)
	if err != nil {
		return ms, err
	}
	return &manifestService{ManifestService: ms, store: r.Blobs(ctx).(*blobStore)}, nil
}

func (ms *manifestService) Put(ctx context.Context, manifest distribution.Manifest, options ...distribution.ManifestServiceOption) (digest.Digest, error) {
	dgst, err := ms.ManifestService.Put(ctx, manifest, options...)
	var verification distribution.ErrManifestVerification
	if errors.As(err, &verification) {
		for _, e := range verification {
			var unknown distribution.ErrManifestBlobUnknown
			if errors.As(e, &unknown) {
				ms.store.heal(ctx, ms.store.service, ms.store.repo, unknown.Digest, "manifest")
			}
		}
	}
	return dgst, err
}
