package pebblestore_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

// TestReopen: what one Open wrote, the next reads.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	s := openFS(t, fs)
	created := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	if _, err := s.Append(ctx, persistence.Append{Stream: corruptStream, Events: []persistence.Event{ev(1), ev(2)}, Active: new(true)}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Name: "n", Protocol: persistence.ProtocolLWM2M, Created: created}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDevices(ctx, []persistence.Device{{ID: "d", ProductID: "p", Secret: "12345678", PSK: []byte("psk-bytes")}}); err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("x"), 100000)
	if _, _, err := s.WriteBlob(ctx, "fw", bytes.NewReader(data), 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openFS(t, fs)
	defer s.Close()
	if err := s.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if seq, err := s.LastSeq(ctx, corruptStream); err != nil || seq != 2 {
		t.Fatalf("LastSeq after reopen = %d, %v", seq, err)
	}
	var ids []string
	if err := s.Active(ctx, persistence.KindDevice, func(id string) error { ids = append(ids, id); return nil }); err != nil || len(ids) != 1 {
		t.Fatalf("Active after reopen = %v, %v", ids, err)
	}
	if p, err := s.GetProduct(ctx, "p"); err != nil || !p.Created.Equal(created) || p.Name != "n" {
		t.Fatalf("GetProduct after reopen = %+v, %v", p, err)
	}
	if c, err := s.DeviceCredentials(ctx, "d"); err != nil || c.Secret != "12345678" || string(c.PSK) != "psk-bytes" {
		t.Fatalf("DeviceCredentials after reopen = %+v, %v", c, err)
	}
	b, err := s.OpenBlob(ctx, "fw")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, data) || b.SHA256() != sha256.Sum256(data) {
		t.Fatalf("blob after reopen: %d bytes, %v", len(got), err)
	}
}

// TestCredentialsSealed: no stored value holds a secret or PSK in clear.
func TestCredentialsSealed(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	s := openFS(t, fs)
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, persistence.Device{ID: "d", ProductID: "p", Secret: "s3cr3t-value", PSK: []byte("psk-in-clear")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db := rawDB(t, fs)
	defer db.Close()
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		if v := it.Value(); bytes.Contains(v, []byte("s3cr3t-value")) || bytes.Contains(v, []byte("psk-in-clear")) {
			t.Fatalf("the value at %q holds a credential in clear", it.Key())
		}
	}
}

func TestSealKeyOption(t *testing.T) {
	ctx := context.Background()
	key := bytes.Repeat([]byte{7}, 32)
	open := func(fs vfs.FS, k []byte) (*pebblestore.Store, error) {
		return pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t), SealKey: k})
	}
	fs := vfs.NewMem()
	s, err := open(fs, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutDevice(ctx, persistence.Device{ID: "d", ProductID: "p", Secret: "secret"}); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	for _, c := range []struct {
		name string
		key  []byte
		want error
	}{
		{"no key", nil, pebblestore.ErrSealKey},
		{"another key", bytes.Repeat([]byte{8}, 32), pebblestore.ErrSealKey},
		{"short key", []byte("short"), persistence.ErrInvalid},
	} {
		if _, err := open(fs, c.key); !errors.Is(err, c.want) {
			t.Fatalf("Open with %s: %v, want %v", c.name, err, c.want)
		}
	}
	if s, err = open(fs, key); err != nil {
		t.Fatal(err)
	}
	if c, err := s.DeviceCredentials(ctx, "d"); err != nil || c.Secret != "secret" {
		t.Fatalf("DeviceCredentials = %+v, %v", c, err)
	}
	_ = s.Close()
}

// sealRecord returns the raw m/seal value of the closed store on fs.
func sealRecord(t *testing.T, fs vfs.FS) []byte {
	t.Helper()
	db := rawDB(t, fs)
	defer db.Close()
	v, closer, err := db.Get([]byte("m/seal"))
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	return bytes.Clone(v)
}

