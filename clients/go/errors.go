package musicgw

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is every failure the gateway reports: the gRPC code and message, with the details it
// puts in the grpc-status-details-bin trailer (AIP-193). A detail is nil when it was not sent.
//
// Test for a kind of failure with errors.Is(err, musicgw.ErrNotFound) and friends, and read the
// details with errors.As(err, &e) where e is a *musicgw.Error.
type Error struct {
	Code         codes.Code
	Message      string
	ErrorInfo    *errdetails.ErrorInfo
	RetryInfo    *errdetails.RetryInfo
	QuotaFailure *errdetails.QuotaFailure
	BadRequest   *errdetails.BadRequest
	status       *status.Status
}

// Sentinels for errors.Is, one per code a caller acts on.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrOutOfRange         = &Error{Code: codes.OutOfRange}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
	ErrDeadlineExceeded   = &Error{Code: codes.DeadlineExceeded}
	ErrInternal           = &Error{Code: codes.Internal}
)

// ErrChecksumMismatch: a downloaded file differs from the size or SHA-256 the gateway reported.
var ErrChecksumMismatch = errors.New("musicgw: download does not match its checksum")

func (e *Error) Error() string {
	text := fmt.Sprintf("musicgw: %s: %s", e.Code, e.Message)
	if r := e.Reason(); r != "" {
		text += " [" + r + "]"
	}
	return text
}

// Is matches a sentinel of the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Message == "" && t.Code == e.Code
}

// GRPCStatus lets status.Code and status.FromError see through the wrapper.
func (e *Error) GRPCStatus() *status.Status {
	if e.status != nil {
		return e.status
	}
	return status.New(e.Code, e.Message)
}

// Reason is ErrorInfo.reason (e.g. "REQUEST_ID_REUSED"), empty without ErrorInfo.
func (e *Error) Reason() string { return e.ErrorInfo.GetReason() }

// FieldViolations is BadRequest as field -> description.
func (e *Error) FieldViolations() map[string]string {
	out := map[string]string{}
	for _, v := range e.BadRequest.GetFieldViolations() {
		out[v.GetField()] = v.GetDescription()
	}
	return out
}

// fromRPC turns a gRPC error into an *Error (nil stays nil; non-gRPC errors pass through).
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	out := &Error{Code: s.Code(), Message: s.Message(), status: s}
	for _, d := range s.Details() {
		switch v := d.(type) {
		case *errdetails.ErrorInfo:
			out.ErrorInfo = v
		case *errdetails.RetryInfo:
			out.RetryInfo = v
		case *errdetails.QuotaFailure:
			out.QuotaFailure = v
		case *errdetails.BadRequest:
			out.BadRequest = v
		}
	}
	return out
}
