// Package persistence is otafleet's durable state: the event journal every
// actor appends to (EventStore), the registry of products, devices, groups
// and packages (Registry), and the key and envelope encodings they share.
// Implementations live in subpackages: pebblestore (the embedded default,
// github.com/cockroachdb/pebble/v2), pgstore (PostgreSQL, a store the nodes
// of a fleet share) and memstore (in memory, for tests); the contract suite
// in persistencetest is what each must pass.
//
// A journal is a stream per actor, identified by kind and ID. Its events are
// stored under keys
//
//	<kind>/<id>/<seq as 8-byte big-endian>
//
// so that byte order is sequence order, each value a versioned envelope with a
// CRC (see EncodeEvent). Append writes one batch per call, synced before it
// returns: an acknowledged append survives a crash. An append marked NoSync
// returns before its batch is synced and becomes durable with the next synced
// one; a crash may lose it (and the unsynced ones after it), never a synced one. Snapshots bound replay
// time: Load after a snapshot's sequence number replays only the tail.
// Records are the other way to bound it: keyed entries of a stream's state
// area, written (or deleted) in the same batch as an append's events, so an
// actor can keep its state as it changes, an entry per part, and read it
// back whole with LoadRecords; a batch's records are never seen without its
// events, nor its events without its records. The
// active mark of a stream (set and cleared in the same batch as its events)
// lets recovery find the actors with work in flight without scanning every
// registered device.
//
// The registry (see Registry) keeps products, devices (their credentials
// write-only), groups and package metadata as records listed a page at a
// time by ID, and package files as blobs streamed in and read at any offset.
// Store is both interfaces together: what every implementation provides.
//
// Implementations are safe for concurrent use; appends to different streams
// from many goroutines are grouped into shared synced commits.
package persistence

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors. Implementations wrap them; match with errors.Is.
var (
	// ErrConflict: Append's Expected is not the stream's last sequence number.
	ErrConflict = errors.New("persistence: append conflict")
	// ErrCorrupt: a stored entry cannot be decoded. The error (a *CorruptError)
	// names the key; the store must not be used until it is repaired.
	ErrCorrupt = errors.New("persistence: corrupt entry")
	// ErrNotFound: no such record.
	ErrNotFound = errors.New("persistence: not found")
	// ErrExists: a record with that ID exists already.
	ErrExists = errors.New("persistence: already exists")
	// ErrInvalid: an ID or record that cannot be stored (empty, too long, '/').
	ErrInvalid = errors.New("persistence: invalid")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("persistence: store closed")
	// ErrUnavailable: the store cannot be reached now (its database server
	// is down or restarting, the connection was lost, a call timed out);
	// the data is not at fault, and the same call may succeed later. An
	// append that fails with it may have been written or not: read the
	// stream again before writing to it.
	ErrUnavailable = errors.New("persistence: store unavailable")
)

// Pinger is a store that can be unavailable for a while (a database
// server): Ping reports whether it answers now, with an error wrapping
// ErrUnavailable when it does not.
type Pinger interface {
	Ping(ctx context.Context) error
}

// CorruptError reports an entry that does not decode, with its key.
type CorruptError struct {
	Key    []byte
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("persistence: corrupt entry at key %q: %s", e.Key, e.Reason)
}

// Unwrap makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// Kind is the kind of actor a stream belongs to: the first key component.
type Kind string

// The journaled actor kinds.
const (
	KindDevice Kind = "d"
	KindCell   Kind = "c"
	KindTask   Kind = "t"
)

// MaxIDLen bounds stream and record IDs (spec 5.1: device IDs ≤ 128).
const MaxIDLen = 128

// Stream identifies one actor's journal.
type Stream struct {
	Kind Kind
	ID   string
}

func (s Stream) String() string { return string(s.Kind) + "/" + s.ID }

// ValidateID reports whether id can be part of a key: non-empty, at most
// MaxIDLen bytes, no '/' and no control characters.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty ID", ErrInvalid)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: ID %.20q... is longer than %d bytes", ErrInvalid, id, MaxIDLen)
	case strings.ContainsAny(id, "/"):
		return fmt.Errorf("%w: ID %q contains '/'", ErrInvalid, id)
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: ID %q contains a control character", ErrInvalid, id)
		}
	}
	return nil
}

// ValidateDeviceID reports whether id can name a device: a valid ID (see
// ValidateID) in valid UTF-8, with no MQTT topic wildcard ('+', '#': a device
// ID is a topic level) and no character of the Unicode categories Cc
// (controls) and Cf (format characters such as U+202E, which reorder or hide
// text in logs and consoles). Device IDs are the only IDs clients choose;
// every other ID is assigned by the server. The rule applies where a device
// is created and where a transport takes a device ID from the wire; stored
// IDs are read back with ValidateID alone.
func ValidateDeviceID(id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%w: device ID %q is not valid UTF-8", ErrInvalid, id)
	}
	if i := strings.IndexAny(id, "+#"); i >= 0 {
		return fmt.Errorf("%w: device ID %q contains %q (an MQTT topic wildcard)", ErrInvalid, id, id[i])
	}
	for _, r := range id {
		if unicode.In(r, unicode.Cc, unicode.Cf) {
			return fmt.Errorf("%w: device ID %q contains the control or format character %U", ErrInvalid, id, r)
		}
	}
	return nil
}

