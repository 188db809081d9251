package descriptor

import (
	"context"
	"slices"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// traceParent is the W3C Trace Context header naming the caller's span.
const traceParent = "traceparent"

// traceContext is the client's interceptor that sends the trace context of the
// call's span (trace.SpanContextFromContext) in the call's metadata, so the
// server's span is its child. It runs inside the interceptors of
// WithUnaryInterceptor and outside drainingRetry: every resend of one call
// carries the same context. explicit is WithPropagator's; nil means the global
// one, read on every call.
func traceContext(explicit propagation.TextMapPropagator) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(injectTrace(ctx, explicit), method, req, reply, cc, opts...)
	}
}

// propagator is explicit, else the application's global propagator when it has
// one (otel.SetTextMapPropagator), else W3C Trace Context.
func propagator(explicit propagation.TextMapPropagator) propagation.TextMapPropagator {
	if explicit != nil {
		return explicit
	}
	if p := otel.GetTextMapPropagator(); len(p.Fields()) > 0 {
		return p
	}
	return propagation.TraceContext{}
}

// injectTrace adds what the propagator injects for ctx's span to the outgoing
// metadata. Keys the caller already put there are left alone, and no tracestate
// is added beside a traceparent of the caller's (it would describe another span).
func injectTrace(ctx context.Context, explicit propagation.TextMapPropagator) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	carrier := propagation.MapCarrier{}
	propagator(explicit).Inject(ctx, carrier)
	if len(carrier) == 0 {
		return ctx
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	callersParent := len(md.Get(traceParent)) > 0
	keys := make([]string, 0, len(carrier))
	for k := range carrier {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	kv := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		key := strings.ToLower(k)
		if len(md.Get(key)) > 0 || (callersParent && key == "tracestate") {
			continue
		}
		kv = append(kv, key, carrier[k])
	}
	if len(kv) == 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
