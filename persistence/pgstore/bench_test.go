package pgstore_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/persistencetest"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// The benchmarks are persistencetest's, on a fresh database of the
// package's PostgreSQL server; Append.NoSync is synchronous_commit off.

func benchStore(b *testing.B) persistence.Store {
	b.Helper()
	s, err := pgstore.Open(context.Background(), pgtest.NewDatabase(b), pgstore.Options{SealKey: testKey, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func BenchmarkAppendSynced(b *testing.B)   { persistencetest.BenchAppendSynced(b, benchStore) }
func BenchmarkAppendUnsynced(b *testing.B) { persistencetest.BenchAppendUnsynced(b, benchStore) }
func BenchmarkLoad(b *testing.B)           { persistencetest.BenchLoad(b, benchStore) }
func BenchmarkCreateDevices(b *testing.B)  { persistencetest.BenchCreateDevices(b, benchStore) }
