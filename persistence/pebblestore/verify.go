package pebblestore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/registrypb"
	"google.golang.org/protobuf/proto"
)

// Verify reads every entry of the store (as of one Pebble snapshot) and
// returns the first corrupt one as a *persistence.CorruptError naming its
// key: an envelope or record that does not decode, a stream whose sequence
// numbers do not run 1, 2, 3, ..., a snapshot past its stream's last event,
// a state record that does not decode, an invalid active mark or index entry, a blob chunk with a bad checksum or
// length, a blob whose data does not match its SHA-256, or a key outside the
// store's key spaces. It reads all data, blobs included.
func (s *Store) Verify(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	snap := s.db.NewSnapshot()
	defer snap.Close()
	it, err := snap.NewIterWithContext(ctx, nil)
	if err != nil {
		return s.readErr(nil, err)
	}
	v := &verifier{s: s, snap: snap, blobsSeen: map[string]bool{}}
	var last []byte
	err = func() error {
		n := 0
		for valid := it.First(); valid; valid = it.Next() {
			k := it.Key()
			last = k
			val, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(k, err)
			}
			if err := v.entry(k, val); err != nil {
				return err
			}
			if n++; n%1024 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		return v.endBlob()
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(last, ierr)
	}
	return firstErr(err, it.Close())
}

// verifier holds Verify's state across the ordered scan.
type verifier struct {
	s    *Store
	snap *pebble.Snapshot

	stream  persistence.Stream // the events' stream being read
	nextSeq uint64

	blob      string // the blob whose chunks are being read ("" if none)
	blobHead  *registrypb.Blob
	blobKey   []byte // last chunk key
	blobNext  uint64
	blobHash  hash.Hash
	blobsSeen map[string]bool // blobs whose chunks were verified
}

func corrupt(k []byte, format string, args ...any) error {
	return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf(format, args...)}
}

func (v *verifier) entry(k, val []byte) error {
	if len(k) < 2 || k[1] != '/' {
		return corrupt(k, "key outside the store's key spaces")
	}
	if k[0] != 'b' {
		if err := v.endBlob(); err != nil {
			return err
		}
	}
	switch k[0] {
	case 'a':
		return v.active(k, val)
	case 'b':
		return v.chunk(k, val)
	case 'e':
		return v.event(k, val)
	case 'k':
		return v.stateRecord(k, val)
	case 'm':
		if !bytes.Equal(k, keyFormat) && !bytes.Equal(k, keySeal) {
			return corrupt(k, "unknown meta key")
		}
		return nil // checked by Open
	case 'r':
		return v.record(k, val)
	case 's':
		return v.snapshot(k, val)
	case 't':
		return v.session(k, val)
	}
	return corrupt(k, "key outside the store's key spaces")
}

// splitStream parses "<kind>/<id>".
func splitStream(body string) (persistence.Stream, error) {
	kind, id, ok := strings.Cut(body, "/")
	if !ok {
		return persistence.Stream{}, fmt.Errorf("no kind/id")
	}
	st := persistence.Stream{Kind: persistence.Kind(kind), ID: id}
	return st, st.Validate()
}

func (v *verifier) active(k, val []byte) error {
	if _, err := splitStream(string(k[2:])); err != nil {
		return corrupt(k, "active mark of an invalid stream: %v", err)
	}
	if len(val) != 0 {
		return corrupt(k, "active mark with a %d-byte value", len(val))
	}
	return nil
}

func (v *verifier) event(k, val []byte) error {
	st, seq, err := persistence.ParseEventKey(k)
	if err != nil {
		return corrupt(k, "%v", err)
	}
	if st != v.stream {
		v.stream, v.nextSeq = st, 1
	}
	if seq != v.nextSeq {
		return corrupt(k, "sequence number %d where %d was expected (a gap in the stream)", seq, v.nextSeq)
	}
	v.nextSeq++
	if _, err := persistence.DecodeEvent(seq, val); err != nil {
		return corrupt(k, "%v", err)
	}
	return nil
}

func (v *verifier) stateRecord(k, val []byte) error {
	_, key, err := persistence.ParseRecordKey(k)
	if err != nil {
		return corrupt(k, "%v", err)
	}
	if _, err := persistence.DecodeRecord(key, val); err != nil {
		return corrupt(k, "%v", err)
	}
	return nil
}

func (v *verifier) snapshot(k, val []byte) error {
	st, err := splitStream(string(k[2:]))
	if err != nil {
		return corrupt(k, "snapshot of an invalid stream: %v", err)
	}
	snap, err := persistence.DecodeSnapshot(val)
	if err != nil {
		return corrupt(k, "%v", err)
	}
	prefix := persistence.EventPrefix(st)
	it, err := v.snap.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return v.s.readErr(prefix, err)
	}
	var last uint64
	if it.Last() && len(it.Key()) == len(prefix)+8 {
		last = binary.BigEndian.Uint64(it.Key()[len(prefix):])
	}
	if err := firstErr(it.Error(), it.Close()); err != nil {
		return v.s.readErr(prefix, err)
	}
	if snap.Seq > last {
		return corrupt(k, "snapshot at sequence number %d, past the stream's last event %d", snap.Seq, last)
	}
	return nil
}

