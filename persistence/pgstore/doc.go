// Package pgstore is otafleet's shared store: the journal
// (persistence.EventStore), the registry with package blobs
// (persistence.Registry) and the transports' sessions
// (persistence.Sessions) in one PostgreSQL database, through
// github.com/jackc/pgx/v5. Every node of a fleet can use the same database;
// a Store is safe for concurrent use, and so are several Stores (in one
// process or many) on one database.
//
// # Schema
//
// The schema is a set of versioned SQL migrations embedded in the binary
// (migrations/*.sql), applied by Open with goose
// (github.com/pressly/goose/v3) under its advisory lock; the versions
// applied are in the schema_version table. Open refuses a database whose
// schema is newer than the newest this build knows (ErrSchema): an older
// otafleet must not write a schema it does not understand; a user that may
// not create or write the tables (a read-only user) fails Open with
// ErrPermission, and `otafleet store migrate` applies the migrations alone.
// IDs are text in the C collation, so that listings come in byte order as
// with Pebble.
//
//	streams(kind, id, active)            a row per stream ever written, with its active mark
//	events(kind, id, seq, body)          the journal; body is a persistence.EncodeEvent envelope
//	snapshots(kind, id, body)            persistence.EncodeSnapshot envelope
//	records(kind, id, key, body)         a stream's state area; persistence.EncodeRecord envelope
//	products, devices, groups, packages, tasks   the registry, a column per field; devices and
//	                                     packages reference their product (foreign keys)
//	blobs(id, gen, size, sha256, chunk_size), blob_chunks(gen, n, crc, data)   package files
//	sessions(transport, id, value, node) the transports' sessions, each held by a node ('' for every node's)
//	secrets(name, sealed)                the secrets every node shares (persistence.SharedSecrets), sealed
//	meta(name, value)                    the seal key's check value
//
// # Appends: fencing and group commit
//
// An append names the sequence number it expects (Append.Expected). The
// fence is the events' primary key (kind, id, seq): an append writes
// Expected+1, ... and fails with persistence.ErrConflict when another
// writer, in this process or another, wrote one of them, or is writing it
// (PostgreSQL makes the insert wait for the other transaction, and fails
// it if that commits). A stream's last sequence number is its last
// event's; each Store also keeps the heads it wrote or read lately (a
// lower bound of each stream's, since events are never deleted), so that
// an append expecting less than the known head conflicts at once and one
// expecting more, or of a stream not known, is checked against the head
// read from the events table first: no append can leave a gap. An append
// without events (records or a mark only) inserts a placeholder event at
// Expected+1 and deletes it in the same transaction, so that the same key
// fences it; no reader ever sees the placeholder. Two writers can never
// both win. (Up to schema version 2 every append also moved a head row in
// streams, which doubled the time of a group commit.)
//
// Appends are grouped: goroutines of a committer (Options.Pipelines of
// them, so that one batch is sent while another waits for its WAL flush)
// each take the appends waiting, at most Options.MaxBatch and at most one
// per stream (a stream is never in two batches at once), and write them
// with one statement (arrays unnested into a multi-row INSERT of the
// events, with data-modifying common table expressions for the records,
// the marks and the rows of new streams when the batch has some), which is
// one transaction. A batch is synced (its commit
// waits for the WAL flush) when one of its appends is. After a commit, the
// goroutine yields for a few microseconds to the appenders it answered, so
// that those that append again at once (an actor with more input) join
// the next batch instead of waiting behind it: the writers then share one
// WAL flush rather than splitting into two halves whose batches alternate,
// a flush each (GroupCommits counts the commits). A batch of NoSync
// appends only goes through connections with synchronous_commit off: it
// is visible at once, and its commit record is in the WAL before Append
// returns, but not flushed. This keeps the rule the engine relies on, that
// an unsynced append becomes durable no later than any synced append that
// follows it: the WAL is one sequence, and a synced commit waits until the
// WAL is flushed up to its own commit record, so past the commit record of
// every transaction that committed before it, in particular every unsynced
// append that had returned when the synced one was made. (PostgreSQL's WAL
// writer also flushes unsynced commits within wal_writer_delay on its
// own.)
//
// # Blobs
//
// A blob is streamed: WriteBlob writes 64 KiB chunks (each with its
// CRC-32C) in one transaction, about 1 MiB per round trip, and the header
// (size, SHA-256) last, so memory stays bounded and a failed, too large,
// cancelled or crashed write leaves nothing. A header names a generation
// (a sequence number) whose chunks a reader reads, a span of chunks per
// query, checking their CRC and length. DeleteBlob deletes the header at
// once and the chunks too unless a Blob of this process still reads them;
// then the last reader's Close deletes them (or the next Open, should the
// process end first).
//
// # Credentials and sessions
//
// Device secrets and PSKs are sealed with persistence.Sealer under
// Options.SealKey, which is required: the key never lives in the shared
// database, which keeps only its check value (a wrong key fails Open with
// ErrSealKey). Options.PreviousSealKey with Options.SealKey rotates the
// key: Open re-seals every credential in one transaction, under a lock on
// the check value's row (so nodes starting together re-seal once), and a
// crash leaves all under the old key or all under the new one; the shared
// secrets (persistence.SharedSecrets: the API token, the download token key,
// the download TLS certificate of a cluster) are sealed and re-sealed with
// them. Sessions are written with synchronous_commit off, like
// pebblestore's unsynced session writes: they survive a crash of otafleet,
// not necessarily one of PostgreSQL. Each session belongs to the node that
// holds it (persistence.NodeSessions): a node lists only its own, and
// DropNodeSessions deletes those of a node that is gone.
package pgstore
