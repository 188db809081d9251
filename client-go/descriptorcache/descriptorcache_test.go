package descriptorcache_test

import (
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage/cache"
	"github.com/distribution/distribution/v3/registry/storage/cache/cachecheck"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

const (
	a384 = digest.Digest("sha384:abc" + "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111")
	a256 = digest.Digest("sha256:abc" + "1111111111111111111111111111111111111111111111111111111111111")
	oct  = "application/octet-stream"
	repo = "foo/bar"
)

// setups are the server configurations every provider test runs against.
var setups = []struct {
	name   string
	config func(t *testing.T) descriptortest.Config
}{
	{"inmemory", func(t *testing.T) descriptortest.Config {
		return descriptortest.BaseConfig(t.TempDir(), true)
	}},
	{"redis", func(t *testing.T) descriptortest.Config {
		addr := descriptortest.StartRedis(t)
		cfg := descriptortest.BaseConfig(t.TempDir(), true)
		descriptortest.Section(cfg, "storage")["cache"] = map[string]any{"blobdescriptor": "redis"}
		cfg["redis"] = map[string]any{"addrs": []string{addr}}
		return cfg
	}},
}

func newProvider(t *testing.T, cfg descriptortest.Config) cache.BlobDescriptorCacheProvider {
	t.Helper()
	srv := descriptortest.StartServer(t, cfg)
	p, err := descriptorcache.NewProvider(srv.Target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.(io.Closer).Close() })
	return p
}

// TestCacheCheck runs distribution v3.1.1's own cache suite over the wire.
func TestCacheCheck(t *testing.T) {
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			cachecheck.CheckBlobDescriptorCache(t, newProvider(t, s.config(t)))
		})
	}
}

// TestConformance runs the project's conformance cases 1-5 through the
// provider, against each setup, and checks that the errors distribution's own
// caches return are distribution's values themselves (compared with ==).
func TestConformance(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		run  func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService)
	}{
		{"1 empty cache is BLOB_UNKNOWN", func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService) {
			if _, err := p.Stat(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("global Stat: %v", err)
			}
			if _, err := r.Stat(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("repository Stat: %v", err)
			}
		}},
		{"2 invalid input stores nothing", func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService) {
			if err := r.SetDescriptor(ctx, "", desc(oct, a384, 10)); err != digest.ErrDigestInvalidFormat {
				t.Fatalf(`SetDescriptor(""): %v`, err)
			}
			err := r.SetDescriptor(ctx, a384, desc(oct, "", 10))
			if !errors.Is(err, descriptor.ErrDescriptorInvalid) {
				t.Fatalf("SetDescriptor(empty descriptor digest): %v", err)
			}
			if _, err := r.Stat(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("repository Stat: %v", err)
			}
			if _, err := p.Stat(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("global Stat: %v", err)
			}
		}},
		{"3 alias stored under both digests", func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService) {
			want := desc(oct, a256, 10)
			if err := r.SetDescriptor(ctx, a384, want); err != nil {
				t.Fatal(err)
			}
			for _, s := range []struct {
				name string
				svc  distribution.BlobDescriptorService
				dgst digest.Digest
			}{{"repository A384", r, a384}, {"global A384", p, a384}, {"global A256", p, a256}} {
				got, err := s.svc.Stat(ctx, s.dgst)
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("Stat %s = %#v, %v; want %#v", s.name, got, err, want)
				}
			}
		}},
		{"4 repository media type overrides global", func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService) {
			if err := r.SetDescriptor(ctx, a384, desc(oct, a256, 10)); err != nil {
				t.Fatal(err)
			}
			if err := r.SetDescriptor(ctx, a384, desc("application/json", a256, 10)); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Stat(ctx, a384); err != nil || got.MediaType != "application/json" {
				t.Fatalf("repository Stat = %#v, %v", got, err)
			}
			if got, err := p.Stat(ctx, a384); err != nil || got.MediaType != oct {
				t.Fatalf("global Stat = %#v, %v", got, err)
			}
		}},
		{"5 repository clear", func(t *testing.T, p cache.BlobDescriptorCacheProvider, r distribution.BlobDescriptorService) {
			if err := r.SetDescriptor(ctx, a384, desc(oct, a256, 10)); err != nil {
				t.Fatal(err)
			}
			if err := r.Clear(ctx, a384); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Stat(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("Stat after Clear: %v", err)
			}
			if err := r.Clear(ctx, a384); err != distribution.ErrBlobUnknown {
				t.Fatalf("second Clear: %v", err)
			}
		}},
	}
	for _, s := range setups {
		t.Run(s.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					p := newProvider(t, s.config(t))
					r, err := p.RepositoryScoped(repo)
					if err != nil {
						t.Fatal(err)
					}
					tc.run(t, p, r)
				})
			}
		})
	}
}

func desc(mt string, d digest.Digest, size int64) distribution.Descriptor {
	return distribution.Descriptor{MediaType: mt, Digest: d, Size: size}
}

