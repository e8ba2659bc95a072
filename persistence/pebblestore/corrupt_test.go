package pebblestore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

var corruptStream = persistence.Stream{Kind: persistence.KindDevice, ID: "dev"}

// populated returns a closed store's filesystem holding a bit of everything:
// 5 events, a record and a snapshot at 3 in corruptStream with its active mark, a
// product, a device with credentials, a group, a package and a 3-chunk blob.
func populated(t *testing.T) vfs.FS {
	t.Helper()
	fs := vfs.NewMem()
	s := openFS(t, fs)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.Append(ctx, persistence.Append{Stream: corruptStream, Events: []persistence.Event{ev(1), ev(2), ev(3), ev(4), ev(5)}, Active: new(true),
		Records: []persistence.Record{{Key: []byte("row"), Type: persistence.RecordTypeState, Version: 1, Payload: []byte("row")}}})
	must(err)
	must(s.SaveSnapshot(ctx, corruptStream, persistence.Snapshot{Seq: 3, Type: persistence.SnapshotTypeState, Payload: []byte("state")}))
	must(s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}))
	must(s.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p", Secret: "12345678"}}))
	must(s.PutGroup(ctx, persistence.Group{ID: "g", DeviceIDs: []string{"d1"}}))
	must(s.PutPackage(ctx, persistence.Package{ID: "k", ProductID: "p", Type: persistence.PackageFirmware, Version: "2"}))
	_, _, err = s.WriteBlob(ctx, "k", bytes.NewReader(bytes.Repeat([]byte("0123456789abcdef"), 3*persistence.BlobChunkSize/16-100)), 1<<20)
	must(err)
	must(s.PutSession(ctx, "lwm2m", "d1", []byte(`{"reg":"r1"}`)))
	must(s.Verify(ctx))
	must(s.Close())
	return fs
}

func ev(n int) persistence.Event {
	return persistence.Event{Type: persistence.EventTypeDevice, Version: 1, At: int64(n), Payload: []byte{byte(n), 'p'}}
}

func chunkKey(id string, i uint64) string {
	return string(binary.BigEndian.AppendUint64([]byte("b/"+id+"/"), i))
}

// wantCorrupt checks that err is a *persistence.CorruptError naming key.
func wantCorrupt(t *testing.T, what string, err error, key string) {
	t.Helper()
	var ce *persistence.CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, persistence.ErrCorrupt) {
		t.Fatalf("%s: error %v, want a *persistence.CorruptError at %q", what, err, key)
	}
	if string(ce.Key) != key {
		t.Fatalf("%s: corrupt entry reported at %q (%s), want %q", what, ce.Key, ce.Reason, key)
	}
}

