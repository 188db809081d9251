package descriptor

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/descriptor-service/descriptor-service/client-go/descriptorv1"
)

// The retry policy, the same as the Python client's: three attempts, backoff
// from 50ms doubling up to 1s.
const (
	maxAttempts    = 3
	initialBackoff = 50 * time.Millisecond
	maxBackoff     = time.Second
)

// idempotent methods are retried by gRPC on any UNAVAILABLE; the others only on
// SERVER_DRAINING (see drainingRetry), which promises the server did nothing.
var idempotent = []string{"Stat", "BatchStat", "GetMetrics", "Revalidate"}

// serviceConfig is round robin; with retry, also the retry policy and the health
// watch: each address's grpc.health.v1 status of the server ("") is watched, and
// an address whose server turns NOT_SERVING (draining) leaves the rotation at once,
// so a draining replica stops being sent calls and can stop without losing one.
func serviceConfig(retry bool) string {
	lb := `"loadBalancingConfig": [{"round_robin": {}}]`
	if !retry {
		return "{" + lb + "}"
	}
	lb += `, "healthCheckConfig": {"serviceName": ""}`
	names := make([]string, len(idempotent))
	for i, m := range idempotent {
		names[i] = fmt.Sprintf(`{"service": %q, "method": %q}`, descriptorv1.BlobDescriptorService_ServiceDesc.ServiceName, m)
	}
	return fmt.Sprintf(`{%s, "methodConfig": [{"name": [%s], "retryPolicy": {"maxAttempts": %d,`+
		` "initialBackoff": "%gs", "maxBackoff": "%gs", "backoffMultiplier": 2,`+
		` "retryableStatusCodes": ["UNAVAILABLE"]}}]}`,
		lb, strings.Join(names, ", "), maxAttempts, initialBackoff.Seconds(), maxBackoff.Seconds())
}

// resolveTarget returns what grpc.NewClient dials, and a resolver for a list of
// addresses. A target is "host:port", any gRPC target ("dns:///name:5051",
// "unix:///run/d.sock"), or several "host:port" joined by "," (also written
// "ipv4:a:1,b:2" or "ipv6:[::1]:1,[::1]:2", as gRPC's C core spells it).
func resolveTarget(target string) (string, resolver.Builder, error) {
	if target == "" {
		target = os.Getenv("DESCRIPTOR_TARGET")
	}
	if target == "" {
		target = DefaultTarget
	}
	list := target
	for _, scheme := range []string{"ipv4:", "ipv6:"} {
		list = strings.TrimPrefix(list, scheme)
	}
	if list == target && (strings.Contains(target, "://") || !strings.Contains(target, ",")) {
		return target, nil, nil
	}
	var (
		endpoints []resolver.Endpoint
		addrs     []string
	)
	for _, addr := range strings.Split(list, ",") {
		addr = strings.TrimSpace(addr)
		if addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", nil, fmt.Errorf("descriptor: target %q: %w", target, err)
		}
		// ServerName: each replica's certificate is checked against its own host.
		endpoints = append(endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: addr, ServerName: host}}})
		addrs = append(addrs, addr)
	}
	if len(endpoints) == 0 {
		return "", nil, fmt.Errorf("descriptor: target %q names no address", target)
	}
	r := manual.NewBuilderWithScheme("descriptor-list")
	r.InitialState(resolver.State{Endpoints: endpoints})
	return r.Scheme() + ":///" + strings.Join(addrs, ","), r, nil
}

// drainingRetry retries the methods gRPC does not retry (SetDescriptor, Clear)
// when the answer is SERVER_DRAINING: the server then did nothing, and round robin
// picks another replica.
func drainingRetry(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if !retriedOnDraining(method) {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	backoff := initialBackoff
	for attempt := 1; ; attempt++ {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil || attempt == maxAttempts || !isDraining(err) {
			return err
		}
		wait := time.Duration(rand.Int64N(int64(backoff) + 1))
		if deadline, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(deadline) {
			return err // no time left for another attempt: the refusal is the answer
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func retriedOnDraining(method string) bool {
	return method == descriptorv1.BlobDescriptorService_SetDescriptor_FullMethodName ||
		method == descriptorv1.BlobDescriptorService_Clear_FullMethodName
}

func isDraining(err error) bool {
	st, ok := status.FromError(err)
	if !ok {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason() == ReasonServerDraining && st.Code() == table[ReasonServerDraining]
		}
	}
	return false
}

// bearer sends a token on every call, over TLS or not (the server decides).
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
