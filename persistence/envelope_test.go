package persistence_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/otafleet/otafleet/internal/goldentest"
	"github.com/otafleet/otafleet/persistence"
)

// goldenEvents and goldenSnapshots are stored in testdata/envelope_v1.golden
// as bytes: journals written by older builds must keep decoding to them.
var goldenEvents = []struct {
	name string
	e    persistence.Event
}{
	{"empty", persistence.Event{}},
	{"device", persistence.Event{Type: persistence.EventTypeDevice, Version: 1, At: 1744592400123456789, Payload: []byte{0x0a, 0x03, 'f', 'o', 'o'}}},
	{"cell-negative-time", persistence.Event{Type: persistence.EventTypeCell, Version: 2, At: -1, Payload: []byte("x")}},
	{"task-large-fields", persistence.Event{Type: persistence.EventTypeTask, Version: 1<<32 - 1, At: 1<<63 - 1, Payload: bytes.Repeat([]byte{0xff}, 20)}},
	{"type-max", persistence.Event{Type: 1<<32 - 1, Version: 0, At: -1 << 63}},
}

var goldenSnapshots = []struct {
	name string
	s    persistence.Snapshot
}{
	{"snapshot-empty", persistence.Snapshot{}},
	{"snapshot-state", persistence.Snapshot{Seq: 42, Type: persistence.SnapshotTypeState, Version: 1, Payload: []byte("state")}},
	{"snapshot-max", persistence.Snapshot{Seq: 1<<63 - 1, Type: persistence.SnapshotTypeState, Version: 3}},
}

const envelopeGolden = "envelope_v1.golden"

func TestEnvelopeGolden(t *testing.T) {
	path := filepath.Join("testdata", envelopeGolden)
	var out strings.Builder
	out.WriteString("# Envelope format 1: stored event and snapshot values, one per line: name hex.\n")
	out.WriteString("# Old journals must keep decoding: never edit a line; add new ones with\n")
	out.WriteString("#   go test ./persistence -run TestEnvelopeGolden -rewrite\n")
	for _, c := range goldenEvents {
		fmt.Fprintf(&out, "%s %x\n", c.name, persistence.EncodeEvent(c.e))
	}
	for _, c := range goldenSnapshots {
		fmt.Fprintf(&out, "%s %x\n", c.name, persistence.EncodeSnapshot(c.s))
	}
	goldentest.Check(t, path, out.String())

	stored := readGolden(t, path)
	for _, c := range goldenEvents {
		v, ok := stored[c.name]
		if !ok {
			t.Fatalf("%s: not in %s", c.name, path)
		}
		got, err := persistence.DecodeEvent(7, v)
		if err != nil {
			t.Fatalf("%s: the stored bytes no longer decode: %v", c.name, err)
		}
		want := c.e
		want.Seq = 7
		if got.Seq != want.Seq || got.Type != want.Type || got.Version != want.Version || got.At != want.At || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("%s: stored bytes decode to %+v, want %+v", c.name, got, want)
		}
	}
	for _, c := range goldenSnapshots {
		v, ok := stored[c.name]
		if !ok {
			t.Fatalf("%s: not in %s", c.name, path)
		}
		got, err := persistence.DecodeSnapshot(v)
		if err != nil {
			t.Fatalf("%s: the stored bytes no longer decode: %v", c.name, err)
		}
		if got.Seq != c.s.Seq || got.Type != c.s.Type || got.Version != c.s.Version || !bytes.Equal(got.Payload, c.s.Payload) {
			t.Fatalf("%s: stored bytes decode to %+v, want %+v", c.name, got, c.s)
		}
	}
}

// readGolden parses "name hex" lines.
func readGolden(t testing.TB, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string][]byte{}
	for sc := bufio.NewScanner(f); sc.Scan(); {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, hx, _ := strings.Cut(line, " ")
		v, err := hex.DecodeString(hx)
		if err != nil {
			t.Fatalf("%s: %s: %v", path, name, err)
		}
		m[name] = v
	}
	return m
}

func TestDecodeRejects(t *testing.T) {
	good := persistence.EncodeEvent(persistence.Event{Type: 1, Version: 1, At: 5, Payload: []byte("p")})
	flip := func(i int) []byte {
		v := bytes.Clone(good)
		v[i] ^= 0x40
		return v
	}
	for name, v := range map[string][]byte{
		"nil":            nil,
		"short":          good[:4],
		"header only":    good[:5],
		"format 2":       flip(0),
		"crc":            flip(1),
		"payload":        flip(len(good) - 1),
		"truncated":      good[:len(good)-1],
		"unterminated":   fixCRC([]byte{1, 0, 0, 0, 0, 0x80}),
		"type too large": fixCRC(append([]byte{1, 0, 0, 0, 0}, 0x80, 0x80, 0x80, 0x80, 0x10, 0, 0)),
	} {
		if e, err := persistence.DecodeEvent(1, v); err == nil {
			t.Errorf("DecodeEvent(%s) = %+v, want an error", name, e)
		}
	}
	neg := persistence.EncodeEvent(persistence.Event{At: -1})
	if s, err := persistence.DecodeSnapshot(neg); err == nil {
		t.Errorf("DecodeSnapshot of a negative sequence number = %+v, want an error", s)
	}
}

// fixCRC sets the envelope checksum of v (format byte, 4 CRC bytes, body),
// as the envelope's documentation specifies it.
func fixCRC(v []byte) []byte {
	binary.LittleEndian.PutUint32(v[1:5], crc32.Checksum(v[5:], crc32.MakeTable(crc32.Castagnoli)))
	return v
}
