package persistence

import (
	"context"
	"fmt"
)

// Sessions keeps what a transport needs to reach its devices again after the
// server restarts: for LwM2M over plain UDP, each device's registration (its
// address, registration ID, lifetime and binding), so a restarted server can
// send the recovered engine's requests at once instead of waiting for every
// device's next registration update, which may be hours away; for the
// package download server (transport/download), the grant of each short
// download handle in a Package URI, by handle. The value is the transport's
// own encoding; the store checks only its integrity. The ID is a device ID,
// or another key the transport makes that passes ValidateID.
//
// Session writes are not synced: they survive a crash of the process (the
// kernel has them), not necessarily a power loss. A session lost that way
// only costs the device a new registration, which is what a device does when
// its server does not know it (LwM2M's 4.04 on an update).
type Sessions interface {
	// PutSession creates or replaces the session of device id on transport.
	PutSession(ctx context.Context, transport, id string, value []byte) error
	// GetSession returns the session of id on transport; ErrNotFound when
	// there is none.
	GetSession(ctx context.Context, transport, id string) ([]byte, error)
	// DeleteSession removes it; removing a missing session is not an error.
	DeleteSession(ctx context.Context, transport, id string) error
	// ListSessions calls fn with every session of transport, by ID. The value
	// is only valid during the call.
	ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error
}

// ValidateSessionKey checks a session's transport name and device ID.
func ValidateSessionKey(transport, id string) error {
	if err := ValidateID(transport); err != nil {
		return fmt.Errorf("session transport: %w", err)
	}
	if err := ValidateID(id); err != nil {
		return fmt.Errorf("session: %w", err)
	}
	return nil
}
