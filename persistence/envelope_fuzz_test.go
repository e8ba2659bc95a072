package persistence_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/otafleet/otafleet/persistence"
)

// addGoldenSeeds seeds f with the golden envelopes.
func addGoldenSeeds(f *testing.F, add func(v []byte)) {
	for _, v := range readGolden(f, filepath.Join("testdata", envelopeGolden)) {
		add(v)
	}
}

// FuzzDecodeEvent: any bytes decode or fail, never panic; what decodes
// re-encodes to bytes that decode to the same event.
func FuzzDecodeEvent(f *testing.F) {
	addGoldenSeeds(f, func(v []byte) { f.Add(uint64(1), v) })
	f.Add(uint64(0), []byte{})
	f.Add(uint64(1<<63), []byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, seq uint64, v []byte) {
		e, err := persistence.DecodeEvent(seq, v)
		if err != nil {
			return
		}
		if e.Seq != seq {
			t.Fatalf("Seq %d, want %d", e.Seq, seq)
		}
		again, err := persistence.DecodeEvent(seq, persistence.EncodeEvent(e))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", e, err)
		}
		if again.Type != e.Type || again.Version != e.Version || again.At != e.At || !bytes.Equal(again.Payload, e.Payload) {
			t.Fatalf("round trip: %+v became %+v", e, again)
		}
	})
}

// FuzzDecodeSnapshot: as FuzzDecodeEvent, for snapshots.
func FuzzDecodeSnapshot(f *testing.F) {
	addGoldenSeeds(f, func(v []byte) { f.Add(v) })
	f.Fuzz(func(t *testing.T, v []byte) {
		s, err := persistence.DecodeSnapshot(v)
		if err != nil {
			return
		}
		again, err := persistence.DecodeSnapshot(persistence.EncodeSnapshot(s))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", s, err)
		}
		if again.Seq != s.Seq || again.Type != s.Type || again.Version != s.Version || !bytes.Equal(again.Payload, s.Payload) {
			t.Fatalf("round trip: %+v became %+v", s, again)
		}
	})
}

// FuzzParseEventKey: a key that parses is exactly the key EventKey builds
// from the parts.
func FuzzParseEventKey(f *testing.F) {
	f.Add(persistence.EventKey(persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}, 7))
	f.Add(persistence.EventKey(persistence.Stream{Kind: persistence.KindTask, ID: "t"}, 1<<63))
	f.Add([]byte("e/d//\x00\x00\x00\x00\x00\x00\x00\x01"))
	f.Add([]byte("e/x/y/z/\x00\x00\x00\x00\x00\x00\x00\x01"))
	f.Add([]byte("s/d/dev"))
	f.Fuzz(func(t *testing.T, k []byte) {
		st, seq, err := persistence.ParseEventKey(k)
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("parsed an invalid stream %q: %v", st, err)
		}
		if got := persistence.EventKey(st, seq); !bytes.Equal(got, k) {
			t.Fatalf("ParseEventKey(%q) = %s, %d; EventKey of that is %q", k, st, seq, got)
		}
	})
}
