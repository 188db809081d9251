package descriptor_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
	"github.com/descriptor-service/descriptor-service/client-go/descriptorv1"
)

const (
	a384 = digest.Digest("sha384:abc" + "111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111")
	a256 = digest.Digest("sha256:abc" + "1111111111111111111111111111111111111111111111111111111111111")
	oct  = "application/octet-stream"
	repo = "foo/bar"
)

func dial(t *testing.T, target string, opts ...descriptor.Option) *descriptor.Client {
	t.Helper()
	c, err := descriptor.New(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// server starts a descriptor-server over an empty registry (deletion enabled,
// in-memory cache), with edit applied to its config.
func server(t *testing.T, edit func(descriptortest.Config)) (*descriptortest.Server, descriptortest.Layout) {
	t.Helper()
	layout := descriptortest.Layout{Root: t.TempDir()}
	cfg := descriptortest.BaseConfig(layout.Root, true)
	if edit != nil {
		edit(cfg)
	}
	return descriptortest.StartServer(t, cfg), layout
}

func desc(mt string, d digest.Digest, size int64) distribution.Descriptor {
	return distribution.Descriptor{MediaType: mt, Digest: d, Size: size}
}

func wantReason(t *testing.T, err error, reason string) {
	t.Helper()
	var e *descriptor.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v (%T), want a *descriptor.Error with reason %s", err, err, reason)
	}
	if e.Reason != reason {
		t.Fatalf("got reason %s (%v), want %s", e.Reason, err, reason)
	}
}

// TestConformance runs the project's conformance cases 1-5 (distribution's
// cachecheck in the service's words) through the client.
func TestConformance(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		run  func(t *testing.T, c *descriptor.Client, r *descriptor.Repository)
	}{
		{"1 empty cache is BLOB_UNKNOWN", func(t *testing.T, c *descriptor.Client, r *descriptor.Repository) {
			if _, err := c.Stat(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("global Stat: %v", err)
			}
			if _, err := r.Stat(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("repository Stat: %v", err)
			}
		}},
		{"2 invalid input stores nothing", func(t *testing.T, c *descriptor.Client, r *descriptor.Repository) {
			if err := r.SetDescriptor(ctx, "", desc(oct, a384, 10)); !errors.Is(err, digest.ErrDigestInvalidFormat) {
				t.Fatalf(`SetDescriptor(""): %v`, err)
			}
			err := r.SetDescriptor(ctx, a384, desc(oct, "", 10))
			wantReason(t, err, descriptor.ReasonDescriptorInvalid)
			if _, err := r.Stat(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("repository Stat after refused Set: %v", err)
			}
			if _, err := c.Stat(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("global Stat after refused Set: %v", err)
			}
		}},
		{"3 alias stored under both digests", func(t *testing.T, c *descriptor.Client, r *descriptor.Repository) {
			want := desc(oct, a256, 10)
			if err := r.SetDescriptor(ctx, a384, want); err != nil {
				t.Fatal(err)
			}
			for name, stat := range map[string]func() (distribution.Descriptor, error){
				"repository Stat(A384)": func() (distribution.Descriptor, error) { return r.Stat(ctx, a384) },
				"global Stat(A384)":     func() (distribution.Descriptor, error) { return c.Stat(ctx, a384) },
				"global Stat(A256)":     func() (distribution.Descriptor, error) { return c.Stat(ctx, a256) },
			} {
				got, err := stat()
				if err != nil || !reflect.DeepEqual(got, want) {
					t.Fatalf("%s = %#v, %v; want %#v", name, got, err, want)
				}
			}
		}},
		{"4 repository media type overrides global", func(t *testing.T, c *descriptor.Client, r *descriptor.Repository) {
			if err := r.SetDescriptor(ctx, a384, desc(oct, a256, 10)); err != nil {
				t.Fatal(err)
			}
			if err := r.SetDescriptor(ctx, a384, desc("application/json", a256, 10)); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Stat(ctx, a384); err != nil || got.MediaType != "application/json" {
				t.Fatalf("repository Stat = %#v, %v", got, err)
			}
			if got, err := c.Stat(ctx, a384); err != nil || got.MediaType != oct {
				t.Fatalf("global Stat = %#v, %v", got, err)
			}
		}},
		{"5 repository clear", func(t *testing.T, c *descriptor.Client, r *descriptor.Repository) {
			want := desc(oct, a256, 10)
			if err := r.SetDescriptor(ctx, a384, want); err != nil {
				t.Fatal(err)
			}
			if got, err := r.Stat(ctx, a384); err != nil || !reflect.DeepEqual(got, want) {
				t.Fatalf("Stat = %#v, %v", got, err)
			}
			if err := r.Clear(ctx, a384); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Stat(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("Stat after Clear: %v", err)
			}
			if err := r.Clear(ctx, a384); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatalf("second Clear: %v", err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv, _ := server(t, nil)
			c := dial(t, srv.Target)
			tc.run(t, c, c.Repository(repo))
		})
	}
}

// TestTypedErrors provokes, on a real server, every reason a client can provoke
// without a fault in a real part, and checks errors.Is and errors.As.
func TestTypedErrors(t *testing.T) {
	ctx := context.Background()
	srv, _ := server(t, func(cfg descriptortest.Config) {
		descriptortest.Section(cfg, "storage")["delete"] = map[string]any{"enabled": false}
		descriptortest.Section(cfg, "grpc")["maxbatch"] = 3
	})
	c := dial(t, srv.Target)
	r := c.Repository(repo)
	cases := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
		is     error
	}{
		{"unknown blob", func() error { _, err := c.Stat(ctx, a384); return err },
			codes.NotFound, "BLOB_UNKNOWN", distribution.ErrBlobUnknown},
		{"unknown blob in a repository", func() error { _, err := r.Stat(ctx, a384); return err },
			codes.NotFound, "BLOB_UNKNOWN", distribution.ErrBlobUnknown},
		{"empty digest", func() error { _, err := c.Stat(ctx, ""); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"no colon", func() error { _, err := c.Stat(ctx, "sha256"); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"empty hex", func() error { _, err := c.Stat(ctx, "sha256:"); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"upper-case hex", func() error { _, err := c.Stat(ctx, digest.Digest("sha256:"+strings.Repeat("A", 64))); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"upper-case algorithm", func() error { _, err := c.Stat(ctx, digest.Digest("SHA256:"+strings.Repeat("a", 64))); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"bad characters", func() error { _, err := c.Stat(ctx, "md5:abc!"); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"not UTF-8 (refused before sending)", func() error { _, err := c.Stat(ctx, "sha256:\xff"); return err },
			codes.InvalidArgument, "DIGEST_INVALID_FORMAT", digest.ErrDigestInvalidFormat},
		{"short hex", func() error { _, err := c.Stat(ctx, "sha384:abc"); return err },
			codes.InvalidArgument, "DIGEST_INVALID_LENGTH", digest.ErrDigestInvalidLength},
		{"unsupported algorithm", func() error { _, err := c.Stat(ctx, "md5:abc"); return err },
			codes.InvalidArgument, "DIGEST_UNSUPPORTED", digest.ErrDigestUnsupported},
		{"key digest checked before repository", func() error { return c.Repository("Foo").Clear(ctx, "sha384:abc") },
			codes.InvalidArgument, "DIGEST_INVALID_LENGTH", digest.ErrDigestInvalidLength},
		{"negative size", func() error { return c.SetDescriptor(ctx, a256, desc(oct, a256, -1)) },
			codes.InvalidArgument, "DESCRIPTOR_INVALID", nil},
		{"bad media type", func() error { return c.SetDescriptor(ctx, a256, desc("not a type", a256, 1)) },
			codes.InvalidArgument, "DESCRIPTOR_INVALID", nil},
		{"empty descriptor digest", func() error { return r.SetDescriptor(ctx, a384, desc(oct, "", 10)) },
			codes.InvalidArgument, "DESCRIPTOR_INVALID", nil},
		{"mismatched digests of one algorithm", func() error {
			return c.SetDescriptor(ctx, a256, desc(oct, digest.Digest("sha256:"+strings.Repeat("d", 64)), 1))
		}, codes.InvalidArgument, "DESCRIPTOR_INVALID", nil},
		{"upper-case repository", func() error { _, err := c.Repository("Foo/Bar").Stat(ctx, a384); return err },
			codes.InvalidArgument, "REPOSITORY_NAME_INVALID", nil},
		{"repository with a tag", func() error { _, err := c.Repository("foo/bar:tag").Stat(ctx, a384); return err },
			codes.InvalidArgument, "REPOSITORY_NAME_INVALID", nil},
		{"repository with a domain", func() error { _, err := c.Repository("localhost:5000/x").Stat(ctx, a384); return err },
			codes.InvalidArgument, "REPOSITORY_NAME_INVALID", nil},
		{"batch repository", func() error { _, err := c.Repository("/etc").BatchStat(ctx, []digest.Digest{a256}); return err },
			codes.InvalidArgument, "REPOSITORY_NAME_INVALID", nil},
		{"batch too large", func() error { _, err := c.BatchStat(ctx, []digest.Digest{a256, a256, a256, a256}); return err },
			codes.InvalidArgument, "BATCH_TOO_LARGE", nil},
		{"clear with deletion disabled", func() error { return c.Clear(ctx, a384) },
			codes.Unimplemented, "UNSUPPORTED", distribution.ErrUnsupported},
		{"request that does not decode", func() error {
			// Field 1, a length past the end of the message.
			var out []byte
			return c.Conn().Invoke(ctx, descriptorv1.BlobDescriptorService_Stat_FullMethodName,
				[]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, &out, grpc.ForceCodec(rawCodec{}))
		}, codes.InvalidArgument, "REQUEST_INVALID", nil},
		{"deadline passed", func() error {
			ctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
			defer cancel()
			time.Sleep(time.Millisecond)
			_, err := c.Stat(ctx, a384)
			return err
		}, codes.DeadlineExceeded, "DEADLINE_EXCEEDED", context.DeadlineExceeded},
		{"cancelled", func() error {
			ctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err := c.Stat(ctx, a384)
			return err
		}, codes.Canceled, "CANCELLED", context.Canceled},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if tc.name == "request that does not decode" {
				err = descriptor.FromError(err)
			}
			var e *descriptor.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v (%T), want a *descriptor.Error", err, err)
			}
			if e.Code != tc.code || e.Reason != tc.reason || e.Message == "" {
				t.Fatalf("got code %v reason %s message %q, want %v %s", e.Code, e.Reason, e.Message, tc.code, tc.reason)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("errors.Is(%v, %v) is false", err, tc.is)
			}
			if !errors.Is(err, &descriptor.Error{Reason: tc.reason}) {
				t.Fatalf("errors.Is(%v, sentinel of %s) is false", err, tc.reason)
			}
		})
	}
}

// rawCodec sends and receives bytes as they are.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }

func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

func TestBatchStat(t *testing.T) {
	ctx := context.Background()
	srv, layout := server(t, nil)
	c := dial(t, srv.Target)
	blob := []byte("a blob in a repository")
	d := digest.Digest(layout.Push(t, repo, blob))
	results, err := c.Repository(repo).BatchStat(ctx, []digest.Digest{d, a384, "sha384:abc", "md5:abc", "\xff"})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 5 {
		t.Fatalf("%d results", len(results))
	}
	if results[0].Err != nil || !reflect.DeepEqual(results[0].Descriptor, desc(oct, d, int64(len(blob)))) || results[0].Digest != d {
		t.Fatalf("item 0: %#v", results[0])
	}
	for i, want := range []error{distribution.ErrBlobUnknown, digest.ErrDigestInvalidLength, digest.ErrDigestUnsupported, digest.ErrDigestInvalidFormat} {
		if !errors.Is(results[i+1].Err, want) {
			t.Fatalf("item %d: %v, want %v", i+1, results[i+1].Err, want)
		}
	}
	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Each digest of the batch counts as a lookup; the two hits of this test are none.
	if m.Requests < 2 || m.Misses < 2 {
		t.Fatalf("metrics %+v", m)
	}
}

// TestRevalidate: the backend decides now; an entry it lost leaves the cache
// (distribution.ErrBlobUnknown), one it holds is answered and cached.
func TestRevalidate(t *testing.T) {
	ctx := context.Background()
	srv, layout := server(t, func(cfg descriptortest.Config) {
		descriptortest.Section(cfg, "storage")["delete"] = map[string]any{"enabled": false} // not needed
	})
	c := dial(t, srv.Target)
	r := c.Repository(repo)
	blob := []byte("revalidated from Go")
	d := digest.Digest(layout.Push(t, repo, blob))
	want := desc(oct, d, int64(len(blob)))
	if got, err := r.Revalidate(ctx, d); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Revalidate: %v %v, want %v", got, err, want)
	}
	if err := os.Remove(layout.LinkPath(repo, string(d))); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Stat(ctx, d); err != nil {
		t.Fatalf("the cache should still answer (stale): %v", err)
	}
	if _, err := r.Revalidate(ctx, d); !errors.Is(err, distribution.ErrBlobUnknown) {
		t.Fatalf("Revalidate of a lost blob: %v, want ErrBlobUnknown", err)
	}
	if _, err := r.Stat(ctx, d); !errors.Is(err, distribution.ErrBlobUnknown) {
		t.Fatalf("Stat after Revalidate: %v, want ErrBlobUnknown", err)
	}
	if _, err := c.Revalidate(ctx, "sha384:abc"); !errors.Is(err, digest.ErrDigestInvalidLength) {
		t.Fatalf("bad digest: %v", err)
	}
}

func TestMetricsCountStats(t *testing.T) {
	ctx := context.Background()
	srv, layout := server(t, nil)
	c := dial(t, srv.Target)
	d := digest.Digest(layout.Push(t, repo, []byte("metrics")))
	before, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.Repository(repo).Stat(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	after, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Requests-before.Requests != 3 || after.Misses-before.Misses != 1 || after.Hits-before.Hits != 2 {
		t.Fatalf("before %+v after %+v: want 3 requests, 1 miss, 2 hits", before, after)
	}
}

func sha(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func TestBearerToken(t *testing.T) {
	ctx := context.Background()
	srv, _ := server(t, func(cfg descriptortest.Config) {
		cfg["auth"] = map[string]any{"tokens": []map[string]any{
			{"name": "reader", "scope": "read", "sha256": sha("read-token")},
			{"name": "writer", "scope": "write", "sha256": sha("write-token")},
		}}
	})
	t.Setenv("DESCRIPTOR_TOKEN", "")
	cases := []struct {
		name string
		env  string
		opts []descriptor.Option
		stat string // reason of a Stat, "" for success (BLOB_UNKNOWN counts as success)
		set  string // reason of a SetDescriptor
	}{
		{"no token", "", nil, "UNAUTHENTICATED", "UNAUTHENTICATED"},
		{"bad token", "", []descriptor.Option{descriptor.WithToken("not-a-token")}, "UNAUTHENTICATED", "UNAUTHENTICATED"},
		{"read token", "", []descriptor.Option{descriptor.WithToken("read-token")}, "", "PERMISSION_DENIED"},
		{"write token", "", []descriptor.Option{descriptor.WithToken("write-token")}, "", ""},
		{"token from DESCRIPTOR_TOKEN", "read-token", nil, "", "PERMISSION_DENIED"},
		{"WithToken overrides DESCRIPTOR_TOKEN", "read-token", []descriptor.Option{descriptor.WithToken("")}, "UNAUTHENTICATED", "UNAUTHENTICATED"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("DESCRIPTOR_TOKEN", tc.env)
			c := dial(t, srv.Target, tc.opts...)
			_, err := c.Stat(ctx, a256)
			if tc.stat == "" {
				if err != nil && !errors.Is(err, distribution.ErrBlobUnknown) {
					t.Fatalf("Stat: %v", err)
				}
			} else {
				wantReason(t, err, tc.stat)
			}
			err = c.SetDescriptor(ctx, a256, desc(oct, a256, 1))
			if tc.set == "" {
				if err != nil {
					t.Fatalf("SetDescriptor: %v", err)
				}
			} else {
				wantReason(t, err, tc.set)
			}
		})
	}
}

func TestRoundRobin(t *testing.T) {
	ctx := context.Background()
	one, _ := server(t, nil)
	two, _ := server(t, nil)
	c := dial(t, one.Target+","+two.Target)
	direct := []*descriptor.Client{dial(t, one.Target), dial(t, two.Target)}
	requests := func(i int) uint64 {
		m, err := direct[i].Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return m.Requests
	}
	for i := 0; i < 100 && (requests(0) == 0 || requests(1) == 0); i++ {
		if _, err := c.Stat(ctx, a256); !errors.Is(err, distribution.ErrBlobUnknown) {
			t.Fatal(err)
		}
	}
	if requests(0) == 0 || requests(1) == 0 {
		t.Fatalf("calls did not reach both servers: %d and %d", requests(0), requests(1))
	}
	// A dns target and an ipv4: list are accepted too.
	port := two.Target[strings.LastIndex(two.Target, ":")+1:]
	for _, target := range []string{"dns:///localhost:" + port, "ipv4:" + one.Target + "," + two.Target} {
		if _, err := dial(t, target).Stat(ctx, a256); !errors.Is(err, distribution.ErrBlobUnknown) {
			t.Fatalf("%s: %v", target, err)
		}
	}
}

func TestTargetDefault(t *testing.T) {
	t.Setenv("DESCRIPTOR_TARGET", "")
	if got := dial(t, "").Target(); got != descriptor.DefaultTarget {
		t.Fatalf("default target %q", got)
	}
	t.Setenv("DESCRIPTOR_TARGET", "dns:///cache.example:5051")
	if got := dial(t, "").Target(); got != "dns:///cache.example:5051" {
		t.Fatalf("target from DESCRIPTOR_TARGET %q", got)
	}
	for _, bad := range []string{"a:1,nonsense", ",", "ipv4:"} {
		if _, err := descriptor.New(bad); err == nil {
			t.Fatalf("New(%q) accepted", bad)
		}
	}
}

func TestDefaultTimeout(t *testing.T) {
	ctx := context.Background()
	srv, layout := server(t, nil)
	d := layout.Push(t, "held/repo", []byte("held"))
	if err := syscall.Unlink(layout.LinkPath("held/repo", d)); err != nil {
		t.Fatal(err)
	}
	waitReader, release := layout.Hold(t, "held/repo", d)
	c := dial(t, srv.Target, descriptor.WithTimeout(300*time.Millisecond))
	done := make(chan error, 1)
	go func() { _, err := c.Repository("held/repo").Stat(ctx, digest.Digest(d)); done <- err }()
	if !waitReader() {
		t.Fatal("the server never read the held link")
	}
	err := <-done
	release()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("held Stat: %v, want DEADLINE_EXCEEDED", err)
	}
	wantReason(t, err, descriptor.ReasonDeadlineExceeded)
}

// TestRetryOnDraining holds a call in flight on one of two servers, sends that
// server SIGTERM (it drains, answering new calls SERVER_DRAINING), and checks
// the retry policy: every verb succeeds through the list target, while the
// same balancing without retries hands out the refusals.
func TestRetryOnDraining(t *testing.T) {
	ctx := context.Background()
	edit := func(cfg descriptortest.Config) { descriptortest.Section(cfg, "grpc")["drain"] = "20s" }
	one, _ := server(t, edit)
	two, layout := server(t, edit)
	d := layout.Push(t, "held/repo", []byte("held"))
	if err := syscall.Unlink(layout.LinkPath("held/repo", d)); err != nil {
		t.Fatal(err)
	}
	waitReader, release := layout.Hold(t, "held/repo", d)
	list := one.Target + "," + two.Target
	held := make(chan error, 1)
	go func() {
		_, err := dial(t, two.Target, descriptor.WithTimeout(time.Minute)).Repository("held/repo").Stat(ctx, digest.Digest(d))
		held <- err
	}()
	if !waitReader() {
		t.Fatal("the server never read the held link")
	}
	// Both replicas connected before the drain starts.
	c := dial(t, list)
	bare := dial(t, list, descriptor.WithoutRetry())
	for _, cl := range []*descriptor.Client{c, bare} {
		for i := 0; i < 4; i++ {
			if _, err := cl.Metrics(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := two.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	two.WaitOutput(t, "draining", 15*time.Second)
	// Without the health watch (WithoutRetry), so that the call reaches the server.
	direct := dial(t, two.Target, descriptor.WithoutRetry())
	if _, err := direct.Metrics(ctx); !errors.Is(err, descriptor.ErrServerDraining) {
		t.Fatalf("direct call to the draining server: %v", err)
	}
	if st, err := direct.Health(ctx, descriptor.Service); err != nil || st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health of the draining server: %v, %v", st, err)
	}
	verbs := map[string]func(*descriptor.Client) error{
		"Stat": func(c *descriptor.Client) error {
			_, err := c.Stat(ctx, a256)
			if errors.Is(err, distribution.ErrBlobUnknown) {
				return nil
			}
			return err
		},
		"SetDescriptor": func(c *descriptor.Client) error { return c.SetDescriptor(ctx, a256, desc(oct, a256, 1)) },
		"Clear": func(c *descriptor.Client) error {
			if err := c.SetDescriptor(ctx, a384, desc(oct, a384, 1)); err != nil {
				return err
			}
			err := c.Clear(ctx, a384)
			if errors.Is(err, distribution.ErrBlobUnknown) {
				return nil // the Set went to the other replica, but the Clear was answered
			}
			return err
		},
		"BatchStat": func(c *descriptor.Client) error { _, err := c.BatchStat(ctx, []digest.Digest{a256}); return err },
		"Metrics":   func(c *descriptor.Client) error { _, err := c.Metrics(ctx); return err },
	}
	for name, verb := range verbs {
		t.Run(name, func(t *testing.T) {
			for i := 0; i < 10; i++ {
				if err := verb(c); err != nil {
					t.Fatalf("call %d with retries: %v", i, err)
				}
			}
			refused := false
			for i := 0; i < 50 && !refused; i++ {
				err := verb(bare)
				if err != nil && !errors.Is(err, descriptor.ErrServerDraining) {
					t.Fatalf("without retries: %v", err)
				}
				refused = err != nil
			}
			if !refused {
				t.Fatal("without retries no call reached the draining server")
			}
		})
	}
	release()
	if err := <-held; err != nil {
		t.Fatalf("the call in flight did not finish: %v", err)
	}
	select {
	case <-two.Exited():
	case <-time.After(30 * time.Second):
		t.Fatal("the drained server did not exit")
	}
}

func TestResourceExhausted(t *testing.T) {
	ctx := context.Background()
	srv, layout := server(t, func(cfg descriptortest.Config) { descriptortest.Section(cfg, "grpc")["maxconcurrentcalls"] = 1 })
	d := layout.Push(t, "held/repo", []byte("held"))
	if err := syscall.Unlink(layout.LinkPath("held/repo", d)); err != nil {
		t.Fatal(err)
	}
	waitReader, release := layout.Hold(t, "held/repo", d)
	c := dial(t, srv.Target)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = c.Repository("held/repo").Stat(ctx, digest.Digest(d))
	}()
	if !waitReader() {
		t.Fatal("the server never read the held link")
	}
	_, err := c.Stat(ctx, a256)
	release()
	wg.Wait()
	wantReason(t, err, descriptor.ReasonResourceExhausted)
	if !errors.Is(err, descriptor.ErrResourceExhausted) {
		t.Fatal(err)
	}
}

// TestBackendUnavailable points the server's registry backend at a listener
// that hangs up on every connection: repository Stat is BACKEND_UNAVAILABLE, and
// the server's pushback keeps the client's retry policy from asking the failing
// backend again (as many connections as without retries).
func TestBackendUnavailable(t *testing.T) {
	ctx := context.Background()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int64
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = conn.Close()
		}
	}()
	srv, _ := server(t, func(cfg descriptortest.Config) {
		st := descriptortest.Section(cfg, "storage")
		delete(st, "filesystem")
		st["registry"] = map[string]any{"url": "http://" + l.Addr().String(), "timeout": "2s"}
	})
	var counts []int64
	for _, opts := range [][]descriptor.Option{{descriptor.WithoutRetry()}, nil} {
		before := accepted.Load()
		_, err := dial(t, srv.Target, opts...).Repository(repo).Stat(ctx, a256)
		wantReason(t, err, descriptor.ReasonBackendUnavailable)
		if !errors.Is(err, descriptor.ErrBackendUnavailable) {
			t.Fatal(err)
		}
		counts = append(counts, accepted.Load()-before)
	}
	if counts[0] == 0 || counts[0] != counts[1] {
		t.Fatalf("backend connections per Stat without and with retries: %v, want equal and > 0", counts)
	}
}

func TestHealth(t *testing.T) {
	ctx := context.Background()
	srv, _ := server(t, func(cfg descriptortest.Config) {
		cfg["auth"] = map[string]any{"tokens": []map[string]any{{"name": "reader", "scope": "read", "sha256": sha("read-token")}}}
	})
	c := dial(t, srv.Target, descriptor.WithToken(""))
	for service, want := range map[string]healthpb.HealthCheckResponse_ServingStatus{
		"":                 healthpb.HealthCheckResponse_SERVING,
		descriptor.Service: healthpb.HealthCheckResponse_SERVING,
		"no.such.Service":  healthpb.HealthCheckResponse_SERVICE_UNKNOWN,
	} {
		if got, err := c.Health(ctx, service); err != nil || got != want {
			t.Errorf("Health(%q) = %v, %v; want %v", service, got, err, want)
		}
	}
}

// TestInterceptor checks the interceptor option: it sees every call and can add metadata.
func TestInterceptor(t *testing.T) {
	ctx := context.Background()
	srv, _ := server(t, nil)
	var mu sync.Mutex
	var seen []string
	c := dial(t, srv.Target, descriptor.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		mu.Lock()
		seen = append(seen, method)
		mu.Unlock()
		return invoker(metadata.AppendToOutgoingContext(ctx, "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), method, req, reply, cc, opts...)
	}))
	if _, err := c.Metrics(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, a256); !errors.Is(err, distribution.ErrBlobUnknown) {
		t.Fatal(err)
	}
	if len(seen) != 2 || seen[0] != descriptorv1.BlobDescriptorService_GetMetrics_FullMethodName {
		t.Fatalf("interceptor saw %v", seen)
	}
}
