package descriptor

import (
	"context"
	"errors"
	"fmt"

	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain is the google.rpc.ErrorInfo domain of every error the service sends.
const Domain = "descriptor.v1"

// The reasons of the service's error table, as sent in google.rpc.ErrorInfo.
const (
	ReasonBlobUnknown           = "BLOB_UNKNOWN"
	ReasonDigestInvalidFormat   = "DIGEST_INVALID_FORMAT"
	ReasonDigestInvalidLength   = "DIGEST_INVALID_LENGTH"
	ReasonDigestUnsupported     = "DIGEST_UNSUPPORTED"
	ReasonDescriptorInvalid     = "DESCRIPTOR_INVALID"
	ReasonRepositoryNameInvalid = "REPOSITORY_NAME_INVALID"
	ReasonBatchTooLarge         = "BATCH_TOO_LARGE"
	ReasonRequestInvalid        = "REQUEST_INVALID"
	ReasonUnsupported           = "UNSUPPORTED"
	ReasonBackendUnavailable    = "BACKEND_UNAVAILABLE"
	ReasonServerDraining        = "SERVER_DRAINING"
	ReasonUnauthenticated       = "UNAUTHENTICATED"
	ReasonPermissionDenied      = "PERMISSION_DENIED"
	ReasonResourceExhausted     = "RESOURCE_EXHAUSTED"
)

// Reasons the client gives a status that carries no ErrorInfo of the service (a
// deadline that passed, a cancelled context, a connection that failed, an
// interceptor's own status): the gRPC code decides.
const (
	ReasonInvalidArgument  = "INVALID_ARGUMENT"
	ReasonUnavailable      = "UNAVAILABLE"
	ReasonDeadlineExceeded = "DEADLINE_EXCEEDED"
	ReasonCancelled        = "CANCELLED"
	ReasonUnknown          = "UNKNOWN"
)

// Error is every error a call returns: the gRPC code, the ErrorInfo reason, the
// status message and the ErrorInfo metadata. Use errors.As to read it:
//
//	var e *descriptor.Error
//	if errors.As(err, &e) && e.Reason == descriptor.ReasonBatchTooLarge { ... }
//
// errors.Is matches the values Go registry code already checks
// (distribution.ErrBlobUnknown, distribution.ErrUnsupported, the three digest
// errors of go-digest, context.DeadlineExceeded, context.Canceled), and the
// sentinels of this package (ErrServerDraining, ...) by reason.
type Error struct {
	Code     codes.Code
	Reason   string
	Message  string
	Metadata map[string]string
}

// Error implements error: "REASON: message".
func (e *Error) Error() string {
	if e.Message == "" || e.Message == e.Reason {
		return e.Reason
	}
	return e.Reason + ": " + e.Message
}

// Unwrap returns the value of distribution, go-digest or context this error
// stands for, so that errors.Is(err, distribution.ErrBlobUnknown) holds.
func (e *Error) Unwrap() error {
	return standard[e.Reason]
}

// Is reports whether target is a sentinel *Error of this package with the same
// reason (a sentinel has no message).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Reason == e.Reason && (t.Code == e.Code || t.Code == codes.OK)
}

// GRPCStatus returns the status the error was made from, with its ErrorInfo, so
// status.FromError and status.Code work on it.
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.Code, e.Message)
	if e.Reason == "" || table[e.Reason] != e.Code {
		return st
	}
	withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: e.Reason, Domain: Domain, Metadata: e.Metadata})
	if err != nil {
		return st
	}
	return withInfo
}

// Temporary reports whether trying again later may succeed: UNAVAILABLE,
// DEADLINE_EXCEEDED, CANCELLED (also what a stopping server answers the calls
// it had not yet dispatched) and RESOURCE_EXHAUSTED.
func (e *Error) Temporary() bool {
	switch e.Code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted:
		return true
	}
	return false
}

func sentinel(code codes.Code, reason string) *Error { return &Error{Code: code, Reason: reason} }

// Sentinels, one per reason, for errors.Is. Each matches any *Error of its
// reason whatever its message.
var (
	ErrBlobUnknown           = sentinel(codes.NotFound, ReasonBlobUnknown)
	ErrDigestInvalidFormat   = sentinel(codes.InvalidArgument, ReasonDigestInvalidFormat)
	ErrDigestInvalidLength   = sentinel(codes.InvalidArgument, ReasonDigestInvalidLength)
	ErrDigestUnsupported     = sentinel(codes.InvalidArgument, ReasonDigestUnsupported)
	ErrDescriptorInvalid     = sentinel(codes.InvalidArgument, ReasonDescriptorInvalid)
	ErrRepositoryNameInvalid = sentinel(codes.InvalidArgument, ReasonRepositoryNameInvalid)
	ErrBatchTooLarge         = sentinel(codes.InvalidArgument, ReasonBatchTooLarge)
	ErrRequestInvalid        = sentinel(codes.InvalidArgument, ReasonRequestInvalid)
	ErrUnsupported           = sentinel(codes.Unimplemented, ReasonUnsupported)
	ErrBackendUnavailable    = sentinel(codes.Unavailable, ReasonBackendUnavailable)
	ErrServerDraining        = sentinel(codes.Unavailable, ReasonServerDraining)
	ErrUnauthenticated       = sentinel(codes.Unauthenticated, ReasonUnauthenticated)
	ErrPermissionDenied      = sentinel(codes.PermissionDenied, ReasonPermissionDenied)
	ErrResourceExhausted     = sentinel(codes.ResourceExhausted, ReasonResourceExhausted)
)

