package descriptor

import (
	"context"
	"time"
	"unicode/utf8"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking (serviceConfig's healthCheckConfig)
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/descriptor-service/descriptor-service/client-go/descriptorv1"
)

// Client calls descriptor.v1.BlobDescriptorService. It is safe for concurrent
// use; make one per process and Close it when done. Its global-scope Stat,
// SetDescriptor and Clear satisfy distribution.BlobDescriptorService, and so does
// the view Repository returns.
type Client struct {
	conn    *grpc.ClientConn
	rpc     descriptorv1.BlobDescriptorServiceClient
	timeout time.Duration
	target  string
}

var _ distribution.BlobDescriptorService = (*Client)(nil)

// Metrics are the server's cached-statter counters since it started.
type Metrics struct {
	Requests uint64 // Stat lookups (each digest of a BatchStat counts)
	Hits     uint64 // lookups the cache answered
	Misses   uint64 // lookups the cache did not answer
	Errors   uint64 // cache calls that failed
}

// BatchResult is the answer for one digest of a BatchStat: Descriptor, or Err
// (an *Error) when that digest failed.
type BatchResult struct {
	Digest     digest.Digest
	Descriptor distribution.Descriptor
	Err        error
}

// New returns a client for target: "host:port", any gRPC target URI, or several
// "host:port" joined by ","; "" means $DESCRIPTOR_TARGET, else DefaultTarget.
// Calls are balanced round robin over every address the target resolves to.
// New does not connect; the first call does.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	dialTarget, res, err := resolveTarget(target)
	if err != nil {
		return nil, err
	}
	tlsConfig, err := o.tls()
	if err != nil {
		return nil, err
	}
	dial := []grpc.DialOption{
		grpc.WithDefaultServiceConfig(serviceConfig(!o.noRetry)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}
	if tlsConfig != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)))
	} else {
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if token := o.bearer(); token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer(token)))
	}
	if res != nil {
		dial = append(dial, grpc.WithResolvers(res))
	}
	// The caller's interceptors, then the trace context, then the resends of
	// SERVER_DRAINING: every resend carries the same context, and a traceparent
	// an interceptor of the caller's sets is kept.
	chain := append([]grpc.UnaryClientInterceptor(nil), o.interceptors...)
	chain = append(chain, traceContext(o.propagator))
	if !o.noRetry {
		chain = append(chain, drainingRetry)
	}
	dial = append(dial, grpc.WithChainUnaryInterceptor(chain...))
	dial = append(dial, o.dialOptions...)
	conn, err := grpc.NewClient(dialTarget, dial...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, rpc: descriptorv1.NewBlobDescriptorServiceClient(conn), timeout: o.timeout, target: dialTarget}, nil
}

// Target is the target the client dials.
func (c *Client) Target() string { return c.target }

// Conn is the client's connection, for other services on the same server (for
// example grpc.health.v1.Health).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// Repository returns a view of the client bound to one repository scope. The
// name is checked by the server on every call (REPOSITORY_NAME_INVALID).
func (c *Client) Repository(name string) *Repository { return &Repository{c: c, name: name} }

// Stat returns the descriptor of dgst in the global scope; an error matching
// distribution.ErrBlobUnknown when the service does not know it.
func (c *Client) Stat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	return c.stat(ctx, dgst, "")
}

// SetDescriptor primes the cache with desc under dgst in the global scope.
func (c *Client) SetDescriptor(ctx context.Context, dgst digest.Digest, desc distribution.Descriptor) error {
	return c.setDescriptor(ctx, dgst, desc, "")
}

// Clear removes dgst from the cache and the backend in the global scope.
func (c *Client) Clear(ctx context.Context, dgst digest.Digest) error {
	return c.clear(ctx, dgst, "")
}