// putCredentials stores product p and devices d1 (secret and PSK) and d2
// (none).
func putCredentials(t *testing.T, s *pebblestore.Store) {
	t.Helper()
	ctx := context.Background()
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolLWM2M}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDevices(ctx, []persistence.Device{{ID: "d1", ProductID: "p", Secret: "secret-one", PSK: []byte("psk-of-sixteen-b")}, {ID: "d2", ProductID: "p"}}); err != nil {
		t.Fatal(err)
	}
}

// wantCredentials checks what putCredentials stored.
func wantCredentials(t *testing.T, s *pebblestore.Store) {
	t.Helper()
	ctx := context.Background()
	c, err := s.DeviceCredentials(ctx, "d1")
	if err != nil || c.Secret != "secret-one" || string(c.PSK) != "psk-of-sixteen-b" {
		t.Fatalf("DeviceCredentials(d1) = %+v, %v", c, err)
	}
	if c, err := s.DeviceCredentials(ctx, "d2"); err != nil || c.Secret != "" || c.PSK != nil {
		t.Fatalf("DeviceCredentials(d2) = %+v, %v", c, err)
	}
	if d, err := s.GetDevice(ctx, "d1"); err != nil || !d.HasSecret || !d.HasPSK {
		t.Fatalf("GetDevice(d1) = %+v, %v", d, err)
	}
}

// TestSealKeyMigration: a store that keeps its own key, opened with an
// external one, is re-sealed under it and no longer holds its own key.
func TestSealKeyMigration(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	open := func(fs vfs.FS, k []byte) (*pebblestore.Store, error) {
		return pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t), SealKey: k})
	}
	fs := vfs.NewMem()
	s := openFS(t, fs)
	putCredentials(t, s)
	_ = s.Close()
	rec := sealRecord(t, fs)
	if len(rec) != 33 || rec[0] != 1 {
		t.Fatalf("m/seal of a self-keyed store: %x", rec)
	}
	own := rec[1:]

	s, err := open(fs, key)
	if err != nil {
		t.Fatalf("Open of a self-keyed store with a key: %v", err)
	}
	wantCredentials(t, s)
	_ = s.Close()
	if rec := sealRecord(t, fs); rec[0] != 2 || bytes.Contains(rec, own) {
		t.Fatalf("m/seal after the migration: %x", rec)
	}
	db := rawDB(t, fs)
	it, err := db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		if bytes.Contains(it.Value(), own) {
			t.Errorf("the value at %q holds the store's former key", it.Key())
		}
	}
	_ = it.Close()
	_ = db.Close()

	// From now on the key is required, and it is enough.
	if _, err := open(fs, nil); !errors.Is(err, pebblestore.ErrSealKey) {
		t.Fatalf("Open without the key after the migration: %v, want ErrSealKey", err)
	}
	if s, err = open(fs, key); err != nil {
		t.Fatal(err)
	}
	wantCredentials(t, s)
	_ = s.Close()
}

// TestSealKeyRotation: SealKey with PreviousSealKey re-seals a store sealed
// under the previous key; afterwards only the new key opens it.
func TestSealKeyRotation(t *testing.T) {
	oldKey, newKey, other := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	open := func(fs vfs.FS, k, prev []byte) (*pebblestore.Store, error) {
		return pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t), SealKey: k, PreviousSealKey: prev})
	}
	fs := vfs.NewMem()
	s, err := open(fs, oldKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	putCredentials(t, s)
	_ = s.Close()

	for _, c := range []struct {
		name      string
		key, prev []byte
		want      error
	}{
		{"the new key alone", newKey, nil, pebblestore.ErrSealKey},
		{"two wrong keys", newKey, other, pebblestore.ErrSealKey},
		{"a previous key alone", nil, oldKey, persistence.ErrInvalid},
		{"a short previous key", newKey, []byte("short"), persistence.ErrInvalid},
	} {
		if _, err := open(fs, c.key, c.prev); !errors.Is(err, c.want) {
			t.Fatalf("Open with %s: %v, want %v", c.name, err, c.want)
		}
	}
	if s, err = open(fs, newKey, oldKey); err != nil {
		t.Fatalf("rotation: %v", err)
	}
	wantCredentials(t, s)
	_ = s.Close()
	if _, err := open(fs, oldKey, nil); !errors.Is(err, pebblestore.ErrSealKey) {
		t.Fatalf("Open with the old key after the rotation: %v, want ErrSealKey", err)
	}
	// The options may stay set: a rotated store opens with them as usual.
	for _, prev := range [][]byte{oldKey, nil} {
		if s, err = open(fs, newKey, prev); err != nil {
			t.Fatal(err)
		}
		wantCredentials(t, s)
		_ = s.Close()
	}
}