// table is the service's error table: reason -> code. One reason, one code.
var table = map[string]codes.Code{
	ReasonBlobUnknown:           codes.NotFound,
	ReasonDigestInvalidFormat:   codes.InvalidArgument,
	ReasonDigestInvalidLength:   codes.InvalidArgument,
	ReasonDigestUnsupported:     codes.InvalidArgument,
	ReasonDescriptorInvalid:     codes.InvalidArgument,
	ReasonRepositoryNameInvalid: codes.InvalidArgument,
	ReasonBatchTooLarge:         codes.InvalidArgument,
	ReasonRequestInvalid:        codes.InvalidArgument,
	ReasonUnsupported:           codes.Unimplemented,
	ReasonBackendUnavailable:    codes.Unavailable,
	ReasonServerDraining:        codes.Unavailable,
	ReasonUnauthenticated:       codes.Unauthenticated,
	ReasonPermissionDenied:      codes.PermissionDenied,
	ReasonResourceExhausted:     codes.ResourceExhausted,
}

// byCode names a status without (a trusted) ErrorInfo by its code alone.
var byCode = map[codes.Code]string{
	codes.NotFound:          ReasonBlobUnknown,
	codes.InvalidArgument:   ReasonInvalidArgument,
	codes.Unimplemented:     ReasonUnsupported,
	codes.Unavailable:       ReasonUnavailable,
	codes.DeadlineExceeded:  ReasonDeadlineExceeded,
	codes.Canceled:          ReasonCancelled,
	codes.Unauthenticated:   ReasonUnauthenticated,
	codes.PermissionDenied:  ReasonPermissionDenied,
	codes.ResourceExhausted: ReasonResourceExhausted,
}

// standard is what Unwrap returns per reason.
var standard = map[string]error{
	ReasonBlobUnknown:         distribution.ErrBlobUnknown,
	ReasonDigestInvalidFormat: digest.ErrDigestInvalidFormat,
	ReasonDigestInvalidLength: digest.ErrDigestInvalidLength,
	ReasonDigestUnsupported:   digest.ErrDigestUnsupported,
	ReasonUnsupported:         distribution.ErrUnsupported,
	ReasonDeadlineExceeded:    context.DeadlineExceeded,
	ReasonCancelled:           context.Canceled,
}

// Standard returns the value of distribution or go-digest that err stands for
// (distribution.ErrBlobUnknown, distribution.ErrUnsupported,
// digest.ErrDigestInvalidFormat, digest.ErrDigestInvalidLength,
// digest.ErrDigestUnsupported), itself, for code that compares with ==; any
// other error is returned unchanged.
func Standard(err error) error {
	var e *Error
	if errors.As(err, &e) {
		switch e.Reason {
		case ReasonBlobUnknown, ReasonUnsupported,
			ReasonDigestInvalidFormat, ReasonDigestInvalidLength, ReasonDigestUnsupported:
			return standard[e.Reason]
		}
	}
	return err
}

// FromStatus returns the typed error for a google.rpc.Status (a BatchStat item's,
// or any call's), nil for OK. The reason is trusted only when the ErrorInfo is
// of this service's domain and the reason's code is the status's code; otherwise
// the code alone decides.
func FromStatus(s *spb.Status) error {
	return fromStatus(status.FromProto(s))
}

// FromError returns the typed error for an error a gRPC call returned; nil for
// nil, and an *Error already typed as it is.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: codes.DeadlineExceeded, Reason: ReasonDeadlineExceeded, Message: err.Error()}
	case errors.Is(err, context.Canceled):
		return &Error{Code: codes.Canceled, Reason: ReasonCancelled, Message: err.Error()}
	}
	st, ok := status.FromError(err)
	if !ok {
		return &Error{Code: codes.Unknown, Reason: ReasonUnknown, Message: err.Error()}
	}
	return fromStatus(st)
}

func fromStatus(st *status.Status) error {
	if st.Code() == codes.OK {
		return nil
	}
	e := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != Domain {
			continue
		}
		if code, known := table[info.GetReason()]; known && code == st.Code() {
			e.Reason = info.GetReason()
			if len(info.GetMetadata()) > 0 {
				e.Metadata = info.GetMetadata()
			}
		}
		break
	}
	if e.Reason == "" {
		if r, ok := byCode[st.Code()]; ok {
			e.Reason = r
		} else {
			e.Reason = ReasonUnknown
		}
	}
	if e.Message == "" {
		e.Message = e.Reason
	}
	return e
}

func newError(reason, format string, args ...any) *Error {
	return &Error{Code: table[reason], Reason: reason, Message: fmt.Sprintf(format, args...)}
}
