package descriptor_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
)

// reasons is the service's error table as a user reads it: reason, code, the
// value of distribution or go-digest it stands for, and this package's sentinel.
var reasons = []struct {
	reason   string
	code     codes.Code
	std      error
	sentinel error
}{
	{"BLOB_UNKNOWN", codes.NotFound, distribution.ErrBlobUnknown, descriptor.ErrBlobUnknown},
	{"DIGEST_INVALID_FORMAT", codes.InvalidArgument, digest.ErrDigestInvalidFormat, descriptor.ErrDigestInvalidFormat},
	{"DIGEST_INVALID_LENGTH", codes.InvalidArgument, digest.ErrDigestInvalidLength, descriptor.ErrDigestInvalidLength},
	{"DIGEST_UNSUPPORTED", codes.InvalidArgument, digest.ErrDigestUnsupported, descriptor.ErrDigestUnsupported},
	{"DESCRIPTOR_INVALID", codes.InvalidArgument, nil, descriptor.ErrDescriptorInvalid},
	{"REPOSITORY_NAME_INVALID", codes.InvalidArgument, nil, descriptor.ErrRepositoryNameInvalid},
	{"BATCH_TOO_LARGE", codes.InvalidArgument, nil, descriptor.ErrBatchTooLarge},
	{"REQUEST_INVALID", codes.InvalidArgument, nil, descriptor.ErrRequestInvalid},
	{"UNSUPPORTED", codes.Unimplemented, distribution.ErrUnsupported, descriptor.ErrUnsupported},
	{"BACKEND_UNAVAILABLE", codes.Unavailable, nil, descriptor.ErrBackendUnavailable},
	{"SERVER_DRAINING", codes.Unavailable, nil, descriptor.ErrServerDraining},
	{"UNAUTHENTICATED", codes.Unauthenticated, nil, descriptor.ErrUnauthenticated},
	{"PERMISSION_DENIED", codes.PermissionDenied, nil, descriptor.ErrPermissionDenied},
	{"RESOURCE_EXHAUSTED", codes.ResourceExhausted, nil, descriptor.ErrResourceExhausted},
}

// every standard value a reason can stand for, to check that each matches its own only.
var standards = []error{
	distribution.ErrBlobUnknown, distribution.ErrUnsupported,
	digest.ErrDigestInvalidFormat, digest.ErrDigestInvalidLength, digest.ErrDigestUnsupported,
	context.DeadlineExceeded, context.Canceled,
}

func withInfo(t *testing.T, code codes.Code, msg, domain, reason string, md map[string]string) error {
	t.Helper()
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason, Metadata: md})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestEveryReasonIsTyped(t *testing.T) {
	for _, r := range reasons {
		t.Run(r.reason, func(t *testing.T) {
			raw := withInfo(t, r.code, "something about "+r.reason, descriptor.Domain, r.reason, map[string]string{"digest": "sha256:x"})
			err := fmt.Errorf("wrapped: %w", descriptor.FromError(raw))
			var e *descriptor.Error
			if !errors.As(err, &e) {
				t.Fatalf("errors.As(%v) found no *descriptor.Error", err)
			}
			if e.Code != r.code || e.Reason != r.reason || e.Message != "something about "+r.reason {
				t.Fatalf("got code %v reason %q message %q", e.Code, e.Reason, e.Message)
			}
			if e.Metadata["digest"] != "sha256:x" {
				t.Fatalf("metadata %v", e.Metadata)
			}
			if !errors.Is(err, r.sentinel) {
				t.Fatalf("errors.Is(%v, sentinel %v) is false", err, r.sentinel)
			}
			for _, other := range reasons {
				if other.reason != r.reason && errors.Is(err, other.sentinel) {
					t.Fatalf("errors.Is(%v, %v) is true", err, other.sentinel)
				}
			}
			for _, std := range standards {
				if got, want := errors.Is(err, std), std == r.std; got != want {
					t.Fatalf("errors.Is(%v, %v) = %v, want %v", err, std, got, want)
				}
			}
			if r.std != nil && descriptor.Standard(err) != r.std {
				t.Fatalf("Standard(%v) = %v, want the value %v itself", err, descriptor.Standard(err), r.std)
			}
			if r.std == nil && descriptor.Standard(err) != err {
				t.Fatalf("Standard(%v) changed an error without a standard value", err)
			}
			// Back to a status: same code, message and ErrorInfo.
			st := status.Convert(e)
			if st.Code() != r.code || st.Message() != e.Message {
				t.Fatalf("GRPCStatus %v", st)
			}
			back := descriptor.FromStatus(st.Proto())
			if !errors.Is(back, r.sentinel) {
				t.Fatalf("round trip lost the reason: %v", back)
			}
		})
	}
}

