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

// NodeSessions is implemented by a store that the nodes of a cluster share
// (pgstore): each session belongs to the node that holds it, so that a
// node restores only its own after a restart and the sessions of a node
// that is gone can be dropped rather than restored by every other node.
// A node is named by its advertised address (clusterconfig.Config.Node).
// The store's own Sessions methods are those of node "": the sessions no
// node holds alone, such as download handles, which every node serves.
//
// A session has one holder: putting it through another node's view moves
// it there (a device that registers again with another node), and the
// former holder no longer reads, lists or deletes it.
type NodeSessions interface {
	// NodeSessions is node's view of the sessions: PutSession makes node
	// the session's holder, GetSession, DeleteSession and ListSessions see
	// only the sessions node holds. NodeSessions("") is the store's own
	// Sessions.
	NodeSessions(node string) Sessions
	// DropNodeSessions deletes every session node holds and returns how
	// many there were: for a node that left the cluster, whose devices
	// connect again elsewhere. Node "" is ErrInvalid (its sessions are
	// every node's).
	DropNodeSessions(ctx context.Context, node string) (int, error)
	// SessionNodes calls fn with each node that holds a session, "" first
	// when any session is every node's, then in byte order.
	SessionNodes(ctx context.Context, fn func(node string) error) error
}

// SessionsOf returns the sessions of node in s: s itself for node "" (a
// node alone, or the sessions every node shares), s.NodeSessions(node) when
// s implements NodeSessions, and ErrInvalid otherwise: a store that keeps
// no holder (Pebble, memstore) belongs to one node, and the node is
// implicit.
func SessionsOf(s Sessions, node string) (Sessions, error) {
	if node == "" {
		return s, nil
	}
	ns, ok := s.(NodeSessions)
	if !ok {
		return nil, fmt.Errorf("%w: sessions of node %q: this store keeps the sessions of one node (a cluster's nodes share a PostgreSQL store)", ErrInvalid, node)
	}
	if err := ValidateID(node); err != nil {
		return nil, fmt.Errorf("session node: %w", err)
	}
	return ns.NodeSessions(node), nil
}
