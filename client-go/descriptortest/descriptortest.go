// Package descriptortest starts the real parts Go tests run against (this
// module's, and those of a registry built on it): the descriptor-server command
// and a Redis-compatible server, each on free loopback ports in the test's
// temporary directory, stopped when the test ends.
//
// The server binary is $DESCRIPTOR_SERVER, else descriptor-server on PATH; the
// Redis binary is $DESCRIPTOR_REDIS_SERVER (or $DESCRIPTOR_TEST_REDIS_SERVER, as
// the Python suite spells it), else redis-server or valkey-server on PATH. A
// missing binary skips the test, except when $DESCRIPTOR_TEST_STRICT or $CI is
// set: there ./dev provides every part, so a missing one fails the test.
package descriptortest

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Missing skips t because a part is not installed, or fails it in CI.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("DESCRIPTOR_TEST_STRICT") != "" || os.Getenv("CI") != "" {
		t.Fatalf("missing in CI, where ./dev provides every part: %s", msg)
	}
	t.Skip(msg)
}

func lookBinary(t testing.TB, what string, envs []string, names []string) string {
	t.Helper()
	for _, env := range envs {
		if v := os.Getenv(env); v != "" {
			if _, err := os.Stat(v); err != nil {
				t.Fatalf("$%s=%s: %v", env, v, err)
			}
			return v
		}
	}
	for _, name := range names {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	Missing(t, "no %s binary: set $%s or put %s on PATH (./dev test does)", what, envs[0], strings.Join(names, " or "))
	return ""
}

// ServerBinary is the descriptor-server command.
func ServerBinary(t testing.TB) string {
	return lookBinary(t, "descriptor-server", []string{"DESCRIPTOR_SERVER"}, []string{"descriptor-server"})
}

// RedisBinary is the Redis-compatible server command.
func RedisBinary(t testing.TB) string {
	return lookBinary(t, "redis-server or valkey-server",
		[]string{"DESCRIPTOR_REDIS_SERVER", "DESCRIPTOR_TEST_REDIS_SERVER"}, []string{"redis-server", "valkey-server"})
}

// Config is a server configuration, written as JSON (which is YAML).
type Config = map[string]any

// BaseConfig serves root (an empty registry when it is empty) on a free loopback
// port with the in-memory cache; delete says whether Clear is enabled.
func BaseConfig(root string, deleteEnabled bool) Config {
	return Config{
		"storage": map[string]any{
			"filesystem": map[string]any{"rootdirectory": root},
			"cache":      map[string]any{"blobdescriptor": "inmemory"},
			"delete":     map[string]any{"enabled": deleteEnabled},
		},
		"grpc": map[string]any{"addr": "127.0.0.1:0"},
		"log":  map[string]any{"level": "info"},
	}
}

// Section returns cfg[key] as a map, creating it.
func Section(cfg Config, key string) map[string]any {
	m, ok := cfg[key].(map[string]any)
	if !ok {
		m = map[string]any{}
		cfg[key] = m
	}
	return m
}

// Server is a running descriptor-server.
type Server struct {
	Target string // host:port it listens on
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    strings.Builder
	done   chan struct{}
}

var ready = regexp.MustCompile(`listening on (\S+):(\d+)`)

// StartServer runs descriptor-server --config with cfg in a temporary directory
// and waits for its "listening on" line; the server is stopped (SIGTERM, then
// SIGKILL) when the test ends. env are more "NAME=value" entries of its
// environment (for example OTEL_TRACES_EXPORTER=console), after and so over the
// test's own.
func StartServer(t testing.TB, cfg Config, env ...string) *Server {
	t.Helper()
	bin := ServerBinary(t)
	dir := t.TempDir()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &Server{done: make(chan struct{})}
	s.cmd = exec.Command(bin, "--config", path)
	s.cmd.Dir = dir
	s.cmd.Env = append(serverEnv(), env...)
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s.cmd.Stderr = s.cmd.Stdout // one stream, as the log lines arrive
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	found := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.out.WriteString(line + "\n")
			s.mu.Unlock()
			if m := ready.FindStringSubmatch(line); m != nil {
				select {
				case found <- net.JoinHostPort(m[1], m[2]):
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		_ = s.cmd.Wait()
	}()
	t.Cleanup(s.Stop)
	select {
	case s.Target = <-found:
	case <-s.done:
		t.Fatalf("descriptor-server exited before listening:\n%s", s.Output())
	case <-time.After(60 * time.Second):
		t.Fatalf("descriptor-server did not listen within 60s:\n%s", s.Output())
	}
	return s
}

// overrides are the prefixes of the variables the server reads as config
// overrides (DESCRIPTOR_ + a path under these sections).
var overrides = []string{"STORAGE_", "REDIS_", "GRPC_", "HTTP_", "LOG_", "AUTH_"}

// serverEnv is the environment without config overrides: a test's server runs
// the config the test wrote, whatever the shell exports (and
// $DESCRIPTOR_REDIS_SERVER, which names this package's Redis binary, would
// otherwise be read as the unknown key redis.server). OpenTelemetry's OTEL_*
// variables are dropped too, so a shell that exports traces to a collector does
// not make every test server export; a test that wants tracing passes them to
// StartServer.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		rest, ok := strings.CutPrefix(name, "DESCRIPTOR_")
		drop := strings.HasPrefix(name, "OTEL_")
		for _, p := range overrides {
			drop = drop || (ok && strings.HasPrefix(rest, p))
		}
		if !drop {
			env = append(env, kv)
		}
	}
	return env
}

