package pebblestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/registrypb"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// blobBatchBytes is about how much chunk data one unsynced batch carries.
const blobBatchBytes = 1 << 20

// chunkValue is the stored value of a chunk: CRC-32C then the data.
func chunkValue(data []byte) []byte {
	v := make([]byte, chunkCRCLen, chunkCRCLen+len(data))
	binary.LittleEndian.PutUint32(v, crc32.Checksum(data, castagnoli))
	return append(v, data...)
}

// chunkData checks a stored chunk value and returns its data (aliasing v).
func chunkData(v []byte, wantLen int) ([]byte, error) {
	if len(v) < chunkCRCLen {
		return nil, fmt.Errorf("chunk value of %d bytes", len(v))
	}
	data := v[chunkCRCLen:]
	if got, want := crc32.Checksum(data, castagnoli), binary.LittleEndian.Uint32(v); got != want {
		return nil, fmt.Errorf("chunk checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	if len(data) != wantLen {
		return nil, fmt.Errorf("chunk of %d bytes where %d were expected", len(data), wantLen)
	}
	return data, nil
}

// chunkLen is the length of chunk i of a blob of size bytes.
func chunkLen(size int64, chunkSize int64, i uint64) int {
	rest := size - int64(i)*chunkSize
	return int(min(rest, chunkSize))
}

// claimBlob marks id as being written by this process.
func (s *Store) claimBlob(id string) error {
	s.writingMu.Lock()
	defer s.writingMu.Unlock()
	if s.writing[id] {
		return fmt.Errorf("%w: blob %q is being written", persistence.ErrExists, id)
	}
	if ok, err := s.exists(join(prefixBlobHeader, id)); err != nil || ok {
		return firstErr(err, fmt.Errorf("%w: blob %q", persistence.ErrExists, id))
	}
	s.writing[id] = true
	return nil
}

func (s *Store) unclaimBlob(id string) {
	s.writingMu.Lock()
	defer s.writingMu.Unlock()
	delete(s.writing, id)
}

// WriteBlob implements persistence.Registry. It holds at most one chunk
// buffer and one batch of about 1 MiB in memory.
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
	if err := s.claimBlob(id); err != nil {
		return 0, sum, err
	}
	defer s.unclaimBlob(id)
	size, err := s.writeBlob(ctx, id, r, maxBytes, &sum)
	if err != nil {
		if cerr := s.dropBlobWrite(id); cerr != nil {
			s.log.Error("pebblestore: removing a failed blob write", "blob", id, "err", cerr)
		}
		return 0, [sha256.Size]byte{}, err
	}
	return size, sum, nil
}

func (s *Store) writeBlob(ctx context.Context, id string, r io.Reader, maxBytes int64, sum *[sha256.Size]byte) (int64, error) {
	b := s.db.NewBatch()
	defer func() { b.Close() }()
	if err := b.Set(join(prefixBlobWriting, id), nil, nil); err != nil {
		return 0, err
	}
	h := sha256.New()
	buf := make([]byte, persistence.BlobChunkSize)
	var size int64
	var chunk uint64
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			return 0, fmt.Errorf("blob %q: reading: %w", id, rerr)
		}
		if n > 0 {
			if int64(n) > maxBytes-size {
				return 0, fmt.Errorf("%w: blob %q is longer than %d bytes", persistence.ErrTooLarge, id, maxBytes)
			}
			h.Write(buf[:n])
			if err := b.Set(chunkKey(id, chunk), chunkValue(buf[:n]), nil); err != nil {
				return 0, err
			}
			chunk++
			size += int64(n)
			if b.Len() >= blobBatchBytes {
				if err := s.commit(b, pebble.NoSync); err != nil {
					return 0, err
				}
				b.Close()
				b = s.db.NewBatch()
			}
		}
		if rerr != nil { // EOF: done
			break
		}
	}
	h.Sum(sum[:0])
	v, err := encodeRecord(recBlobHeader, &registrypb.Blob{Size: size, Sha256: sum[:], ChunkSize: persistence.BlobChunkSize})
	if err != nil {
		return 0, err
	}
	if err := firstErr(b.Set(join(prefixBlobHeader, id), v, nil), b.Delete(join(prefixBlobWriting, id), nil)); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return size, s.commit(b, pebble.Sync)
}

// dropBlobWrite deletes the chunks and the marker of an unfinished write.
// It is not synced: a marker that survives a crash is cleaned by Open.
func (s *Store) dropBlobWrite(id string) error {
	b := s.db.NewBatch()
	defer b.Close()
	p := chunkPrefix(id)
	if err := firstErr(b.DeleteRange(p, prefixEnd(p), nil), b.Delete(join(prefixBlobWriting, id), nil)); err != nil {
		return err
	}
	return s.commit(b, pebble.NoSync)
}

// cleanBlobWrites drops the writes that a crash interrupted.
func (s *Store) cleanBlobWrites() error {
	for {
		k, err := s.firstUnder(prefixBlobWriting)
		if err != nil || k == nil {
			return err
		}
		id := string(k[len(prefixBlobWriting):])
		s.log.Info("pebblestore: removing a blob write interrupted by a crash", "blob", id)
		if err := s.dropBlobWrite(id); err != nil {
			return err
		}
	}
}

