package persistence

import "context"

// Lister is implemented by stores that can list everything they hold, beyond
// what the interfaces' own listings reach: the streams of the journal, the
// blobs, and the transports that have sessions. It is what copying a whole
// store (`otafleet store copy`) walks; the server does not need it.
//
// Each call sees the store as it is while it runs: a store being written
// meanwhile may or may not show the writes.
type Lister interface {
	// Streams calls fn once with every stream that has events, a snapshot
	// or records (a stream with none of them may be listed too), in no
	// particular order. Streams that only have an active mark are found
	// with EventStore.Active.
	Streams(ctx context.Context, fn func(Stream) error) error
	// Blobs calls fn with the ID of every blob that WriteBlob completed,
	// in byte order.
	Blobs(ctx context.Context, fn func(id string) error) error
	// SessionTransports calls fn with the name of every transport that has
	// sessions (see Sessions), in byte order.
	SessionTransports(ctx context.Context, fn func(transport string) error) error
}
