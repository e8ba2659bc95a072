package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/persistence"
)

// errInternal is what clients see of an unexpected error; the error itself
// is logged.
var errInternal = errors.New("rpc: internal error")

// invalid returns an invalid_argument error naming field.
func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// notFound returns a not_found error naming field.
func notFound(field, what, id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %s %q not found", field, what, id))
}

// codeOf maps a persistence error to a Connect code; ok is false for errors
// that are not the client's doing.
func codeOf(err error) (code connect.Code, ok bool) {
	switch {
	case errors.Is(err, persistence.ErrNotFound):
		return connect.CodeNotFound, true
	case errors.Is(err, persistence.ErrExists):
		return connect.CodeAlreadyExists, true
	case errors.Is(err, persistence.ErrInvalid):
		return connect.CodeInvalidArgument, true
	case errors.Is(err, persistence.ErrInUse):
		return connect.CodeFailedPrecondition, true
	case errors.Is(err, persistence.ErrTooLarge):
		return connect.CodeResourceExhausted, true
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled, true
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded, true
	}
	return connect.CodeUnknown, false
}

// toConnect turns err into the error a handler returns. Connect errors pass
// through; persistence errors get their code (see codeOf) and keep their
// message, which names the record; anything else is logged under op and
// becomes a bare internal error.
func toConnect(log *slog.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		return err
	}
	if code, ok := codeOf(err); ok {
		return connect.NewError(code, err)
	}
	log.Error("rpc: internal error", "op", op, "err", err)
	return connect.NewError(connect.CodeInternal, errInternal)
}
