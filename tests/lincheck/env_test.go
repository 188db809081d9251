package lincheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

// replica is one descriptor-server process on a fixed port, restartable after a
// SIGKILL, with a client of its own.
type replica struct {
	name string
	cfg  descriptortest.Config
	t    testing.TB

	mu     sync.Mutex
	srv    *descriptortest.Server
	client *descriptor.Client
	// incarnation counts the SIGKILLs: a call that failed while it changed was cut
	// short by the death of its process.
	incarnation atomic.Int64
	down        atomic.Bool
	up          chan struct{} // closed while the process is up (under mu)
	killDone    time.Time     // when the last SIGKILLed process had exited (under mu)
	stopped     atomic.Bool
	// failed is signalled (without blocking) when a call to this replica fails.
	failed chan struct{}
}

func startReplica(t testing.TB, name string, cfg descriptortest.Config) *replica {
	t.Helper()
	r := &replica{name: name, cfg: cfg, t: t, failed: make(chan struct{}, 1), up: make(chan struct{})}
	close(r.up)
	r.srv = descriptortest.StartServer(t, cfg)
	r.client = r.newClient()
	t.Cleanup(func() {
		r.cont()
		r.mu.Lock()
		defer r.mu.Unlock()
		_ = r.client.Close()
	})
	return r
}

func (r *replica) addr() string {
	return descriptortest.Section(r.cfg, "grpc")["addr"].(string)
}

func (r *replica) newClient() *descriptor.Client {
	c, err := descriptor.New(r.addr(), descriptor.WithTimeout(*clientTimeout), descriptor.WithToken(""),
		descriptor.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		})))
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// Client is the client of the replica's current process.
func (r *replica) Client() *descriptor.Client {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.client
}

// noteFailure wakes a fault waiting for a call to this replica to fail.
func (r *replica) noteFailure() {
	select {
	case r.failed <- struct{}{}:
	default:
	}
}

func (r *replica) drainFailures() {
	select {
	case <-r.failed:
	default:
	}
}

// kill SIGKILLs the process and starts it again on the same port; calls go to the
// new process through a new client.
func (r *replica) kill() {
	r.mu.Lock()
	r.down.Store(true)
	r.incarnation.Add(1)
	srv, up := r.srv, make(chan struct{})
	r.up = up
	r.mu.Unlock()
	srv.Kill()
	r.mu.Lock()
	r.killDone = time.Now()
	r.mu.Unlock()
	next := descriptortest.StartServer(r.t, r.cfg)
	client := r.newClient()
	r.mu.Lock()
	old := r.client
	r.srv, r.client = next, client
	r.down.Store(false)
	close(up)
	r.mu.Unlock()
	_ = old.Close()
}

// Up is closed while the replica's process is up.
func (r *replica) Up() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.up
}

// KillDone is when the last SIGKILLed process of the replica had exited.
func (r *replica) KillDone() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killDone
}

// stop sends SIGSTOP; cont sends SIGCONT (when stopped).
func (r *replica) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.srv.Signal(syscall.SIGSTOP); err == nil {
		r.stopped.Store(true)
	}
}

func (r *replica) cont() {
	if !r.stopped.Load() {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_ = r.srv.Signal(syscall.SIGCONT)
	r.stopped.Store(false)
}

// redisProc is a Redis-compatible server on a fixed port, without persistence (a
// cache, as distribution recommends), that can be killed and started again on the
// same port: a restart empties it.
type redisProc struct {
	t      testing.TB
	bin    string
	dir    string
	addr   string
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	log    strings.Builder
}

func startRedis(t testing.TB) *redisProc {
	t.Helper()
	p := &redisProc{t: t, bin: descriptortest.RedisBinary(t), dir: t.TempDir()}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		p.addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(descriptortest.FreePort(t)))
		if err = p.start(); err == nil {
			t.Cleanup(p.kill)
			return p
		}
	}
	t.Fatalf("%s did not start: %v", p.bin, err)
	return nil
}

