package cachemiddleware

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// beforeStorageDelete is the registry's blob store with a hook run when the plug-in's
// DELETE reaches the storage delete (after the service's Clear has returned): it puts
// a racing request exactly where the registry scenario's rounds meet it by chance.
type beforeStorageDelete struct {
	distribution.BlobStore
	hook func()
}

func (b *beforeStorageDelete) Delete(ctx context.Context, dgst digest.Digest) error {
	b.hook()
	return b.BlobStore.Delete(ctx, dgst)
}

// A push that links the blob again and primes the service after a DELETE's Clear has
// returned, but before that DELETE's storage delete removes the link, must not leave
// the service answering the blob: the registry alone would answer HEAD 404, and with a
// stale entry the plug-in answered 200 for good (the last advertised rounds of
// tests/interop/test_registry_scenarios.py's push racing a delete). Real parts: a
// descriptor-server whose filesystem backend is the registry's storage root, and
// distribution's own storage over it.
func TestAPushBetweenTheClearAndTheStorageDeleteLeavesNothingAdvertised(t *testing.T) {
	root := t.TempDir()
	target := startServerOver(t, root)
	ctx := context.Background()
	registry, err := storage.NewRegistry(ctx, filesystem.New(filesystem.DriverParameters{RootDirectory: root, MaxThreads: 100}), storage.EnableDelete)
	if err != nil {
		t.Fatal(err)
	}
	named, err := reference.WithName("race/repo")
	if err != nil {
		t.Fatal(err)
	}
	inner, err := registry.Repository(ctx, named)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := initRepository(ctx, inner, map[string]any{"target": target})
	if err != nil {
		t.Fatal(err)
	}
	content := []byte("a blob a push and a delete race for")
	desc, err := repo.Blobs(ctx).Put(ctx, "application/octet-stream", content)
	if err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, "docker/registry/v2/repositories/race/repo/_layers/sha256", desc.Digest.Encoded(), "link")

	deleting := repo.Blobs(ctx).(*blobStore)
	pushed := false
	deleting.BlobStore = &beforeStorageDelete{BlobStore: deleting.BlobStore, hook: func() {
		// The service's Clear removed the link; the racing push links the blob again
		// and primes the service (checked against the backend, which holds the link).
		if _, err := os.Stat(link); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the service's Clear left the link: %v", err)
		}
		if _, err := repo.Blobs(ctx).Put(ctx, "application/octet-stream", content); err != nil {
			t.Errorf("the racing push: %v", err)
		}
		pushed = true
	}}
	if err := deleting.Delete(ctx, desc.Digest); err != nil {
		t.Fatalf("DELETE: %v", err)
	}
	if !pushed {
		t.Fatal("the racing push did not run")
	}
	if _, err := os.Stat(link); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the DELETE's storage delete left the link: %v", err)
	}
	// The link is gone, as the DELETE's answer says: the registry must not advertise
	// the blob. The service is asked alone (a HEAD's lookup), then through the plug-in.
	service := repo.(*repositoryWithCache).service
	if got, err := service.Stat(ctx, desc.Digest); !errors.Is(err, distribution.ErrBlobUnknown) {
		t.Fatalf("the service answers a blob whose link is gone: %v, %v", got, err)
	}
	if got, err := repo.Blobs(ctx).Stat(ctx, desc.Digest); !errors.Is(err, distribution.ErrBlobUnknown) {
		t.Fatalf("the registry's Stat (HEAD) answers a blob whose link is gone: %v, %v", got, err)
	}
}
