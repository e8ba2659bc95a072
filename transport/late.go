package transport

import (
	"context"
	"errors"
	"sync/atomic"

	"github.com/otafleet/otafleet/messages"
)

// Errors of LateUplinks and LateDownlinks while nothing is set.
var (
	ErrNoUplinks   = errors.New("transport: no Uplinks set (LateUplinks.Set)")
	ErrNoDownlinks = errors.New("transport: no Downlinks set (LateDownlinks.Set)")
)

// late is a value of interface type T set after its holder was handed out;
// the zero value holds nothing.
type late[T any] struct{ p atomic.Pointer[T] }

// set makes v the value; a nil v unsets it.
func (l *late[T]) set(v T) {
	if any(v) == nil {
		l.p.Store(nil)
		return
	}
	l.p.Store(&v)
}

// get returns the value and whether there is one.
func (l *late[T]) get() (T, bool) {
	if p := l.p.Load(); p != nil {
		return *p, true
	}
	var zero T
	return zero, false
}

// LateUplinks is an Uplinks whose target is set after the adapter that
// delivers to it is built: the engine needs its Downlinks when it is built,
// so an adapter that exists first takes a LateUplinks and the engine is Set
// into it once built. Set again hands the same adapter to another engine (one
// rebuilt after a simulated crash); Set(nil) makes deliveries fail again.
// The zero value is ready to use: until Set, Deliver returns ErrNoUplinks.
// It is safe for concurrent use.
type LateUplinks struct{ up late[Uplinks] }

var _ Uplinks = (*LateUplinks)(nil)

// Set makes later deliveries go to up; nil unsets it.
func (l *LateUplinks) Set(up Uplinks) { l.up.set(up) }

// Deliver hands the input to the Uplinks set last, or returns ErrNoUplinks.
func (l *LateUplinks) Deliver(ctx context.Context, deviceID string, in *messages.DeviceInput) error {
	up, ok := l.up.get()
	if !ok {
		return ErrNoUplinks
	}
	return up.Deliver(ctx, deviceID, in)
}

// LateDownlinks is a Downlinks whose target is set after the engine that
// sends through it is built: the engine takes a LateDownlinks, and the
// adapters, which need the engine as their Uplinks, are Set into it once
// built. The zero value is ready to use: until Set (or after Set(nil)), Send
// returns ErrNoDownlinks and RevokeToken does nothing (no adapter handed out
// a token to revoke). It is safe for concurrent use.
type LateDownlinks struct{ down late[Downlinks] }

var _ Downlinks = (*LateDownlinks)(nil)

// Set makes later downlinks go to d; nil unsets it.
func (l *LateDownlinks) Set(d Downlinks) { l.down.set(d) }

// Send hands dl to the Downlinks set last, or returns ErrNoDownlinks.
func (l *LateDownlinks) Send(ctx context.Context, dl *messages.Downlink) error {
	d, ok := l.down.get()
	if !ok {
		return ErrNoDownlinks
	}
	return d.Send(ctx, dl)
}

// RevokeToken hands r to the Downlinks set last; with none, it does nothing.
func (l *LateDownlinks) RevokeToken(ctx context.Context, r *messages.RevokeToken) error {
	d, ok := l.down.get()
	if !ok {
		return nil
	}
	return d.RevokeToken(ctx, r)
}