func TestCorruption(t *testing.T) {
	ctx := context.Background()
	ek := func(seq uint64) string { return string(persistence.EventKey(corruptStream, seq)) }
	loadAll := func(s *pebblestore.Store) error {
		return s.Load(ctx, corruptStream, 0, func(persistence.Event) error { return nil })
	}
	readBlob := func(s *pebblestore.Store) error {
		b, err := s.OpenBlob(ctx, "k")
		if err != nil {
			return err
		}
		defer b.Close()
		_, err = io.Copy(io.Discard, b)
		return err
	}
	sk := string(persistence.SnapshotKey(corruptStream))
	rk := string(persistence.RecordKey(corruptStream, []byte("row")))
	loadRecords := func(s *pebblestore.Store) error {
		return s.LoadRecords(ctx, corruptStream, func(persistence.Record) error { return nil })
	}
	flip := func(v []byte, i int) []byte {
		v = bytes.Clone(v)
		v[(i+len(v))%len(v)] ^= 1
		return v
	}
	type get func(key string) []byte
	for _, c := range []struct {
		name   string
		damage func(get) map[string][]byte
		key    string                         // the key reported
		read   func(*pebblestore.Store) error // a read that must report it
	}{
		{"event garbage", func(get) map[string][]byte { return map[string][]byte{ek(3): []byte("garbage!")} }, ek(3), loadAll},
		{"event truncated", func(g get) map[string][]byte { return map[string][]byte{ek(3): g(ek(3))[:3]} }, ek(3), loadAll},
		{"event empty", func(get) map[string][]byte { return map[string][]byte{ek(3): {}} }, ek(3), loadAll},
		{"event bit flip", func(g get) map[string][]byte { return map[string][]byte{ek(3): flip(g(ek(3)), -1)} }, ek(3), loadAll},
		{"event of a newer envelope", func(g get) map[string][]byte { return map[string][]byte{ek(3): flip(g(ek(3)), 0)} }, ek(3), loadAll},
		{"gap", func(get) map[string][]byte { return map[string][]byte{ek(3): nil} }, ek(4), loadAll},
		{"snapshot truncated", func(g get) map[string][]byte { return map[string][]byte{sk: g(sk)[:6]} }, sk, func(s *pebblestore.Store) error {
			_, _, err := s.LoadSnapshot(ctx, corruptStream)
			return err
		}},
		{"record bit flip", func(g get) map[string][]byte { return map[string][]byte{rk: flip(g(rk), -1)} }, rk, loadRecords},
		{"record truncated", func(g get) map[string][]byte { return map[string][]byte{rk: g(rk)[:4]} }, rk, loadRecords},
		{"record with a time", func(get) map[string][]byte { return map[string][]byte{rk: persistence.EncodeEvent(ev(1))} }, rk, loadRecords},
		{"active mark with a value", func(get) map[string][]byte {
			return map[string][]byte{string(persistence.ActiveKey(corruptStream)): []byte("x")}
		}, string(persistence.ActiveKey(corruptStream)), func(s *pebblestore.Store) error {
			return s.Active(ctx, persistence.KindDevice, func(string) error { return nil })
		}},
		{"device record", func(g get) map[string][]byte { return map[string][]byte{"r/d/d1": g("r/d/d1")[:20]} }, "r/d/d1", func(s *pebblestore.Store) error {
			_, err := s.GetDevice(ctx, "d1")
			return err
		}},
		{"device record in a list", func(get) map[string][]byte { return map[string][]byte{"r/d/d1": []byte("xxxxxxxx")} }, "r/d/d1", func(s *pebblestore.Store) error {
			_, err := s.ListDevices(ctx, "", 0)
			return err
		}},
		{"product record holding a group", func(g get) map[string][]byte { return map[string][]byte{"r/p/p": g("r/g/g")} }, "r/p/p", func(s *pebblestore.Store) error {
			_, err := s.GetProduct(ctx, "p")
			return err
		}},
		{"package record", func(get) map[string][]byte { return map[string][]byte{"r/k/k": {1, 2, 3, 4, 5, 6}} }, "r/k/k", func(s *pebblestore.Store) error {
			_, err := s.GetPackage(ctx, "k")
			return err
		}},
		{"blob chunk checksum", func(g get) map[string][]byte {
			return map[string][]byte{chunkKey("k", 1): flip(g(chunkKey("k", 1)), 100)}
		}, chunkKey("k", 1), readBlob},
		{"blob chunk truncated", func(g get) map[string][]byte { return map[string][]byte{chunkKey("k", 2): g(chunkKey("k", 2))[:10]} }, chunkKey("k", 2), readBlob},
		{"session bit flip", func(g get) map[string][]byte { return map[string][]byte{"t/lwm2m/d1": flip(g("t/lwm2m/d1"), -1)} }, "t/lwm2m/d1", func(s *pebblestore.Store) error {
			return s.ListSessions(ctx, "lwm2m", func(string, []byte) error { return nil })
		}},
		{"session holding a device record", func(g get) map[string][]byte { return map[string][]byte{"t/lwm2m/d1": g("r/d/d1")} }, "t/lwm2m/d1", func(s *pebblestore.Store) error {
			return s.ListSessions(ctx, "lwm2m", func(string, []byte) error { return nil })
		}},
		{"blob header", func(get) map[string][]byte { return map[string][]byte{"r/b/k": []byte("?")} }, "r/b/k", readBlob},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := populated(t)
			rawSet(t, fs, c.damage(func(key string) []byte { return rawGet(t, fs, key) }))

			s := openFS(t, fs) // Open's cheap check does not scan entries
			wantCorrupt(t, "read", c.read(s), c.key)
			wantCorrupt(t, "Verify", s.Verify(ctx), c.key)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			_, err := pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t), Verify: true})
			wantCorrupt(t, "Open with Verify", err, c.key)
		})
	}
}

