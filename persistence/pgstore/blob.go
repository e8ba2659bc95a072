package pgstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/otafleet/otafleet/persistence"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// blobBatchChunks is how many chunks (of persistence.BlobChunkSize) one
// round trip of WriteBlob carries: about 1 MiB in memory at most.
const blobBatchChunks = 16

func chunkKey(gen, n int64) []byte { return fmt.Appendf(nil, "blob_chunks/%d/%d", gen, n) }

// WriteBlob implements persistence.Registry. The chunks go out in one
// transaction, about 1 MiB per round trip, and the header last: a failed,
// too large or cancelled write rolls back, and nothing of it remains (a
// crash too: an uncommitted transaction leaves nothing).
func (s *Store) WriteBlob(ctx context.Context, id string, r io.Reader, maxBytes int64) (int64, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	if err := persistence.ValidateID(id); err != nil {
		return 0, sum, err
	}
	if maxBytes < 0 {
		return 0, sum, fmt.Errorf("%w: blob %q: negative maxBytes %d", persistence.ErrInvalid, id, maxBytes)
	}
	if err := s.enter(ctx); err != nil {
		return 0, sum, err
	}
	defer s.exit()
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM blobs WHERE id = $1)`, id).Scan(&exists); err != nil {
		return 0, sum, s.dbErr("writing blob "+id, err)
	}
	if exists {
		return 0, sum, fmt.Errorf("%w: blob %q", persistence.ErrExists, id)
	}
	var size int64
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var gen int64
		if err := tx.QueryRow(ctx, `SELECT nextval('blob_gen')`).Scan(&gen); err != nil {
			return err
		}
		h := sha256.New()
		buf := make([]byte, persistence.BlobChunkSize)
		var b pgx.Batch
		flush := func() error {
			if b.Len() == 0 {
				return nil
			}
			err := tx.SendBatch(ctx, &b).Close()
			b = pgx.Batch{}
			return err
		}
		for n := int64(0); ; n++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			got, rerr := io.ReadFull(r, buf)
			if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
				return fmt.Errorf("blob %q: reading: %w", id, rerr)
			}
			if got > 0 {
				if int64(got) > maxBytes-size {
					return fmt.Errorf("%w: blob %q is longer than %d bytes", persistence.ErrTooLarge, id, maxBytes)
				}
				data := buf[:got]
				h.Write(data)
				b.Queue(`INSERT INTO blob_chunks (gen, n, crc, data) VALUES ($1, $2, $3, $4)`,
					gen, n, int32(crc32.Checksum(data, castagnoli)), append([]byte(nil), data...))
				size += int64(got)
				if b.Len() >= blobBatchChunks {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if rerr != nil { // EOF: done
				break
			}
		}
		h.Sum(sum[:0])
		b.Queue(`INSERT INTO blobs (id, gen, size, sha256, chunk_size) VALUES ($1, $2, $3, $4, $5)`,
			id, gen, size, sum[:], int32(persistence.BlobChunkSize))
		return flush()
	})
	if err != nil {
		var zero [sha256.Size]byte
		switch {
		case pgCode(err) == codeUniqueViolation:
			return 0, zero, fmt.Errorf("%w: blob %q (written meanwhile)", persistence.ErrExists, id)
		case errors.Is(err, persistence.ErrTooLarge), ctx.Err() != nil:
			return 0, zero, err
		}
		return 0, zero, s.dbErr("writing blob "+id, err)
	}
	return size, sum, nil
}

// OpenBlob implements persistence.Registry. The blob reads its generation's
// chunks: a DeleteBlob in this process keeps them until the last reader
// closes (see DeleteBlob).
func (s *Store) OpenBlob(ctx context.Context, id string) (persistence.Blob, error) {
	if err := persistence.ValidateID(id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	o := &blob{s: s, id: id, cached: -1}
	var chunkSize int32
	var sum []byte
	err := s.pool.QueryRow(ctx, `SELECT gen, size, sha256, chunk_size FROM blobs WHERE id = $1`, id).Scan(&o.gen, &o.size, &sum, &chunkSize)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("blob", id)
	}
	if err != nil {
		return nil, s.dbErr("opening blob "+id, err)
	}
	key := []byte("blobs/" + id)
	switch {
	case o.size < 0:
		return nil, &persistence.CorruptError{Key: key, Reason: fmt.Sprintf("blob size %d", o.size)}
	case chunkSize <= 0:
		return nil, &persistence.CorruptError{Key: key, Reason: fmt.Sprintf("blob chunk size %d", chunkSize)}
	case len(sum) != sha256.Size:
		return nil, &persistence.CorruptError{Key: key, Reason: fmt.Sprintf("blob SHA-256 of %d bytes", len(sum))}
	}
	o.chunkSize = int64(chunkSize)
	copy(o.sum[:], sum)
	o.BlobCursor.Init(o, id, o.size)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, persistence.ErrClosed
	}
	s.blobs[o] = struct{}{}
	s.readers[o.gen]++
	return o, nil
}

// DeleteBlob implements persistence.Registry. The header goes at once; the
// chunks go with it unless a Blob of this process still reads them, in
// which case the last one's Close deletes them (and the next Open, should
// the process end first). A reader in another process finds its chunks
// gone: the registry deletes a package's blob only when no task uses it.
func (s *Store) DeleteBlob(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var gen int64
		err := tx.QueryRow(ctx, `DELETE FROM blobs WHERE id = $1 RETURNING gen`, id).Scan(&gen)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound("blob", id)
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		read := s.readers[gen] > 0
		if read {
			s.doomed[gen] = true
		}
		s.mu.Unlock()
		if read {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM blob_chunks WHERE gen = $1`, gen)
		return err
	})
	if err != nil && !errors.Is(err, persistence.ErrNotFound) {
		return s.dbErr("deleting blob "+id, err)
	}
	return err
}

