package descriptor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

// tracedServer starts a server that prints its spans as JSON on stdout (the
// OpenTelemetry SDK's console exporter), within 50ms of their end.
func tracedServer(t *testing.T) *descriptortest.Server {
	t.Helper()
	layout := descriptortest.Layout{Root: t.TempDir()}
	return descriptortest.StartServer(t, descriptortest.BaseConfig(layout.Root, true),
		"OTEL_TRACES_EXPORTER=console", "OTEL_BSP_SCHEDULE_DELAY=50")
}

// span is what the console exporter prints of a span.
type span struct {
	Name    string `json:"name"`
	Kind    string `json:"kind"`
	Context struct {
		TraceID    string `json:"trace_id"`
		SpanID     string `json:"span_id"`
		TraceState string `json:"trace_state"`
	} `json:"context"`
	ParentID   *string        `json:"parent_id"` // nil for a root span
	Attributes map[string]any `json:"attributes"`
}

// spans are the spans in the server's output: indented JSON objects, each
// starting with a line "{", among the log lines.
func spans(out string) []span {
	var all []span
	for off := 0; off < len(out); {
		if strings.HasPrefix(out[off:], "{\n") {
			dec := json.NewDecoder(strings.NewReader(out[off:]))
			var s span
			if err := dec.Decode(&s); err == nil {
				all = append(all, s)
				off += int(dec.InputOffset())
				continue
			}
		}
		nl := strings.IndexByte(out[off:], '\n')
		if nl < 0 {
			break
		}
		off += nl + 1
	}
	return all
}

func parentOf(s span) string {
	if s.ParentID == nil {
		return "null"
	}
	return *s.ParentID
}

// waitSpan waits until the server has exported a span that match accepts.
func waitSpan(t *testing.T, srv *descriptortest.Server, what string, match func(span) bool) span {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, s := range spans(srv.Output()) {
			if match(s) {
				return s
			}
		}
		if time.Now().After(deadline) {
			out := srv.Output()
			t.Fatalf("the server exported no %s within 15s; its output ends:\n%s", what, out[max(0, len(out)-6000):])
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// serverSpanOf is the server's span of the call that looked dgst up in its
// cache: the parent of the cache.stat span naming dgst.
func serverSpanOf(t *testing.T, srv *descriptortest.Server, dgst digest.Digest) span {
	t.Helper()
	child := waitSpan(t, srv, "cache.stat span of "+string(dgst), func(s span) bool {
		return s.Name == "cache.stat" && s.Attributes["descriptor.digest"] == string(dgst)
	})
	if child.ParentID == nil {
		t.Fatalf("cache.stat of %s has no parent", dgst)
	}
	return waitSpan(t, srv, "server span "+*child.ParentID, func(s span) bool {
		return s.Kind == "SpanKind.SERVER" && s.Context.SpanID == *child.ParentID
	})
}

// spanContext is a sampled remote span context: trace 4bf92f3577b34da6a3ce929d0e0e47<tr>,
// span 00f067aa0ba902<sp>.
func spanContext(tr, sp byte) trace.SpanContext {
	tid, _ := trace.TraceIDFromHex(fmt.Sprintf("4bf92f3577b34da6a3ce929d0e0e47%02x", tr))
	sid, _ := trace.SpanIDFromHex(fmt.Sprintf("00f067aa0ba902%02x", sp))
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true})
}

func traceparent(sc trace.SpanContext) string {
	return fmt.Sprintf("00-%s-%s-01", sc.TraceID(), sc.SpanID())
}

// wire records the metadata of every attempt as it leaves the client: an
// interceptor passed with WithDialOptions runs inside the client's own.
type wire struct {
	mu  sync.Mutex
	mds []metadata.MD
}

func (w *wire) option() descriptor.Option {
	return descriptor.WithDialOptions(grpc.WithChainUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			md, _ := metadata.FromOutgoingContext(ctx)
			w.mu.Lock()
			w.mds = append(w.mds, md.Copy())
			w.mu.Unlock()
			return invoker(ctx, method, req, reply, cc, opts...)
		}))
}

// sent is the key's values of every attempt so far.
func (w *wire) sent(key string) [][]string {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([][]string, len(w.mds))
	for i, md := range w.mds {
		out[i] = md.Get(key)
	}
	return out
}

