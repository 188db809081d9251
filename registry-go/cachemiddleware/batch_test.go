package cachemiddleware

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptorcache"
	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// startServer runs a real descriptor-server ($DESCRIPTOR_SERVER, else on PATH; ./dev
// sets it to the venv's) with the in-memory cache over an empty root, and returns
// its target. A missing binary skips the test, except in CI where it fails.
func startServer(t *testing.T, grpcOptions ...map[string]any) string {
	t.Helper()
	return startServerOver(t, "", grpcOptions...)
}

// startServerOver is startServer with the filesystem backend over root (a registry's
// storage root, shared with it); "" is an empty root of its own.
func startServerOver(t *testing.T, root string, grpcOptions ...map[string]any) string {
	t.Helper()
	bin := os.Getenv("DESCRIPTOR_SERVER")
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("descriptor-server"); err != nil {
			if os.Getenv("CI") != "" || os.Getenv("DESCRIPTOR_TEST_STRICT") != "" {
				t.Fatal("descriptor-server is missing in CI, where ./dev provides it")
			}
			t.Skip("descriptor-server not found: set $DESCRIPTOR_SERVER (./dev test does)")
		}
	}
	dir := t.TempDir()
	if root == "" {
		root = filepath.Join(dir, "root")
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	grpcSection := map[string]any{"addr": "127.0.0.1:0"}
	for _, extra := range grpcOptions {
		for k, v := range extra {
			grpcSection[k] = v
		}
	}
	cfg, _ := json.Marshal(map[string]any{
		"storage": map[string]any{
			"filesystem": map[string]any{"rootdirectory": root},
			"cache":      map[string]any{"blobdescriptor": "inmemory"},
			"delete":     map[string]any{"enabled": true},
		},
		"grpc": grpcSection,
	})
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
		}
	})
	found := make(chan string, 1)
	go func() {
		ready := regexp.MustCompile(`listening on (\S+):(\d+)`)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := ready.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1] + ":" + m[2]:
				default:
				}
			}
		}
	}()
	select {
	case target := <-found:
		return target
	case <-time.After(60 * time.Second):
		t.Fatal("descriptor-server did not start")
		return ""
	}
}

func TestBatchedStatsAnswerEachDigest(t *testing.T) {
	target := startServer(t)
	var rpcs sync.Map // method -> *atomic.Int64
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		n, _ := rpcs.LoadOrStore(method, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	provider, err := descriptorcache.NewProvider(target, descriptor.WithUnaryInterceptor(count))
	if err != nil {
		t.Fatal(err)
	}
	client := provider.(interface{ Client() *descriptor.Client }).Client()
	const repo = "team/app"
	scoped, err := provider.RepositoryScoped(repo)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	known := make([]distribution.Descriptor, 8)
	for i := range known {
		d := digest.FromString(fmt.Sprint("known ", i))
		known[i] = distribution.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: int64(100 + i)}
		if err := scoped.SetDescriptor(ctx, d, known[i]); err != nil {
			t.Fatal(err)
		}
	}
	unknown := digest.FromString("never set")
	before, err := client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rpcs.Clear()

	owner := newBatchers(client, 0)
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				b := owner.get(repo, scoped)
				if (w+i)%5 == 0 {
					_, err := b.Stat(ctx, owner, repo, unknown)
					if err != distribution.ErrBlobUnknown { // the sentinel itself, as distribution compares
						errs <- fmt.Errorf("unknown digest: %v", err)
					}
					continue
				}
				want := known[(w+i)%len(known)]
				got, err := b.Stat(ctx, owner, repo, want.Digest)
				if err != nil || got.Digest != want.Digest || got.Size != want.Size || got.MediaType != want.MediaType {
					errs <- fmt.Errorf("stat %s = %v, %v", want.Digest, got, err)
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	after, err := client.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Requests - before.Requests; got != workers*each {
		t.Errorf("service counted %d lookups for %d Stats", got, workers*each)
	}
	var batches, singles int64
	rpcs.Range(func(k, v any) bool {
		switch {
		case strings.HasSuffix(k.(string), "/BatchStat"):
			batches = v.(*atomic.Int64).Load()
		case strings.HasSuffix(k.(string), "/Stat"):
			singles = v.(*atomic.Int64).Load()
		}
		return true
	})
	if batches == 0 || batches+singles >= workers*each {
		t.Errorf("%d BatchStat and %d Stat RPCs for %d concurrent Stats: nothing was batched", batches, singles, workers*each)
	}
	owner.mu.Lock()
	left := len(owner.byRepo)
	owner.mu.Unlock()
	if left != 0 {
		t.Errorf("%d idle batchers kept", left)
	}
}

func TestBatchedStatGivesUpWithItsContext(t *testing.T) {
	target := startServer(t)
	provider, err := descriptorcache.NewProvider(target)
	if err != nil {
		t.Fatal(err)
	}
	client := provider.(interface{ Client() *descriptor.Client }).Client()
	scoped, _ := provider.RepositoryScoped("team/app")
	owner := newBatchers(client, 0)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = owner.get("team/app", scoped).Stat(ctx, owner, "team/app", digest.FromString("x"))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Stat = %v", err)
	}
}