// TestCorruptionOtherReadsGoOn: a damaged entry does not stop reads that do
// not touch it.
func TestCorruptionOtherReadsGoOn(t *testing.T) {
	ctx := context.Background()
	fs := populated(t)
	rawSet(t, fs, map[string][]byte{string(persistence.EventKey(corruptStream, 2)): []byte("bad")})
	s := openFS(t, fs)
	defer s.Close()
	var seqs []uint64
	if err := s.Load(ctx, corruptStream, 3, func(e persistence.Event) error { seqs = append(seqs, e.Seq); return nil }); err != nil || len(seqs) != 2 {
		t.Fatalf("Load after the snapshot: %v, %v", seqs, err)
	}
	if _, err := s.GetDevice(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	// Appends still work: the store is not failed.
	if _, err := s.Append(ctx, persistence.Append{Stream: corruptStream, Expected: 5, Events: []persistence.Event{ev(6)}}); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFindsStrayKeys: keys outside the layout are reported.
func TestVerifyFindsStrayKeys(t *testing.T) {
	for _, key := range []string{"zz", "x", "e/d/dev/\x00", "e/q/dev/\x00\x00\x00\x00\x00\x00\x00\x01", "r/q/x", "m/other", "b/nohead/\x00\x00\x00\x00\x00\x00\x00\x00", "k/d/dev", "k/d/dev/", "k/q/dev/row", "k//dev/row"} {
		fs := populated(t)
		rawSet(t, fs, map[string][]byte{key: persistence.EncodeEvent(ev(1))})
		s := openFS(t, fs)
		wantCorrupt(t, "Verify with "+key, s.Verify(context.Background()), key)
		_ = s.Close()
	}
}

// TestGarbageEverywhere overwrites each entry in turn with random bytes and
// runs every read: errors, never a panic, and Verify names the entry.
func TestGarbageEverywhere(t *testing.T) {
	ctx := context.Background()
	base := populated(t)
	keys := rawKeys(t, base, "a/", "b/", "e/", "k/", "r/", "s/")
	for _, key := range keys {
		for _, n := range []int{0, 1, 5, 17, 64} {
			fs := vfs.NewMem()
			if _, err := vfs.Clone(base, fs, "db", "db"); err != nil {
				t.Fatal(err)
			}
			garbage := make([]byte, n)
			_, _ = rand.Read(garbage)
			rawSet(t, fs, map[string][]byte{key: garbage})
			s := openFS(t, fs)
			_ = s.Load(ctx, corruptStream, 0, func(persistence.Event) error { return nil })
			_, _, _ = s.LoadSnapshot(ctx, corruptStream)
			_, _ = s.LastSeq(ctx, corruptStream)
			_ = s.Active(ctx, persistence.KindDevice, func(string) error { return nil })
			_, _ = s.ListProducts(ctx, "", 0)
			_, _ = s.ListDevices(ctx, "", 0)
			_, _ = s.DeviceCredentials(ctx, "d1")
			_, _ = s.ListGroups(ctx, "", 0)
			_, _ = s.ListPackages(ctx, "", 0)
			if b, err := s.OpenBlob(ctx, "k"); err == nil {
				_, _ = io.Copy(io.Discard, b)
				_ = b.Close()
			}
			err := s.Verify(ctx)
			if strings.HasPrefix(key, "r/i/") || key == string(persistence.ActiveKey(corruptStream)) {
				// Index entries and marks hold no data: only a non-empty value is wrong.
				if n > 0 {
					wantCorrupt(t, "Verify", err, key)
				}
			} else {
				var ce *persistence.CorruptError
				if !errors.As(err, &ce) {
					t.Fatalf("Verify after %d garbage bytes at %q: %v, want a corrupt entry", n, key, err)
				}
			}
			_ = s.Close()
		}
	}
}

func TestFormat(t *testing.T) {
	for _, c := range []struct {
		name    string
		damage  map[string][]byte
		want    error
		corrupt string
	}{
		{"newer format", map[string][]byte{"m/format": binary.AppendUvarint(nil, 2)}, pebblestore.ErrFormat, ""},
		{"no format marker", map[string][]byte{"m/format": nil}, pebblestore.ErrFormat, ""},
		{"bad format marker", map[string][]byte{"m/format": {0xff}}, persistence.ErrCorrupt, "m/format"},
		{"no seal record", map[string][]byte{"m/seal": nil}, persistence.ErrCorrupt, "m/seal"},
		{"bad seal record", map[string][]byte{"m/seal": {1, 2}}, persistence.ErrCorrupt, "m/seal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := populated(t)
			rawSet(t, fs, c.damage)
			_, err := pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t)})
			if !errors.Is(err, c.want) {
				t.Fatalf("Open: %v, want %v", err, c.want)
			}
			if c.corrupt != "" {
				wantCorrupt(t, "Open", err, c.corrupt)
			}
			t.Logf("Open: %v", err)
		})
	}
	t.Run("not a store", func(t *testing.T) {
		fs := vfs.NewMem()
		db, err := pebble.Open("db", &pebble.Options{FS: fs, Logger: quietLogger{t}})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Set([]byte("other"), []byte("data"), pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t)})
		if !errors.Is(err, pebblestore.ErrFormat) {
			t.Fatalf("Open of a foreign database: %v, want ErrFormat", err)
		}
	})
}
