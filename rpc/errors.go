package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"connectrpc.com/connect"

	"github.com/otafleet/otafleet/actors"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/persistence"
)

// errInternal is what clients see of an unexpected error; the error itself
// is logged.
var errInternal = errors.New("internal error (the server's log has the details)")

// invalid returns an invalid_argument error naming field.
func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

// notFound returns a not_found error naming field.
func notFound(field, what, id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s: %s %q not found", field, what, id))
}

// kinds are the sentinel errors of the layers below that reach clients:
// each one's Connect code, and what a message says when the sentinel is all
// there is to it. Clients never read a sentinel's own text (its Go package
// and kind, "persistence: not found: "): the code says the kind, the rest of
// the message what (see plainErrors).
var kinds = []struct {
	err   error
	code  connect.Code
	alone string
}{
	{persistence.ErrNotFound, connect.CodeNotFound, "not found"},
	{persistence.ErrExists, connect.CodeAlreadyExists, "already exists"},
	{persistence.ErrInvalid, connect.CodeInvalidArgument, "invalid"},
	{persistence.ErrInUse, connect.CodeFailedPrecondition, "in use"},
	{persistence.ErrTooLarge, connect.CodeResourceExhausted, "too large"},
	{persistence.ErrUnavailable, connect.CodeUnavailable, "the store is unavailable (try again)"},
	{taskfsm.ErrInvalidInput, connect.CodeInvalidArgument, "invalid input"},
	{taskfsm.ErrInvalidTransition, connect.CodeFailedPrecondition, "not allowed now"},
	{actors.ErrNotFound, connect.CodeNotFound, "not found"},
	{actors.ErrClosed, connect.CodeUnavailable, "the server is shutting down"},
	{actors.ErrTimeout, connect.CodeDeadlineExceeded, "the server did not answer in time"},
	{context.Canceled, connect.CodeCanceled, "canceled"},
	{context.DeadlineExceeded, connect.CodeDeadlineExceeded, "deadline exceeded"},
}

// codeOf maps an error of a layer below to a Connect code (see kinds); ok
// is false for errors that are not the client's doing.
func codeOf(err error) (code connect.Code, ok bool) {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.code, true
		}
	}
	return connect.CodeUnknown, false
}

// toConnect turns err into the error a handler returns. Connect errors pass
// through; errors of the layers below get their code (see codeOf) and keep
// their message, which names the record; anything else is logged under op
// and becomes a bare internal error.
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

// plainText is a message without the sentinel texts of kinds.
func plainText(msg string) string {
	for _, k := range kinds {
		t := k.err.Error()
		if msg == t {
			return k.alone
		}
		msg = strings.ReplaceAll(msg, t+": ", "")
	}
	return msg
}

// plainErrors is the interceptor that words every error a handler returns
// for its client: the message without the sentinel texts of the layers
// below (plainText), the code, metadata and details as they were.
type plainErrors struct{}

func (plainErrors) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		res, err := next(ctx, req)
		return res, plainError(err)
	}
}

func (plainErrors) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (plainErrors) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return plainError(next(ctx, conn))
	}
}

// plainError is err with its message worded by plainText.
func plainError(err error) error {
	ce := new(connect.Error)
	if !errors.As(err, &ce) {
		return err
	}
	msg := plainText(ce.Message())
	if msg == ce.Message() {
		return err
	}
	out := connect.NewError(ce.Code(), &worded{msg: msg, err: ce.Unwrap()})
	for k, v := range ce.Meta() {
		out.Meta()[k] = v
	}
	for _, d := range ce.Details() {
		out.AddDetail(d)
	}
	return out
}

// worded is err with another message.
type worded struct {
	msg string
	err error
}

func (w *worded) Error() string { return w.msg }
func (w *worded) Unwrap() error { return w.err }
