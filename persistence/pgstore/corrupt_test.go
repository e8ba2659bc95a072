package pgstore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/otafleet/otafleet/persistence"
)

// TestCorrupt damages stored values behind the store's back: an event, a
// record, a snapshot and a blob chunk that do not decode are reported as
// *persistence.CorruptError naming their key, and so is a gap in a stream.
func TestCorrupt(t *testing.T) {
	s, dsn := openStore(t)
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "d"}
	ev := persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte("payload")}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Events: []persistence.Event{ev, ev, ev}, Records: []persistence.Record{{Key: []byte("k"), Type: persistence.RecordTypeState, Payload: []byte("v")}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSnapshot(ctx, st, persistence.Snapshot{Seq: 1, Type: persistence.SnapshotTypeState, Payload: []byte("s")}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 2*persistence.BlobChunkSize/10)
	if _, _, err := s.WriteBlob(ctx, "b", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	corrupt := func(what string, err error, key string) {
		t.Helper()
		var ce *persistence.CorruptError
		if !errors.As(err, &ce) || !bytes.Contains(ce.Key, []byte(key)) {
			t.Fatalf("%s: %v, want a CorruptError naming %q", what, err, key)
		}
	}
	flip := `set_byte(body, length(body) - 1, get_byte(body, length(body) - 1) # 1)`
	execSQL(t, dsn, `UPDATE events SET body = `+flip+` WHERE seq = 2`)
	execSQL(t, dsn, `UPDATE records SET body = `+flip)
	execSQL(t, dsn, `UPDATE snapshots SET body = `+flip)
	execSQL(t, dsn, `UPDATE blob_chunks SET data = set_byte(data, 5, get_byte(data, 5) # 1) WHERE n = 1`)
	corrupt("Load of a damaged event", s.Load(ctx, st, 0, func(persistence.Event) error { return nil }), "e/d/d/")
	corrupt("LoadRecords of a damaged record", s.LoadRecords(ctx, st, func(persistence.Record) error { return nil }), "k/d/d/k")
	_, _, err := s.LoadSnapshot(ctx, st)
	corrupt("LoadSnapshot of a damaged snapshot", err, "s/d/d")
	b, err := s.OpenBlob(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = io.Copy(io.Discard, b)
	corrupt("reading a damaged chunk", err, "blob_chunks/")
	if got, err := b.ReadAt(make([]byte, 10), 0); got != 10 || err != nil { // the first chunk is intact
		t.Fatalf("ReadAt of the intact chunk = %d, %v", got, err)
	}
	execSQL(t, dsn, `DELETE FROM events WHERE seq = 2`)
	corrupt("Load of a stream with a gap", s.Load(ctx, st, 0, func(persistence.Event) error { return nil }), "e/d/d/")
}

// TestBlobStreamed writes and reads back a blob of many chunks through
// small reads and writes, checking its size and SHA-256.
func TestBlobStreamed(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	const size = 40*persistence.BlobChunkSize + 123 // several round trips of chunks
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(&counter{}, size), h)
	n, sum, err := s.WriteBlob(ctx, "big", src, size)
	if err != nil || n != size || !bytes.Equal(sum[:], h.Sum(nil)) {
		t.Fatalf("WriteBlob = %d, %x, %v; want %d, %x", n, sum, err, size, h.Sum(nil))
	}
	b, err := s.OpenBlob(ctx, "big")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h2 := sha256.New()
	if n, err := io.CopyBuffer(h2, b, make([]byte, 1000)); err != nil || n != size || !bytes.Equal(h2.Sum(nil), sum[:]) {
		t.Fatalf("read back %d bytes (%v), digest equal %v", n, err, bytes.Equal(h2.Sum(nil), sum[:]))
	}
}

// counter is an endless reader of a byte pattern.
type counter struct{ n byte }

func (c *counter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n += 7
	}
	return len(p), nil
}