// Revalidate checks dgst against the server's backend now, bypassing its cache, in
// the global scope: the descriptor when the backend holds it (the cache is updated);
// distribution.ErrBlobUnknown when it does not (the cache's entries are removed as a
// Clear removes them; the backend is never changed). It needs pull access only.
func (c *Client) Revalidate(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	return c.revalidate(ctx, dgst, "")
}

// BatchStat stats many digests in the global scope: one result per digest, in
// order. A bad or unknown digest fails its own result only; the error return is
// for the call as a whole (BATCH_TOO_LARGE, UNAVAILABLE, ...).
func (c *Client) BatchStat(ctx context.Context, dgsts []digest.Digest) ([]BatchResult, error) {
	return c.batchStat(ctx, dgsts, "")
}

// Metrics returns the server's counters.
func (c *Client) Metrics(ctx context.Context) (Metrics, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.rpc.GetMetrics(ctx, &descriptorv1.GetMetricsRequest{})
	if err != nil {
		return Metrics{}, FromError(err)
	}
	return Metrics{resp.GetRequests(), resp.GetHits(), resp.GetMisses(), resp.GetErrors()}, nil
}

// Service is the full name of the service, as grpc.health.v1 and reflection know it.
const Service = "descriptor.v1.BlobDescriptorService"

// Health returns the grpc.health.v1 status of service ("" = the whole server;
// Service = this service): SERVING, NOT_SERVING (draining, or its backend fails
// its probe) or SERVICE_UNKNOWN. Health is open: no token is needed.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := healthpb.NewHealthClient(c.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if status.Code(err) == codes.NotFound {
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, nil
	}
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, FromError(err)
	}
	return resp.GetStatus(), nil
}

// Repository is a Client bound to one repository scope.
type Repository struct {
	c    *Client
	name string
}

var _ distribution.BlobDescriptorService = (*Repository)(nil)

// Name is the repository's name.
func (r *Repository) Name() string { return r.name }

// Stat returns the descriptor of dgst if the repository holds it.
func (r *Repository) Stat(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	return r.c.stat(ctx, dgst, r.name)
}

// SetDescriptor records that the repository holds desc under dgst (and sets the
// global entry).
func (r *Repository) SetDescriptor(ctx context.Context, dgst digest.Digest, desc distribution.Descriptor) error {
	return r.c.setDescriptor(ctx, dgst, desc, r.name)
}

// Clear removes dgst from the repository (its membership, media type and the
// global cache entry), in the cache and the backend.
func (r *Repository) Clear(ctx context.Context, dgst digest.Digest) error {
	return r.c.clear(ctx, dgst, r.name)
}

// Revalidate is Client.Revalidate in the repository: the repository's entry is
// checked against the backend, and removed from the cache (with the global entry,
// as a repository Clear removes them) when the backend no longer lists it there.
func (r *Repository) Revalidate(ctx context.Context, dgst digest.Digest) (distribution.Descriptor, error) {
	return r.c.revalidate(ctx, dgst, r.name)
}

// BatchStat is Client.BatchStat in the repository.
func (r *Repository) BatchStat(ctx context.Context, dgsts []digest.Digest) ([]BatchResult, error) {
	return r.c.batchStat(ctx, dgsts, r.name)
}

func (c *Client) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