// Output is what the server logged so far.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// Signal sends sig to the server.
func (s *Server) Signal(sig os.Signal) error { return s.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits for the exit (SIGKILL after 30s).
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Exited is closed once the server process has exited.
func (s *Server) Exited() <-chan struct{} { return s.done }

// FreePort returns a loopback port nothing listens on right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartRedis runs a standalone Redis-compatible server without persistence on a
// free loopback port and returns its address; it is killed when the test ends.
func StartRedis(t testing.TB) string {
	t.Helper()
	bin := RedisBinary(t)
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := FreePort(t)
		cmd := exec.Command(bin, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "no", "--protected-mode", "no")
		cmd.Dir = dir
		var log strings.Builder
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(port))
		if err := waitRedis(addr, cmd.Process.Pid, exited); err != nil {
			_ = cmd.Process.Kill()
			<-exited
			lastErr = fmt.Errorf("%w: %s", err, log.String())
			continue
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
		return addr
	}
	t.Fatalf("%s did not start: %v", bin, lastErr)
	return ""
}

// waitRedis waits until the server at addr answers INFO with pid as its process.
func waitRedis(addr string, pid int, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	want := fmt.Sprintf("process_id:%d", pid)
	for {
		select {
		case <-exited:
			return fmt.Errorf("exited")
		case <-ctx.Done():
			return fmt.Errorf("no answer on %s", addr)
		case <-time.After(50 * time.Millisecond):
		}
		if info, err := RedisCommand(addr, "INFO", "server"); err == nil && strings.Contains(info, want) {
			return nil
		}
	}
}

// RedisCommand sends one command in RESP and returns the raw reply.
func RedisCommand(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(line, "$") {
		var n int
		if _, err := fmt.Sscanf(line, "$%d", &n); err != nil || n < 0 {
			return "", err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	if strings.HasPrefix(line, "-") {
		return "", fmt.Errorf("redis: %s", strings.TrimSpace(line[1:]))
	}
	return strings.TrimSpace(line), nil
}

// Kill ends the server at once (SIGKILL).
func (s *Server) Kill() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// WaitOutput waits until the server has logged text.
func (s *Server) WaitOutput(t testing.TB, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.Output(), text) {
		if time.Now().After(deadline) {
			t.Fatalf("server did not log %q within %v:\n%s", text, timeout, s.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Layout writes blobs and repository links as distribution's filesystem driver does.
type Layout struct{ Root string }

func (l Layout) v2(parts ...string) string {
	return filepath.Join(append([]string{l.Root, "docker", "registry", "v2"}, parts...)...)
}

// BlobPath is the data file of a blob.
func (l Layout) BlobPath(dgst string) string {
	alg, hex, _ := strings.Cut(dgst, ":")
	return l.v2("blobs", alg, hex[:2], hex, "data")
}

// LinkPath is the link file of a blob in a repository.
func (l Layout) LinkPath(repo, dgst string) string {
	alg, hex, _ := strings.Cut(dgst, ":")
	return l.v2(append(append([]string{"repositories"}, strings.Split(repo, "/")...), "_layers", alg, hex, "link")...)
}

// Push writes a blob and its link in repo, as a push leaves them, and returns its sha256 digest.
func (l Layout) Push(t testing.TB, repo string, content []byte) string {
	t.Helper()
	sum := sha256.Sum256(content)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	write(t, l.BlobPath(dgst), content)
	write(t, l.LinkPath(repo, dgst), []byte(dgst))
	return dgst
}

func write(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Hold makes the link of dgst in repo a FIFO without a writer: the server's read
// of it blocks (as on a hung disk) until the returned release writes the digest.
// release is also registered as a cleanup, so the server is never left blocked.
func (l Layout) Hold(t testing.TB, repo, dgst string) (waitReader func() bool, release func()) {
	t.Helper()
	path := l.LinkPath(repo, dgst)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	var (
		once sync.Once
		fd   = -1
	)
	waitReader = func() bool {
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			f, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
			if err == nil {
				fd = f
				return true
			}
			time.Sleep(10 * time.Millisecond)
		}
		return false
	}
	release = func() {
		once.Do(func() {
			if fd < 0 {
				f, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
				if err != nil {
					return
				}
				fd = f
			}
			_, _ = syscall.Write(fd, []byte(dgst))
			_ = syscall.Close(fd)
		})
	}
	t.Cleanup(release)
	return waitReader, release
}
