package pebblestore_test

import (
	"log/slog"
	"testing"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
	"github.com/otafleet/otafleet/persistence/persistencetest"
)

// The benchmarks are persistencetest's, on the real filesystem (a
// temporary directory).

func benchStore(b *testing.B) persistence.Store {
	b.Helper()
	s, err := pebblestore.Open(b.TempDir(), pebblestore.Options{Logger: slog.New(slog.DiscardHandler)})
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