func (c *Client) stat(ctx context.Context, dgst digest.Digest, repo string) (distribution.Descriptor, error) {
	if err := checkText(dgst, repo); err != nil {
		return distribution.Descriptor{}, err
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.rpc.Stat(ctx, &descriptorv1.StatRequest{Digest: string(dgst), Repository: repo})
	if err != nil {
		return distribution.Descriptor{}, FromError(err)
	}
	if resp.GetDescriptor_() == nil {
		return distribution.Descriptor{}, &Error{Code: codes.Internal, Reason: ReasonUnknown, Message: "Stat answered without a descriptor"}
	}
	return fromProto(resp.GetDescriptor_()), nil
}

func (c *Client) setDescriptor(ctx context.Context, dgst digest.Digest, desc distribution.Descriptor, repo string) error {
	if err := checkText(dgst, repo); err != nil {
		return err
	}
	if !utf8.ValidString(desc.MediaType) || !utf8.ValidString(string(desc.Digest)) {
		return newError(ReasonDescriptorInvalid, "descriptor cannot be sent: not UTF-8 text")
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	_, err := c.rpc.SetDescriptor(ctx, &descriptorv1.SetDescriptorRequest{
		Digest:      string(dgst),
		Descriptor_: &descriptorv1.Descriptor{MediaType: desc.MediaType, Digest: string(desc.Digest), Size: desc.Size},
		Repository:  repo,
	})
	return FromError(err)
}

func (c *Client) clear(ctx context.Context, dgst digest.Digest, repo string) error {
	if err := checkText(dgst, repo); err != nil {
		return err
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	_, err := c.rpc.Clear(ctx, &descriptorv1.ClearRequest{Digest: string(dgst), Repository: repo})
	return FromError(err)
}

func (c *Client) revalidate(ctx context.Context, dgst digest.Digest, repo string) (distribution.Descriptor, error) {
	if err := checkText(dgst, repo); err != nil {
		return distribution.Descriptor{}, err
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.rpc.Revalidate(ctx, &descriptorv1.RevalidateRequest{Digest: string(dgst), Repository: repo})
	if err != nil {
		return distribution.Descriptor{}, FromError(err)
	}
	if resp.GetDescriptor_() == nil {
		return distribution.Descriptor{}, &Error{Code: codes.Internal, Reason: ReasonUnknown, Message: "Revalidate answered without a descriptor"}
	}
	return fromProto(resp.GetDescriptor_()), nil
}

func (c *Client) batchStat(ctx context.Context, dgsts []digest.Digest, repo string) ([]BatchResult, error) {
	if err := checkText("", repo); err != nil {
		return nil, err
	}
	req := &descriptorv1.BatchStatRequest{Digests: make([]string, len(dgsts)), Repository: repo}
	for i, d := range dgsts {
		// A digest the wire cannot carry goes as "", which fails that item alone
		// (DIGEST_INVALID_FORMAT), as the server would fail the digest itself.
		if utf8.ValidString(string(d)) {
			req.Digests[i] = string(d)
		}
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	resp, err := c.rpc.BatchStat(ctx, req)
	if err != nil {
		return nil, FromError(err)
	}
	items := resp.GetResults()
	if len(items) != len(dgsts) {
		return nil, &Error{Code: codes.Internal, Reason: ReasonUnknown, Message: "BatchStat answered a different number of results"}
	}
	out := make([]BatchResult, len(items))
	for i, item := range items {
		out[i].Digest = dgsts[i]
		switch r := item.GetResult().(type) {
		case *descriptorv1.BatchStatResult_Descriptor_:
			out[i].Descriptor = fromProto(r.Descriptor_)
		case *descriptorv1.BatchStatResult_Status:
			out[i].Err = FromStatus(r.Status)
		default:
			out[i].Err = &Error{Code: codes.Internal, Reason: ReasonUnknown, Message: "BatchStat item without a result"}
		}
	}
	return out, nil
}

func fromProto(d *descriptorv1.Descriptor) distribution.Descriptor {
	return distribution.Descriptor{MediaType: d.GetMediaType(), Digest: digest.Digest(d.GetDigest()), Size: d.GetSize()}
}

// checkText refuses text the wire cannot carry (proto3 strings are UTF-8) with
// the error a server gives such a digest or name.
func checkText(dgst digest.Digest, repo string) error {
	if !utf8.ValidString(string(dgst)) {
		return newError(ReasonDigestInvalidFormat, "invalid digest: not UTF-8 text")
	}
	if !utf8.ValidString(repo) {
		return newError(ReasonRepositoryNameInvalid, "invalid repository name: not UTF-8 text")
	}
	return nil
}