// A service with a grpc.maxbatch below the plug-in's batch size: every Stat is still
// answered by the service (none sees BATCH_TOO_LARGE, none falls back), the batcher
// learns a limit the service accepts, and with the option maxbatch set to the
// service's limit no batch is ever refused.
func TestBatchesFollowTheServiceLimit(t *testing.T) {
	const serviceMax = 4
	target := startServer(t, map[string]any{"maxbatch": serviceMax})
	var refused, sent atomic.Int64
	watch := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if strings.HasSuffix(method, "/BatchStat") {
			sent.Add(1)
			if status.Code(err) == codes.InvalidArgument { // BATCH_TOO_LARGE: the digests are valid
				refused.Add(1)
			}
		}
		return err
	}
	provider, err := descriptorcache.NewProvider(target, descriptor.WithUnaryInterceptor(watch))
	if err != nil {
		t.Fatal(err)
	}
	client := provider.(interface{ Client() *descriptor.Client }).Client()
	const repo = "team/app"
	scoped, _ := provider.RepositoryScoped(repo)
	ctx := context.Background()
	known := make([]distribution.Descriptor, 16)
	for i := range known {
		d := digest.FromString(fmt.Sprint("limited ", i))
		known[i] = distribution.Descriptor{MediaType: "application/octet-stream", Digest: d, Size: int64(i + 1)}
		if err := scoped.SetDescriptor(ctx, d, known[i]); err != nil {
			t.Fatal(err)
		}
	}
	run := func(owner *batchers) {
		t.Helper()
		var wg sync.WaitGroup
		for w := 0; w < 64; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				want := known[w%len(known)]
				got, err := owner.get(repo, scoped).Stat(ctx, owner, repo, want.Digest)
				if err != nil || got.Digest != want.Digest || got.Size != want.Size || got.MediaType != want.MediaType {
					t.Errorf("stat %s = %v, %v", want.Digest, got, err)
				}
			}(w)
		}
		wg.Wait()
	}
	learned := newBatchers(client, 0)
	for round := 0; round < 50 && refused.Load() == 0; round++ {
		run(learned) // until concurrency made a batch over the service's limit
	}
	if refused.Load() == 0 {
		t.Fatalf("no batch over %d was ever sent: the test proves nothing", serviceMax)
	}
	if got := learned.limit.get(); got > serviceMax {
		t.Errorf("limit after a refusal: %d, want at most the service's %d", got, serviceMax)
	}

	refused.Store(0)
	configured := newBatchers(client, serviceMax)
	for i := 0; i < 5; i++ {
		run(configured)
	}
	if refused.Load() != 0 {
		t.Errorf("%d batches refused with maxbatch set to the service's limit", refused.Load())
	}
}
