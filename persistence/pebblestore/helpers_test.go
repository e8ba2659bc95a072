package pebblestore_test

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// testLogger logs through t at Warn and above.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimSpace(p)))
	return len(p), nil
}

// rawDB opens the store's database directly, to inspect or damage it; the
// store must be closed.
func rawDB(t testing.TB, fs vfs.FS) *pebble.DB {
	t.Helper()
	db, err := pebble.Open("db", &pebble.Options{FS: fs, FormatMajorVersion: pebble.FormatNewest, Logger: quietLogger{t}})
	if err != nil {
		t.Fatalf("opening the raw database: %v", err)
	}
	return db
}

// rawKeys lists the keys under the prefixes.
func rawKeys(t testing.TB, fs vfs.FS, prefixes ...string) []string {
	t.Helper()
	db := rawDB(t, fs)
	defer db.Close()
	var keys []string
	for _, p := range prefixes {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(p), UpperBound: append([]byte(p[:len(p)-1]), p[len(p)-1]+1)})
		if err != nil {
			t.Fatal(err)
		}
		for valid := it.First(); valid; valid = it.Next() {
			keys = append(keys, string(it.Key()))
		}
		if err := it.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// rawSet writes (or, with a nil value, deletes) keys directly.
func rawSet(t testing.TB, fs vfs.FS, kv map[string][]byte) {
	t.Helper()
	db := rawDB(t, fs)
	defer db.Close()
	b := db.NewBatch()
	for k, v := range kv {
		if v == nil {
			_ = b.Delete([]byte(k), nil)
		} else {
			_ = b.Set([]byte(k), v, nil)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
}

// rawGet reads a key directly; nil if absent.
func rawGet(t testing.TB, fs vfs.FS, key string) []byte {
	t.Helper()
	db := rawDB(t, fs)
	defer db.Close()
	v, c, err := db.Get([]byte(key))
	if err == pebble.ErrNotFound {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return bytes.Clone(v)
}

// quietLogger drops Pebble's messages but fails the test on a fatal one.
type quietLogger struct{ t testing.TB }

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (l quietLogger) Fatalf(format string, args ...any) {
	l.t.Errorf("raw pebble: fatal: "+format, args...)
}