// reparent sends parent as the caller's span whatever the context's is: a
// server span that is parent's child shows that this propagator was used.
type reparent struct{ parent trace.SpanContext }

func (r reparent) Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	propagation.TraceContext{}.Inject(trace.ContextWithSpanContext(ctx, r.parent), carrier)
}

func (reparent) Extract(ctx context.Context, _ propagation.TextMapCarrier) context.Context {
	return ctx
}

func (reparent) Fields() []string { return propagation.TraceContext{}.Fields() }

// setGlobalPropagator sets otel's global propagator for the test. The default
// global, once set, delegates to the first propagator set for good, so it is
// not what the cleanup puts back: an empty composite, which has no fields
// either, does the same for the client.
func setGlobalPropagator(t *testing.T, p propagation.TextMapPropagator) {
	prev := otel.GetTextMapPropagator()
	if len(prev.Fields()) == 0 {
		prev = propagation.NewCompositeTextMapPropagator()
	}
	otel.SetTextMapPropagator(p)
	t.Cleanup(func() { otel.SetTextMapPropagator(prev) })
}

func ignoreUnknown(err error) error {
	if errors.Is(err, distribution.ErrBlobUnknown) {
		return nil
	}
	return err
}

// TestTraceContext calls a server that exports its spans, from a context that
// carries a span, and checks that the server's span of each call is that
// span's child, for every RPC, through the caller's interceptors and
// propagators, and that the caller's own traceparent is kept.
func TestTraceContext(t *testing.T) {
	srv := tracedServer(t)
	withState := func(sc trace.SpanContext) trace.SpanContext {
		ts, err := trace.ParseTraceState("vendor=opaque")
		if err != nil {
			t.Fatal(err)
		}
		return sc.WithTraceState(ts)
	}
	stat := func(ctx context.Context, c *descriptor.Client) error { _, err := c.Stat(ctx, a256); return err }
	const statSpan = "descriptor.v1.BlobDescriptorService/Stat"
	cases := []struct {
		name   string
		sc     func(tr byte) trace.SpanContext             // the span in the call's context
		ctx    func(context.Context, byte) context.Context // what the caller adds to it, or nil
		opts   func(tr byte) []descriptor.Option
		call   func(context.Context, *descriptor.Client) error
		span   string               // the server span's name
		parent func(tr byte) string // the span id the server's span is the child of
	}{
		{name: "Stat", call: stat, span: statSpan},
		{name: "Stat in a repository", span: statSpan,
			call: func(ctx context.Context, c *descriptor.Client) error {
				_, err := c.Repository(repo).Stat(ctx, a256)
				return err
			}},
		{name: "SetDescriptor", span: "descriptor.v1.BlobDescriptorService/SetDescriptor",
			call: func(ctx context.Context, c *descriptor.Client) error {
				return c.Repository(repo).SetDescriptor(ctx, a384, desc(oct, a384, 1))
			}},
		{name: "Clear", span: "descriptor.v1.BlobDescriptorService/Clear",
			call: func(ctx context.Context, c *descriptor.Client) error { return c.Clear(ctx, a384) }},
		{name: "BatchStat", span: "descriptor.v1.BlobDescriptorService/BatchStat",
			call: func(ctx context.Context, c *descriptor.Client) error {
				_, err := c.BatchStat(ctx, []digest.Digest{a256, a384})
				return err
			}},
		{name: "Metrics", span: "descriptor.v1.BlobDescriptorService/GetMetrics",
			call: func(ctx context.Context, c *descriptor.Client) error { _, err := c.Metrics(ctx); return err }},
		{name: "Health", span: "grpc.health.v1.Health/Check",
			call: func(ctx context.Context, c *descriptor.Client) error { _, err := c.Health(ctx, ""); return err }},
		{name: "tracestate travels", call: stat, span: statSpan,
			sc: func(tr byte) trace.SpanContext { return withState(spanContext(tr, 1)) }},
		{name: "caller's traceparent kept", call: stat, span: statSpan,
			ctx: func(ctx context.Context, tr byte) context.Context {
				return metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent(spanContext(tr, 2)))
			},
			parent: func(tr byte) string { return spanContext(tr, 2).SpanID().String() }},
		{name: "interceptor's traceparent kept", call: stat, span: statSpan,
			opts: func(tr byte) []descriptor.Option {
				return []descriptor.Option{descriptor.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
					return invoker(metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent(spanContext(tr, 3))), method, req, reply, cc, opts...)
				})}
			},
			parent: func(tr byte) string { return spanContext(tr, 3).SpanID().String() }},
		{name: "interceptor's client span sent", call: stat, span: statSpan,
			opts: func(tr byte) []descriptor.Option {
				return []descriptor.Option{descriptor.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
					return invoker(trace.ContextWithSpanContext(ctx, spanContext(tr, 4)), method, req, reply, cc, opts...)
				})}
			},
			parent: func(tr byte) string { return spanContext(tr, 4).SpanID().String() }},
		{name: "WithPropagator", call: stat, span: statSpan,
			opts: func(tr byte) []descriptor.Option {
				return []descriptor.Option{descriptor.WithPropagator(reparent{spanContext(tr, 5)})}
			},
			parent: func(tr byte) string { return spanContext(tr, 5).SpanID().String() }},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := byte(i + 1)
			sc := spanContext(tr, 1)
			if tc.sc != nil {
				sc = tc.sc(tr)
			}
			ctx := trace.ContextWithSpanContext(context.Background(), sc)
			if tc.ctx != nil {
				ctx = tc.ctx(ctx, tr)
			}
			var w wire
			opts := []descriptor.Option{w.option()}
			if tc.opts != nil {
				opts = append(opts, tc.opts(tr)...)
			}
			if err := ignoreUnknown(tc.call(ctx, dial(t, srv.Target, opts...))); err != nil {
				t.Fatal(err)
			}
			for _, values := range w.sent("traceparent") {
				if len(values) != 1 {
					t.Fatalf("an attempt sent traceparent %q, want one", values)
				}
			}
			want := sc.SpanID().String()
			if tc.parent != nil {
				want = tc.parent(tr)
			}
			got := waitSpan(t, srv, tc.span+" span of trace "+sc.TraceID().String(), func(s span) bool {
				return s.Name == tc.span && s.Context.TraceID == "0x"+sc.TraceID().String()
			})
			if got.ParentID == nil || *got.ParentID != "0x"+want {
				t.Fatalf("server span %s has parent %s, want 0x%s", got.Name, parentOf(got), want)
			}
			// The console exporter prints a trace state as ['{key=vendor, value=opaque}'].
			if ts := sc.TraceState(); ts.Len() > 0 && !strings.Contains(got.Context.TraceState, "{key=vendor, value=opaque}") {
				t.Fatalf("server span has trace state %s, want the caller's %s", got.Context.TraceState, ts)
			}
		})
	}
}