// DeleteBlob implements persistence.Registry.
func (s *Store) DeleteBlob(ctx context.Context, id string) error {
	if err := persistence.ValidateID(id); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	s.writingMu.Lock()
	defer s.writingMu.Unlock()
	hk := join(prefixBlobHeader, id)
	if ok, err := s.exists(hk); err != nil || !ok {
		return firstErr(err, notFound("blob", id))
	}
	b := s.db.NewBatch()
	defer b.Close()
	p := chunkPrefix(id)
	if err := firstErr(b.Delete(hk, nil), b.DeleteRange(p, prefixEnd(p), nil)); err != nil {
		return err
	}
	return s.commit(b, pebble.Sync)
}

// OpenBlob implements persistence.Registry.
func (s *Store) OpenBlob(ctx context.Context, id string) (persistence.Blob, error) {
	if err := persistence.ValidateID(id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	snap := s.db.NewSnapshot()
	hk := join(prefixBlobHeader, id)
	v, ok, err := getFrom(snap, hk, s)
	if err == nil && !ok {
		err = notFound("blob", id)
	}
	var r registrypb.Blob
	if err == nil {
		err = decodeRecord(hk, v, recBlobHeader, &r)
	}
	if err == nil {
		err = checkBlobHeader(hk, &r)
	}
	if err != nil {
		_ = snap.Close()
		return nil, err
	}
	o := &blob{s: s, id: id, snap: snap, size: r.Size, chunkSize: int64(r.ChunkSize)}
	o.BlobCursor.Init(o, id, o.size)
	copy(o.sum[:], r.Sha256)
	s.mu.Lock()
	s.blobs[o] = struct{}{}
	s.mu.Unlock()
	return o, nil
}

func checkBlobHeader(k []byte, r *registrypb.Blob) error {
	switch {
	case r.Size < 0:
		return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("blob size %d", r.Size)}
	case r.ChunkSize == 0 || r.ChunkSize > maxChunkBytes:
		return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("blob chunk size %d", r.ChunkSize)}
	case len(r.Sha256) != sha256.Size:
		return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("blob SHA-256 of %d bytes", len(r.Sha256))}
	}
	return nil
}

// errBlobClosed: a read of a Blob after its Close.
var errBlobClosed = fmt.Errorf("%w (blob closed)", persistence.ErrClosed)

// blob is an open blob: a Pebble snapshot and the header.
type blob struct {
	s         *Store
	id        string
	snap      *pebble.Snapshot
	size      int64
	chunkSize int64
	sum       [sha256.Size]byte

	snapMu   sync.RWMutex // write-held to release snap, read-held to use it
	released bool

	persistence.BlobCursor

	mu     sync.Mutex // guards the fields below
	cached int64      // index of cache
	cache  []byte     // one chunk's data (nil: none): sequential small reads hit it
}

func (o *blob) Size() int64               { return o.size }
func (o *blob) SHA256() [sha256.Size]byte { return o.sum }

// release closes the snapshot once.
func (o *blob) release() {
	o.snapMu.Lock()
	defer o.snapMu.Unlock()
	if !o.released {
		o.released = true
		_ = o.snap.Close()
	}
}

func (o *blob) Close() error {
	o.s.mu.Lock()
	if o.s.blobs != nil {
		delete(o.s.blobs, o)
	}
	o.s.mu.Unlock()
	o.release()
	return nil
}

// ReadAt implements io.ReaderAt; it is safe for concurrent use.
func (o *blob) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: blob %q: negative offset %d", persistence.ErrInvalid, o.id, off)
	}
	if err := o.s.enter(context.Background()); err != nil {
		return 0, err
	}
	defer o.s.exit()
	n := 0
	for n < len(p) && off+int64(n) < o.size {
		pos := off + int64(n)
		data, err := o.chunk(uint64(pos / o.chunkSize))
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[pos%o.chunkSize:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// chunk returns chunk i's data, from the cache or the snapshot.
func (o *blob) chunk(i uint64) ([]byte, error) {
	o.mu.Lock()
	if o.cache != nil && o.cached == int64(i) {
		data := o.cache
		o.mu.Unlock()
		return data, nil
	}
	o.mu.Unlock()
	o.snapMu.RLock()
	if o.released {
		o.snapMu.RUnlock()
		return nil, errBlobClosed
	}
	k := chunkKey(o.id, i)
	v, ok, err := getFrom(o.snap, k, o.s)
	o.snapMu.RUnlock()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &persistence.CorruptError{Key: k, Reason: fmt.Sprintf("chunk %d of blob %q is missing", i, o.id)}
	}
	data, err := chunkData(v, chunkLen(o.size, o.chunkSize, i))
	if err != nil {
		return nil, &persistence.CorruptError{Key: k, Reason: err.Error()}
	}
	o.mu.Lock()
	o.cache, o.cached = data, int64(i)
	o.mu.Unlock()
	return data, nil
}
