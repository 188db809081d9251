// Package descriptor is the Go client of descriptor.v1.BlobDescriptorService,
// the blob descriptor service of a container registry.
//
//	c, err := descriptor.New("") // $DESCRIPTOR_TARGET, else 127.0.0.1:5051
//	if err != nil { ... }
//	defer c.Close()
//	desc, err := c.Repository("library/ubuntu").Stat(ctx, dgst)
//	if errors.Is(err, distribution.ErrBlobUnknown) { ... }
//
// Every verb takes a context.Context first; a context without a deadline gets
// the client's default timeout (WithTimeout, default 10s). Descriptors are
// distribution.Descriptor values (MediaType, Digest, Size); both *Client (the
// global scope) and *Repository satisfy distribution.BlobDescriptorService.
//
// Errors are *Error values carrying the gRPC code, the google.rpc.ErrorInfo
// reason and the message; errors.Is matches distribution.ErrBlobUnknown,
// distribution.ErrUnsupported, digest.ErrDigestInvalidFormat,
// digest.ErrDigestInvalidLength, digest.ErrDigestUnsupported,
// context.DeadlineExceeded and context.Canceled, and this package's sentinels
// (ErrServerDraining, ErrBatchTooLarge, ...) by reason.
//
// Targets are "host:port", any gRPC target URI ("dns:///cache:5051",
// "unix:///run/descriptor.sock") or several "host:port" joined by ",". Calls are
// balanced round robin over every address. Retries follow the service's rules:
// Stat, BatchStat and GetMetrics are retried on UNAVAILABLE (three attempts,
// backoff from 50ms doubling to 1s, honouring the server's retry pushback);
// SetDescriptor and Clear only when the answer is SERVER_DRAINING, which
// promises the draining server did nothing. Each address's server health
// (grpc.health.v1, service "") is watched, so a replica that starts draining
// (NOT_SERVING) leaves the rotation at once. WithoutRetry turns all three off.
//
// Trace context: a call whose context carries an OpenTelemetry span context
// (go.opentelemetry.io/otel/trace.SpanContextFromContext is valid) sends it in
// its metadata, through the application's global propagator when one is set
// (otel.SetTextMapPropagator), else as W3C traceparent and tracestate, so the
// server's span of the call is that span's child. Every attempt of a call,
// SERVER_DRAINING resends included, carries the same context; metadata the
// caller set itself is kept. WithPropagator chooses the propagator, and
// propagation.NewCompositeTextMapPropagator() turns the propagation off.
package descriptor