// TestTraceContextNotSent checks that a call sends no trace context when its
// context has no span, or when the propagator is the empty composite: the
// server's span is then the root of a trace of its own.
func TestTraceContextNotSent(t *testing.T) {
	srv := tracedServer(t)
	ctx := context.Background()
	sc := spanContext(0xf0, 1)
	cases := []struct {
		name string
		ctx  context.Context
		opts []descriptor.Option
	}{
		{"no span in the context", ctx, nil},
		{"no valid span in the context", trace.ContextWithSpanContext(ctx, trace.SpanContext{}), nil},
		{"empty composite propagator", trace.ContextWithSpanContext(ctx, sc),
			[]descriptor.Option{descriptor.WithPropagator(propagation.NewCompositeTextMapPropagator())}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var w wire
			c := dial(t, srv.Target, append([]descriptor.Option{w.option()}, tc.opts...)...)
			dgst := digest.FromString(t.Name())
			if _, err := c.Stat(tc.ctx, dgst); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatal(err)
			}
			for _, key := range []string{"traceparent", "tracestate"} {
				for _, values := range w.sent(key) {
					if len(values) > 0 {
						t.Fatalf("sent %s %q", key, values)
					}
				}
			}
			got := serverSpanOf(t, srv, dgst)
			if got.ParentID != nil || got.Context.TraceID == "0x"+sc.TraceID().String() {
				t.Fatalf("server span %s of trace %s has parent %s, want a root span", got.Name, got.Context.TraceID, parentOf(got))
			}
		})
	}
}