// chunk checks one blob chunk; chunks of a blob come in order.
func (v *verifier) chunk(k, val []byte) error {
	if len(k) < len(prefixBlobChunk)+2+chunkIndexLen || k[len(k)-chunkIndexLen-1] != '/' {
		return corrupt(k, "blob chunk key of the wrong shape")
	}
	id := string(k[len(prefixBlobChunk) : len(k)-chunkIndexLen-1])
	if err := persistence.ValidateID(id); err != nil {
		return corrupt(k, "blob chunk of an invalid ID: %v", err)
	}
	i := binary.BigEndian.Uint64(k[len(k)-chunkIndexLen:])
	if id != v.blob {
		if err := v.endBlob(); err != nil {
			return err
		}
		if err := v.startBlob(k, id); err != nil {
			return err
		}
	}
	if v.blobHead == nil {
		return nil // a write in progress
	}
	if i != v.blobNext {
		return corrupt(k, "blob chunk %d where %d was expected", i, v.blobNext)
	}
	size, chunkSize := v.blobHead.Size, int64(v.blobHead.ChunkSize)
	if int64(i)*chunkSize >= size {
		return corrupt(k, "blob chunk %d past the blob's %d bytes", i, size)
	}
	data, err := chunkData(val, chunkLen(size, chunkSize, i))
	if err != nil {
		return corrupt(k, "%v", err)
	}
	v.blobHash.Write(data)
	v.blobKey = bytes.Clone(k)
	v.blobNext++
	return nil
}

func (v *verifier) startBlob(k []byte, id string) error {
	v.blob, v.blobHead, v.blobNext, v.blobKey = id, nil, 0, bytes.Clone(k)
	hk := join(prefixBlobHeader, id)
	hv, ok, err := getFrom(v.snap, hk, v.s)
	if err != nil {
		return err
	}
	if !ok {
		if _, writing, err := getFrom(v.snap, join(prefixBlobWriting, id), v.s); err != nil || writing {
			return err
		}
		return corrupt(k, "chunk of blob %q, which has no header", id)
	}
	var h registrypb.Blob
	if err := decodeRecord(hk, hv, recBlobHeader, &h); err != nil {
		return err
	}
	if err := checkBlobHeader(hk, &h); err != nil {
		return err
	}
	v.blobHead, v.blobHash = &h, sha256.New()
	return nil
}

// endBlob checks the blob whose chunks were just read: all there, SHA-256 right.
func (v *verifier) endBlob() error {
	if v.blob == "" {
		return nil
	}
	id, h := v.blob, v.blobHead
	v.blob, v.blobHead = "", nil
	if h == nil {
		return nil
	}
	v.blobsSeen[id] = true
	if got := int64(v.blobNext) * int64(h.ChunkSize); got < h.Size {
		return corrupt(v.blobKey, "blob %q ends after %d chunks, short of its %d bytes", id, v.blobNext, h.Size)
	}
	if sum := v.blobHash.Sum(nil); !bytes.Equal(sum, h.Sha256) {
		return corrupt(join(prefixBlobHeader, id), "blob %q data has SHA-256 %x, its header says %x", id, sum, h.Sha256)
	}
	return nil
}

// record checks a registry entry.
func (v *verifier) record(k, val []byte) error {
	check := func(prefix []byte, typ uint32, m proto.Message, idOf func() string) (bool, error) {
		if !bytes.HasPrefix(k, prefix) {
			return false, nil
		}
		id := string(k[len(prefix):])
		if err := persistence.ValidateID(id); err != nil {
			return true, corrupt(k, "record of an invalid ID: %v", err)
		}
		if err := decodeRecord(k, val, typ, m); err != nil {
			return true, err
		}
		if idOf != nil && idOf() != id {
			return true, corrupt(k, "record of ID %q under this key", idOf())
		}
		return true, nil
	}
	var (
		p registrypb.Product
		d registrypb.Device
		g registrypb.Group
		c registrypb.Package
		b registrypb.Blob
		t registrypb.Task
	)
	for _, r := range []struct {
		prefix []byte
		typ    uint32
		m      proto.Message
		id     func() string
	}{
		{prefixProduct, recProduct, &p, func() string { return p.Id }},
		{prefixDevice, recDevice, &d, func() string { return d.Id }},
		{prefixGroup, recGroup, &g, func() string { return g.Id }},
		{prefixPackage, recPackage, &c, func() string { return c.Id }},
		{prefixBlobHeader, recBlobHeader, &b, nil},
		{prefixTask, recTask, &t, func() string { return t.Id }},
	} {
		ok, err := check(r.prefix, r.typ, r.m, r.id)
		if !ok {
			continue
		}
		if err != nil {
			return err
		}
		if r.typ == recPackage {
			if _, err := packageFrom(k, &c); err != nil {
				return err
			}
		}
		if r.typ == recBlobHeader {
			if err := checkBlobHeader(k, &b); err != nil {
				return err
			}
			if id := string(k[len(prefixBlobHeader):]); b.Size > 0 && !v.blobsSeen[id] {
				return corrupt(k, "blob %q of %d bytes has no chunks", id, b.Size)
			}
		}
		return nil
	}
	switch {
	case bytes.HasPrefix(k, prefixBlobWriting):
		if err := persistence.ValidateID(string(k[len(prefixBlobWriting):])); err != nil || len(val) != 0 {
			return corrupt(k, "bad blob write marker")
		}
		return nil
	case bytes.HasPrefix(k, prefixProductDevs), bytes.HasPrefix(k, prefixProductPkgs):
		product, id, ok := strings.Cut(string(k[len(prefixProductDevs):]), "/")
		if !ok || persistence.ValidateID(product) != nil || persistence.ValidateID(id) != nil || len(val) != 0 {
			return corrupt(k, "bad index entry")
		}
		return nil
	}
	return corrupt(k, "unknown registry key")
}

// session checks a transport session: key t/<transport>/<id>, an envelope
// of type recSession.
func (v *verifier) session(k, val []byte) error {
	transport, id, ok := strings.Cut(string(k[len(prefixSessions):]), "/")
	if !ok {
		return corrupt(k, "session key without a device ID")
	}
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return corrupt(k, "session of an invalid key: %v", err)
	}
	_, err := decodeSession(k, val)
	return err
}