func TestStatusWithoutTrustedInfoIsTypedByCode(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
		is     error
	}{
		{"no info, NOT_FOUND", status.Error(codes.NotFound, "gone"), codes.NotFound, "BLOB_UNKNOWN", distribution.ErrBlobUnknown},
		{"no info, INVALID_ARGUMENT", status.Error(codes.InvalidArgument, "bad"), codes.InvalidArgument, "INVALID_ARGUMENT", nil},
		{"no info, UNAVAILABLE", status.Error(codes.Unavailable, "down"), codes.Unavailable, "UNAVAILABLE", nil},
		{"no info, UNIMPLEMENTED", status.Error(codes.Unimplemented, "no"), codes.Unimplemented, "UNSUPPORTED", distribution.ErrUnsupported},
		{"DEADLINE_EXCEEDED", status.Error(codes.DeadlineExceeded, "late"), codes.DeadlineExceeded, "DEADLINE_EXCEEDED", context.DeadlineExceeded},
		{"CANCELLED", status.Error(codes.Canceled, "stop"), codes.Canceled, "CANCELLED", context.Canceled},
		{"context error", context.DeadlineExceeded, codes.DeadlineExceeded, "DEADLINE_EXCEEDED", context.DeadlineExceeded},
		{"other domain", withInfo(t, codes.NotFound, "m", "other.example", "BLOB_UNKNOWN", nil), codes.NotFound, "BLOB_UNKNOWN", distribution.ErrBlobUnknown},
		{"code contradicts reason", withInfo(t, codes.InvalidArgument, "m", descriptor.Domain, "BLOB_UNKNOWN", nil), codes.InvalidArgument, "INVALID_ARGUMENT", nil},
		{"unknown reason", withInfo(t, codes.InvalidArgument, "m", descriptor.Domain, "NEW_REASON", nil), codes.InvalidArgument, "INVALID_ARGUMENT", nil},
		{"INTERNAL keeps its code", status.Error(codes.Internal, "boom"), codes.Internal, "UNKNOWN", nil},
		{"not a status", errors.New("plain"), codes.Unknown, "UNKNOWN", nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := descriptor.FromError(c.err)
			var e *descriptor.Error
			if !errors.As(err, &e) {
				t.Fatalf("not typed: %v", err)
			}
			if e.Code != c.code || e.Reason != c.reason {
				t.Fatalf("got %v %q, want %v %q", e.Code, e.Reason, c.code, c.reason)
			}
			for _, std := range standards {
				if got, want := errors.Is(err, std), std == c.is; got != want {
					t.Fatalf("errors.Is(%v, %v) = %v, want %v", err, std, got, want)
				}
			}
		})
	}
	if descriptor.FromError(nil) != nil || descriptor.FromStatus(status.New(codes.OK, "").Proto()) != nil {
		t.Fatal("OK is not an error")
	}
}

func TestErrorString(t *testing.T) {
	if got := descriptor.FromError(withInfo(t, codes.NotFound, "blob x unknown", descriptor.Domain, "BLOB_UNKNOWN", nil)).Error(); got != "BLOB_UNKNOWN: blob x unknown" {
		t.Fatal(got)
	}
	if got := descriptor.ErrBlobUnknown.Error(); got != "BLOB_UNKNOWN" {
		t.Fatal(got)
	}
}