// TestTraceContextGlobalPropagator checks that the application's global
// propagator (otel.SetTextMapPropagator, as distribution's registry sets it) is
// used when it has fields, read at every call, and that WithPropagator wins.
func TestTraceContextGlobalPropagator(t *testing.T) {
	srv := tracedServer(t)
	const statSpan = "descriptor.v1.BlobDescriptorService/Stat"
	global := func(tr byte) propagation.TextMapPropagator { return reparent{spanContext(tr, 7)} }
	cases := []struct {
		name   string
		global func(tr byte) propagation.TextMapPropagator
		opts   []descriptor.Option
		parent byte // the span the server's is the child of: 1 is the context's, 7 the global's
	}{
		{"global propagator", global, nil, 7},
		{"global composite with trace context", func(tr byte) propagation.TextMapPropagator {
			return propagation.NewCompositeTextMapPropagator(propagation.Baggage{}, global(tr))
		}, nil, 7},
		{"WithPropagator wins", global, []descriptor.Option{descriptor.WithPropagator(propagation.TraceContext{})}, 1},
		{"global without fields", func(byte) propagation.TextMapPropagator { return propagation.NewCompositeTextMapPropagator() }, nil, 1},
	}
	c := dial(t, srv.Target)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := byte(0xe0 + i)
			cl := c
			if tc.opts != nil {
				cl = dial(t, srv.Target, tc.opts...)
			}
			setGlobalPropagator(t, tc.global(tr)) // after New: the client reads it per call
			sc := spanContext(tr, 1)
			if _, err := cl.Stat(trace.ContextWithSpanContext(context.Background(), sc), a256); !errors.Is(err, distribution.ErrBlobUnknown) {
				t.Fatal(err)
			}
			got := waitSpan(t, srv, "Stat span of trace "+sc.TraceID().String(), func(s span) bool {
				return s.Name == statSpan && s.Context.TraceID == "0x"+sc.TraceID().String()
			})
			want := "0x" + spanContext(tr, tc.parent).SpanID().String()
			if got.ParentID == nil || *got.ParentID != want {
				t.Fatalf("server span has parent %s, want %s", parentOf(got), want)
			}
		})
	}
}

// TestTraceContextOnEveryResend checks that each resend of a SetDescriptor
// refused with SERVER_DRAINING carries the same trace context as the first
// attempt.
func TestTraceContextOnEveryResend(t *testing.T) {
	srv, layout := server(t, func(cfg descriptortest.Config) { descriptortest.Section(cfg, "grpc")["drain"] = "20s" })
	d := layout.Push(t, "held/repo", []byte("held"))
	if err := syscall.Unlink(layout.LinkPath("held/repo", d)); err != nil {
		t.Fatal(err)
	}
	waitReader, release := layout.Hold(t, "held/repo", d)
	held := make(chan error, 1)
	go func() {
		_, err := dial(t, srv.Target, descriptor.WithTimeout(time.Minute)).Repository("held/repo").Stat(context.Background(), digest.Digest(d))
		held <- err
	}()
	if !waitReader() {
		t.Fatal("the server never read the held link")
	}
	if err := srv.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	srv.WaitOutput(t, "draining", 15*time.Second)
	var w wire
	// Without the health watch, so that the calls reach the draining server.
	c := dial(t, srv.Target, w.option(), descriptor.WithDialOptions(grpc.WithDisableHealthCheck()))
	sc := spanContext(0xd0, 1)
	ctx := trace.ContextWithSpanContext(context.Background(), sc)
	if err := c.SetDescriptor(ctx, a256, desc(oct, a256, 1)); !errors.Is(err, descriptor.ErrServerDraining) {
		t.Fatalf("SetDescriptor on a draining server: %v", err)
	}
	sent := w.sent("traceparent")
	if len(sent) < 2 {
		t.Fatalf("%d attempts, want the resends of SERVER_DRAINING too", len(sent))
	}
	for i, values := range sent {
		if len(values) != 1 || values[0] != traceparent(sc) {
			t.Fatalf("attempt %d sent traceparent %q, want %s", i+1, values, traceparent(sc))
		}
	}
	release()
	if err := <-held; err != nil {
		t.Fatalf("the call in flight did not finish: %v", err)
	}
}

func TestWithPropagatorNil(t *testing.T) {
	if _, err := descriptor.New("127.0.0.1:1", descriptor.WithPropagator(nil)); err == nil {
		t.Fatal("New accepted a nil propagator")
	}
}