func (p *redisProc) start() error {
	_, port, _ := net.SplitHostPort(p.addr)
	cmd := exec.Command(p.bin, "--port", port, "--bind", "127.0.0.1", "--dir", p.dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	cmd.Dir = p.dir
	p.log.Reset()
	cmd.Stdout, cmd.Stderr = &p.log, &p.log
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	p.mu.Lock()
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	// Ready once it answers PING (the event), within a bound.
	deadline := time.Now().Add(15 * time.Second)
	for {
		if reply, err := descriptortest.RedisCommand(p.addr, "PING"); err == nil && strings.TrimPrefix(reply, "+") == "PONG" {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited: %s", p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("no answer to PING")
		}
		time.Sleep(10 * time.Millisecond) // poll for readiness
	}
}

func (p *redisProc) kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-exited
}

// restart kills Redis and starts it again, empty, on the same port.
func (p *redisProc) restart() {
	p.kill()
	if err := p.start(); err != nil {
		p.t.Fatalf("redis restart on %s: %v", p.addr, err)
	}
}

// env is one configuration under test: the servers the workload calls, the
// storage root they share, the chained backend service and the Redis, if any.
type env struct {
	name    string
	root    string
	servers []*replica
	back    *replica   // the second service of a chained configuration
	redis   *redisProc // shared by the replicas of a Redis configuration
}

// envKind names a configuration: the cache ("redis": two replicas sharing one
// Redis with the near cache on; "inmemory": one server) and whether the servers'
// backend is a second service (chained) rather than the filesystem.
type envKind struct {
	cache   string
	chained bool
}

func (k envKind) String() string {
	if k.chained {
		return k.cache + "-chained"
	}
	return k.cache
}

func serverConfig(root string, k envKind, redisAddr, backAddr string, port int) descriptortest.Config {
	cfg := descriptortest.BaseConfig(root, true)
	storage := descriptortest.Section(cfg, "storage")
	if k.chained {
		delete(storage, "filesystem")
		// The front gives a backend call 300ms; the call itself has 10s, so a delete
		// held up longer than the front waits still happens when the back resumes.
		storage["descriptorservice"] = map[string]any{"target": backAddr, "timeout": "10s"}
		storage["backendtimeout"] = "300ms"
	}
	if k.cache == "none" {
		storage["cache"] = map[string]any{"blobdescriptor": "none"}
	}
	if k.cache == "redis" {
		storage["cache"] = map[string]any{"blobdescriptor": "redis"}
		cfg["redis"] = map[string]any{"addrs": []string{redisAddr}, "nearcache": map[string]any{"size": 1000}}
	}
	descriptortest.Section(cfg, "grpc")["addr"] = fmt.Sprintf("127.0.0.1:%d", port)
	descriptortest.Section(cfg, "log")["level"] = "info"
	return cfg
}

func startEnv(t *testing.T, k envKind) *env {
	t.Helper()
	e := &env{name: k.String(), root: filepath.Join(t.TempDir(), "storage")}
	if err := os.MkdirAll(e.root, 0o755); err != nil {
		t.Fatal(err)
	}
	var redisAddr, backAddr string
	if k.cache == "redis" {
		e.redis = startRedis(t)
		redisAddr = e.redis.addr
	}
	if k.chained {
		// The back: the filesystem, no cache of its own, deletion on.
		cfg := descriptortest.BaseConfig(e.root, true)
		descriptortest.Section(cfg, "storage")["cache"] = map[string]any{"blobdescriptor": "none"}
		descriptortest.Section(cfg, "grpc")["addr"] = fmt.Sprintf("127.0.0.1:%d", descriptortest.FreePort(t))
		descriptortest.Section(cfg, "log")["level"] = "info"
		e.back = startReplica(t, "back", cfg)
		backAddr = e.back.addr()
	}
	n := 1
	if k.cache == "redis" {
		n = 2
	}
	for i := 0; i < n; i++ {
		cfg := serverConfig(e.root, k, redisAddr, backAddr, descriptortest.FreePort(t))
		e.servers = append(e.servers, startReplica(t, fmt.Sprintf("s%d", i), cfg))
	}
	// Every replica answers before the first history starts.
	for _, r := range e.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := r.Client().Health(ctx, "")
		cancel()
		if err != nil {
			t.Fatalf("%s: health: %v", r.name, err)
		}
	}
	return e
}