// TestRejectedBlobLeavesNoKeys: an oversized or failed write leaves no chunk
// and no marker behind.
func TestRejectedBlobLeavesNoKeys(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMem()
	s := openFS(t, fs)
	big := bytes.Repeat([]byte("y"), 40*persistence.BlobChunkSize) // several batches
	if _, _, err := s.WriteBlob(ctx, "big", bytes.NewReader(big), int64(len(big)-1)); !errors.Is(err, persistence.ErrTooLarge) {
		t.Fatalf("WriteBlob over the limit: %v", err)
	}
	boom := errors.New("boom")
	if _, _, err := s.WriteBlob(ctx, "broken", io.MultiReader(bytes.NewReader(big), iotestErrReader{boom}), 1<<30); !errors.Is(err, boom) {
		t.Fatalf("WriteBlob from a failing reader: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	r := &crashingReader{n: len(big), crashAt: 20 * persistence.BlobChunkSize, crash: cancel}
	if _, _, err := s.WriteBlob(cctx, "cancelled", r, 1<<30); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteBlob cancelled midway: %v", err)
	}
	if err := s.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, fs, "b/", "r/w/", "r/b/"); len(keys) != 0 {
		t.Fatalf("rejected writes left %d keys, first %q", len(keys), keys[0])
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

// TestOpenRealDir opens a store on the real filesystem.
func TestOpenRealDir(t *testing.T) {
	dir := t.TempDir()
	s, err := pebblestore.Open(dir, pebblestore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), persistence.Append{Stream: corruptStream, Events: []persistence.Event{ev(1)}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A second process-like Open of a locked directory fails cleanly.
	s, err = pebblestore.Open(dir, pebblestore.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := pebblestore.Open(dir, pebblestore.Options{Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "lock") {
		t.Fatalf("a second Open of the same directory: %v, want a lock error", err)
	}
}

// TestTune: the hook sees the options before Open.
func TestTune(t *testing.T) {
	called := false
	s, err := pebblestore.Open("db", pebblestore.Options{FS: vfs.NewMem(), Tune: func(o *pebble.Options) { called = o.FS != nil }})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if !called {
		t.Fatal("Tune not called with the options")
	}
}

// TestReadOnly: a store opened read-only reads what was written, refuses
// writes, and is never re-sealed; a missing store does not open.
func TestReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if _, err := pebblestore.Open(dir+"/missing", pebblestore.Options{ReadOnly: true}); err == nil {
		t.Fatal("a missing store opened read-only")
	}
	s, err := pebblestore.Open(dir, pebblestore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Name: "n", Protocol: persistence.ProtocolMQTT}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDevices(ctx, []persistence.Device{{ID: "d", ProductID: "p", Secret: "12345678"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{7}, 32)
	if _, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true, SealKey: key}); !errors.Is(err, pebblestore.ErrOwnSealKey) || !errors.Is(err, pebblestore.ErrSealKey) {
		t.Fatalf("read-only with a seal key, on a store that keeps its own: %v, want ErrOwnSealKey", err)
	}
	if _, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true, SealKey: key, PreviousSealKey: key}); !errors.Is(err, persistence.ErrInvalid) {
		t.Fatalf("read-only with a previous seal key: %v, want ErrInvalid", err)
	}
	ro, err := pebblestore.Open(dir, pebblestore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ro.DeviceCredentials(ctx, "d"); err != nil || c.Secret != "12345678" {
		t.Fatalf("DeviceCredentials read-only = %+v, %v (was the store re-sealed?)", c, err)
	}
	if err := ro.PutProduct(ctx, persistence.Product{ID: "q", Name: "n", Protocol: persistence.ProtocolMQTT}); err == nil {
		t.Fatal("a write to a read-only store succeeded")
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}
}
