// Package pebblestore is otafleet's embedded store: the journal
// (persistence.EventStore) and the registry with package blobs
// (persistence.Registry) in one Pebble database
// (github.com/cockroachdb/pebble/v2). A Store is safe for concurrent use.
//
// # Keys
//
//	e/<kind>/<id>/<seq:8 BE>   event (persistence.EncodeEvent envelope)
//	s/<kind>/<id>              snapshot (persistence.EncodeSnapshot envelope)
//	a/<kind>/<id>              active mark (empty value)
//	k/<kind>/<id>/<key>        record of a stream's state area (persistence.EncodeRecord
//	                           envelope), written in the batch of an Append
//	r/p/<id>                   product      \
//	r/d/<id>                   device        |
//	r/g/<id>                   group         | registrypb record inside the
//	r/k/<id>                   package       | persistence envelope (types
//	r/b/<id>                   blob header   | 200-205, version 1); a blob
//	r/t/<id>                   task         /  header is written last
//	r/w/<id>                   blob write in progress (empty value)
//	r/i/d/<product>/<device>   index: the product's devices (empty value)
//	r/i/k/<product>/<package>  index: the product's packages (empty value)
//	b/<id>/<chunk:8 BE>        blob chunk: CRC-32C (4 bytes, little-endian) + up to 64 KiB
//	t/<transport>/<id>         a transport's session of a device (its value inside the
//	                           persistence envelope, type 206, version 1)
//	m/format                   store format (uvarint; this build writes and reads 1)
//	m/seal                     1 + 32-byte seal key, or 2 + 32-byte key check
//
// # Writes
//
// Append and SaveSnapshot write one batch committed with pebble.Sync
// (pebble.NoSync for an Append marked NoSync: the WAL keeps batches in
// order, so the next synced commit makes it durable too). They take a lock
// per stream (striped) only to check Expected against the stream's last
// sequence number, so appends to different streams run concurrently and
// Pebble groups their WAL syncs (group commit). The stripe keeps the last
// sequence number of the streams it wrote lately (a bounded number, dropped
// when a stream's active mark is cleared or a commit fails), so the check
// reads the stream's last key only on a miss. Appends counts the synced and
// unsynced appends. Registry writes take one
// registry lock (they check references) and are synced too. Sessions
// (persistence.Sessions) are written unsynced: they must survive a crash of
// the process, which leaves them in the kernel, and losing one to a power cut
// only makes the device register again.
//
// A blob is streamed: chunks go out in unsynced batches of about 1 MiB under
// an r/w/<id> marker, so memory stays bounded whatever the file size; the
// final synced batch writes the header and drops the marker. A failed, too
// large or cancelled write deletes its chunks; Open deletes the chunks of
// any marker left by a crash. Readers (OpenBlob) read through a Pebble
// snapshot, so a concurrent DeleteBlob does not disturb them.
//
// # Credentials
//
// A device's secret and PSK are sealed with AES-256-GCM (random nonce, the
// device ID in the additional data) under a 32-byte seal key. By default the
// key is generated on creation and kept in the store (m/seal): it keeps
// credentials out of reads, logs and record dumps, not from someone who holds
// the whole data directory. Options.SealKey keeps the key outside the store
// instead (the store then keeps only a check value, so a wrong key fails
// Open). A store that keeps its own key, opened with Options.SealKey, is
// re-sealed under it and its own key dropped; Options.PreviousSealKey with
// Options.SealKey rotates an external key. A re-seal rewrites every device
// record and the seal record in one synced batch at Open (a crash leaves all
// under the old key or all under the new one), then flushes and compacts
// those key ranges so the old values leave the files.
//
// # Corruption and failures
//
// An entry that does not decode (bad envelope, CRC mismatch, a gap in a
// stream's sequence numbers, a key of the wrong shape, a blob chunk with a
// bad CRC or length) is reported as a *persistence.CorruptError naming its
// key, by the call that meets it and by Verify, which scans the whole store.
// Open checks the format marker (and fails with ErrFormat on a store of an
// unknown format or on a non-empty database without one), the seal key and
// leftover blob writes; Options.Verify makes it run Verify too.
// Options.ReadOnly opens an existing store without writing anything (to
// copy it): no clean-up of leftovers and no re-seal.
//
// Pebble treats a failed WAL write or sync as fatal and does not expect to
// go on after it (continuing left commits blocked forever in tests). The
// store marks itself failed (calls racing it get ErrFailed), calls
// Options.OnFatal, and otherwise exits the process with status 70: a restart
// recovers every acknowledged append from the journal, and nothing that was
// not acknowledged is visible as a partial batch.
package pebblestore