// TestSentinels checks, over the wire, every error for which distribution's
// caches return a value of their own: the provider returns that value itself.
func TestSentinels(t *testing.T) {
	ctx := context.Background()
	cfg := descriptortest.BaseConfig(t.TempDir(), false) // deletion disabled
	p := newProvider(t, cfg)
	r, err := p.RepositoryScoped(repo)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"unknown", func() error { _, err := p.Stat(ctx, a384); return err }(), distribution.ErrBlobUnknown},
		{"unknown in repository", func() error { _, err := r.Stat(ctx, a384); return err }(), distribution.ErrBlobUnknown},
		{"format", func() error { _, err := r.Stat(ctx, ""); return err }(), digest.ErrDigestInvalidFormat},
		{"length", func() error { _, err := p.Stat(ctx, "sha384:abc"); return err }(), digest.ErrDigestInvalidLength},
		{"unsupported algorithm", func() error { _, err := p.Stat(ctx, "md5:abc"); return err }(), digest.ErrDigestUnsupported},
		{"clear with deletion disabled", p.Clear(ctx, a384), distribution.ErrUnsupported},
		{"repository clear with deletion disabled", r.Clear(ctx, a384), distribution.ErrUnsupported},
	}
	for _, tc := range cases {
		if tc.err != tc.want {
			t.Errorf("%s: got %v (%T), want %v itself", tc.name, tc.err, tc.err, tc.want)
		}
	}
	// Other failures keep their typed error.
	err = p.SetDescriptor(ctx, a256, desc(oct, a256, -1))
	var e *descriptor.Error
	if !errors.As(err, &e) || e.Reason != descriptor.ReasonDescriptorInvalid {
		t.Fatalf("negative size: %v", err)
	}
}

// TestRepositoryScoped checks names as distribution's caches do, then as the
// service does, without a call.
func TestRepositoryScoped(t *testing.T) {
	p, err := descriptorcache.NewProvider("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer p.(io.Closer).Close()
	for _, name := range []string{"foo/bar", "library/ubuntu", "team/app.v2/x__y", "a-b/c--d"} {
		if _, err := p.RepositoryScoped(name); err != nil {
			t.Errorf("RepositoryScoped(%q): %v", name, err)
		}
	}
	long := strings.Repeat("a/", 127) + "ab" // 256 characters
	// Refused by distribution's own check, with its errors.
	for _, name := range []string{"", "Foo/Bar", "foo//bar", "../x", "/etc", "foo/bar@sha256:" + strings.Repeat("a", 64)} {
		if _, err := p.RepositoryScoped(name); err == nil {
			t.Errorf("RepositoryScoped(%q) accepted", name)
		}
	}
	if _, err := p.RepositoryScoped(""); !errors.Is(err, reference.ErrNameEmpty) && !errors.Is(err, reference.ErrReferenceInvalidFormat) {
		t.Errorf(`RepositoryScoped(""): %v`, err)
	}
	// Names distribution's check lets through (a domain, a tag, too long for the
	// service) but the service would refuse: distribution.ErrRepositoryNameInvalid.
	for _, name := range []string{"foo/bar:tag", "localhost:5000/x", long} {
		_, err := p.RepositoryScoped(name)
		var invalid distribution.ErrRepositoryNameInvalid
		if !errors.As(err, &invalid) || invalid.Name != name {
			t.Errorf("RepositoryScoped(%q): %v (%T), want distribution.ErrRepositoryNameInvalid", name, err, err)
		}
	}
}

func TestNewProviderRefusesBadOptions(t *testing.T) {
	if _, err := descriptorcache.NewProvider("a:1,,nonsense"); err == nil {
		t.Error("bad target accepted")
	}
	if _, err := descriptorcache.NewProvider("", descriptorcache.WithTimeout(-1)); err == nil {
		t.Error("negative timeout accepted")
	}
	if _, err := descriptorcache.NewProvider("", descriptorcache.WithTLSFiles("/nonexistent/ca.pem", "", "")); err == nil {
		t.Error("missing CA file accepted")
	}
}

// TestRevalidate: the provider and its repository-scoped services revalidate, with
// distribution's ErrBlobUnknown itself for an entry the backend does not hold.
func TestRevalidate(t *testing.T) {
	type revalidator interface {
		Revalidate(context.Context, digest.Digest) (distribution.Descriptor, error)
	}
	ctx := context.Background()
	p := newProvider(t, setups[0].config(t))
	r, err := p.RepositoryScoped(repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.SetDescriptor(ctx, a256, desc(oct, a256, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.(revalidator).Revalidate(ctx, a256); err != distribution.ErrBlobUnknown {
		t.Fatalf("repository Revalidate: %v, want distribution.ErrBlobUnknown", err)
	}
	if _, err := r.Stat(ctx, a256); err != distribution.ErrBlobUnknown {
		t.Fatalf("Stat after Revalidate: %v", err)
	}
	if _, err := p.(revalidator).Revalidate(ctx, a384); err != distribution.ErrBlobUnknown {
		t.Fatalf("global Revalidate: %v", err)
	}
	if _, err := p.(revalidator).Revalidate(ctx, "sha384:abc"); err != digest.ErrDigestInvalidLength {
		t.Fatalf("bad digest: %v", err)
	}
}