// Validate checks that k is one of the journaled kinds.
func (k Kind) Validate() error {
	switch k {
	case KindDevice, KindCell, KindTask:
		return nil
	}
	return fmt.Errorf("%w: stream kind %q", ErrInvalid, k)
}

// Validate checks the stream's kind and ID.
func (s Stream) Validate() error {
	if err := s.Kind.Validate(); err != nil {
		return err
	}
	return ValidateID(s.ID)
}

// Event is one journaled event: the envelope's fields. Type names the payload's
// message (a number that only ever grows, see EventType*), Version its schema
// version, At the event time (Unix nanoseconds) and Payload its protobuf bytes.
type Event struct {
	Seq     uint64
	Type    uint32
	Version uint32
	At      int64
	Payload []byte
}

// Envelope type numbers: one per journaled message type. They only ever grow.
const (
	EventTypeDevice   uint32 = 1 // messages.DeviceEvent
	EventTypeCell     uint32 = 2 // messages.CellEvent
	EventTypeTask     uint32 = 3 // messages.TaskEvent
	SnapshotTypeState uint32 = 100
	RecordTypeState   uint32 = 150 // the base of actors' record types
)

// Snapshot is an actor's state as of event Seq (included), encoded by the
// actor; Load after Seq replays the rest.
type Snapshot struct {
	Seq     uint64
	Type    uint32
	Version uint32
	Payload []byte
}

// Append is one atomic write to one stream, synced unless NoSync is set.
type Append struct {
	Stream Stream
	// Expected is the sequence number of the stream's last event as the
	// writer knows it (0 for an empty stream). Events get Expected+1, ...;
	// a different last sequence number fails with ErrConflict.
	Expected uint64
	// Events to append; their Seq fields are ignored and assigned.
	Events []Event
	// Active, when set, sets (true) or clears (false) the stream's active mark
	// in the same batch.
	Active *bool
	// Records are written to (or deleted from) the stream's state area in
	// the same batch as Events; an append may carry records and no events.
	Records []Record
	// NoSync lets Append return before the batch is durable. The batch is
	// still atomic and ordered: it is visible to Load and LastSeq at once,
	// and it becomes durable with the next synced append of any stream (or
	// snapshot), which a crash cannot keep without it. A crash before that
	// may lose it, and with it any later unsynced batch, but never a batch
	// without the ones before it. Only events the writer can do without or
	// derive again after a crash may be written so (see the actors'
	// journal rules); nothing acknowledged to anyone may rest on them.
	NoSync bool
}

// Validate checks an append's stream and records (ErrInvalid), what every
// store checks before it writes.
func (a Append) Validate() error {
	if err := a.Stream.Validate(); err != nil {
		return err
	}
	for _, r := range a.Records {
		if err := r.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// MaxRecordKeyLen bounds the key of a Record.
const MaxRecordKeyLen = 64

// Record is one entry of a stream's state area: a value under a key the
// writer chooses (1 to MaxRecordKeyLen bytes, any bytes), in an envelope with
// a type and version like an event's. Keys of different streams never mix.
// Delete removes the entry with that key (Type, Version and Payload unused).
type Record struct {
	Key     []byte
	Type    uint32
	Version uint32
	Payload []byte
	Delete  bool
}

// Validate checks the record's key.
func (r Record) Validate() error {
	if len(r.Key) == 0 || len(r.Key) > MaxRecordKeyLen {
		return fmt.Errorf("%w: record key of %d bytes (1..%d)", ErrInvalid, len(r.Key), MaxRecordKeyLen)
	}
	return nil
}

// AppendCounter is implemented by stores that count their appends: how many
// successful Append calls were synced and how many were marked NoSync since
// the store was opened. The server exports them as metrics.
type AppendCounter interface {
	Appends() (synced, unsynced uint64)
}

// EventStore is the journal.
type EventStore interface {
	// Append writes a's events (with its records and mark) in one batch and returns once the
	// batch is durable (or, with a.NoSync, once it is written in order). It
	// returns the new last sequence number.
	Append(ctx context.Context, a Append) (uint64, error)
	// Load calls fn with every event of s whose Seq > after, in order. A
	// corrupt entry stops it with a *CorruptError.
	Load(ctx context.Context, s Stream, after uint64, fn func(Event) error) error
	// LastSeq returns the sequence number of s's last event (0 if none).
	LastSeq(ctx context.Context, s Stream) (uint64, error)
	// SaveSnapshot stores snap as s's snapshot (replacing an older one), synced.
	SaveSnapshot(ctx context.Context, s Stream, snap Snapshot) error
	// LoadSnapshot returns s's snapshot; false when it has none.
	LoadSnapshot(ctx context.Context, s Stream) (Snapshot, bool, error)
	// LoadRecords calls fn with every record of s's state area in key byte
	// order (Delete unset; the payload is fn's to keep). A record that does
	// not decode stops it with a *CorruptError.
	LoadRecords(ctx context.Context, s Stream, fn func(Record) error) error
	// Active calls fn with the ID of every stream of kind whose active mark is set.
	Active(ctx context.Context, kind Kind, fn func(id string) error) error
	// Close releases the store. Later calls fail with ErrClosed.
	Close() error
}
