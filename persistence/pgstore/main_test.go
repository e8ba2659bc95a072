package pgstore_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestMain runs the package's tests against one private PostgreSQL server
// (see pgtest); each test opens a fresh database.
func TestMain(m *testing.M) {
	if os.Getenv(envFenceWriter) != "" {
		os.Exit(fenceWriter())
	}
	pgtest.Main(m)
}

// testKey is the seal key of the tests' stores.
var testKey = bytes.Repeat([]byte{7}, 32)

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

// migratedDatabase returns a fresh database of the current schema.
func migratedDatabase(t testing.TB) string {
	t.Helper()
	return pgtest.Shared(t).NewDatabaseFrom(t, "migrated", func(dsn string) error {
		ctx := context.Background()
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			return err
		}
		defer pool.Close()
		_, err = pgstore.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
		return err
	})
}

// openStore opens a store on a fresh database, closed at the end of t.
func openStore(t testing.TB) (*pgstore.Store, string) {
	t.Helper()
	dsn := migratedDatabase(t)
	s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{SealKey: testKey, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, dsn
}