// sweepBlobs deletes the chunks of deleted blobs whose readers kept them
// until the process ended.
func (s *Store) sweepBlobs(ctx context.Context) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM blob_chunks c WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.gen = c.gen)`)
	if err != nil {
		return s.dbErr("removing the chunks of deleted blobs", err)
	}
	if n := tag.RowsAffected(); n > 0 {
		s.log.Info("pgstore: removed the chunks of deleted blobs", "chunks", n)
	}
	return nil
}

// errBlobClosed: a read of a Blob after its Close.
var errBlobClosed = fmt.Errorf("%w (blob closed)", persistence.ErrClosed)

// blob is an open blob: its header and generation.
type blob struct {
	s         *Store
	id        string
	gen       int64
	size      int64
	chunkSize int64
	sum       [sha256.Size]byte
	closed    atomic.Bool

	persistence.BlobCursor

	mu     sync.Mutex // guards the fields below
	cached int64      // index of cache (-1: none)
	cache  []byte     // one chunk's data: sequential small reads hit it
}

func (o *blob) Size() int64               { return o.size }
func (o *blob) SHA256() [sha256.Size]byte { return o.sum }

// Close implements io.Closer; the last reader of a deleted generation
// deletes its chunks.
func (o *blob) Close() error {
	if o.closed.Swap(true) {
		return nil
	}
	s := o.s
	s.mu.Lock()
	if s.blobs == nil { // the store is closed
		s.mu.Unlock()
		return nil
	}
	delete(s.blobs, o)
	s.readers[o.gen]--
	last := s.readers[o.gen] == 0
	if last {
		delete(s.readers, o.gen)
	}
	drop := last && s.doomed[o.gen]
	if drop {
		delete(s.doomed, o.gen)
	}
	s.mu.Unlock()
	if drop {
		if _, err := s.exec(context.Background(), "deleting the chunks of blob "+o.id, `DELETE FROM blob_chunks WHERE gen = $1`, o.gen); err != nil {
			s.log.Warn("pgstore: deleting the chunks of a deleted blob (the next open retries)", "blob", o.id, "error", err)
		}
	}
	return nil
}

// ReadAt implements io.ReaderAt: one query for the chunks p spans. It is
// safe for concurrent use.
func (o *blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: blob %q: negative offset %d", persistence.ErrInvalid, o.id, off)
	}
	if o.closed.Load() {
		return 0, errBlobClosed
	}
	if err := o.s.enter(context.Background()); err != nil {
		return 0, err
	}
	defer o.s.exit()
	end := min(off+int64(len(p)), o.size)
	n := 0
	if off < end {
		first, last := off/o.chunkSize, (end-1)/o.chunkSize
		if first == last {
			data, err := o.cachedChunk(first)
			if err != nil {
				return 0, err
			}
			n = copy(p, data[off-first*o.chunkSize:])
		} else {
			err := o.chunks(first, last, func(i int64, data []byte) {
				start := i * o.chunkSize
				if start < off {
					data = data[off-start:]
					start = off
				}
				n += copy(p[start-off:], data)
			})
			if err != nil {
				return 0, err
			}
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// cachedChunk returns chunk i's data, from the cache or the database.
func (o *blob) cachedChunk(i int64) ([]byte, error) {
	o.mu.Lock()
	if o.cached == i {
		data := o.cache
		o.mu.Unlock()
		return data, nil
	}
	o.mu.Unlock()
	var data []byte
	if err := o.chunks(i, i, func(_ int64, d []byte) { data = d }); err != nil {
		return nil, err
	}
	o.mu.Lock()
	o.cache, o.cached = data, i
	o.mu.Unlock()
	return data, nil
}

// chunks reads chunks first..last, checks each (present, CRC, length) and
// calls fn with each in order.
func (o *blob) chunks(first, last int64, fn func(i int64, data []byte)) error {
	rows, err := o.s.pool.Query(context.Background(), `SELECT n, crc, data FROM blob_chunks WHERE gen = $1 AND n BETWEEN $2 AND $3 ORDER BY n`, o.gen, first, last)
	if err != nil {
		return o.s.dbErr("reading blob "+o.id, err)
	}
	next := first
	var n int64
	var crc int32
	var data []byte
	_, err = pgx.ForEachRow(rows, []any{&n, &crc, &data}, func() error {
		if n != next {
			return &persistence.CorruptError{Key: chunkKey(o.gen, next), Reason: fmt.Sprintf("chunk %d of blob %q is missing", next, o.id)}
		}
		if got := crc32.Checksum(data, castagnoli); got != uint32(crc) {
			return &persistence.CorruptError{Key: chunkKey(o.gen, n), Reason: fmt.Sprintf("chunk checksum mismatch (stored %08x, computed %08x)", uint32(crc), got)}
		}
		if want := min(o.chunkSize, o.size-n*o.chunkSize); int64(len(data)) != want {
			return &persistence.CorruptError{Key: chunkKey(o.gen, n), Reason: fmt.Sprintf("chunk of %d bytes where %d were expected", len(data), want)}
		}
		fn(n, data)
		next++
		return nil
	})
	if err != nil {
		return o.s.corruptOr("reading blob "+o.id, err)
	}
	if next != last+1 {
		return &persistence.CorruptError{Key: chunkKey(o.gen, next), Reason: fmt.Sprintf("chunk %d of blob %q is missing (deleted meanwhile?)", next, o.id)}
	}
	return nil
}
