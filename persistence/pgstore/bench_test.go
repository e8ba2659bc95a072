package pgstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// The benchmarks are pebblestore's (persistence/pebblestore/bench_test.go),
// on a fresh database of the package's PostgreSQL server, so that
//
//	go test ./persistence/pebblestore ./persistence/pgstore -run '^$' -bench .
//
// compares the two side by side.

func benchStore(b *testing.B) *pgstore.Store {
	b.Helper()
	s, err := pgstore.Open(context.Background(), pgtest.NewDatabase(b), pgstore.Options{SealKey: testKey, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// BenchmarkAppendSynced appends one small event per synced append, from 1
// goroutine and from 64 (each on its own stream, so their appends group).
func BenchmarkAppendSynced(b *testing.B) { benchAppend(b, false) }

// BenchmarkAppendUnsynced is BenchmarkAppendSynced with Append.NoSync
// (synchronous_commit off).
func BenchmarkAppendUnsynced(b *testing.B) { benchAppend(b, true) }

func benchAppend(b *testing.B, noSync bool) {
	for _, goroutines := range []int{1, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			s := benchStore(b)
			payload := make([]byte, 64)
			var issued atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for w := range goroutines {
				wg.Go(func() {
					st := persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("bench-%d", w)}
					var expected uint64
					for issued.Add(1) <= int64(b.N) {
						seq, err := s.Append(context.Background(), persistence.Append{
							Stream: st, Expected: expected, NoSync: noSync,
							Events: []persistence.Event{{Type: persistence.EventTypeDevice, Version: 1, At: int64(expected), Payload: payload}},
						})
						if err != nil {
							b.Error(err)
							return
						}
						expected = seq
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkLoad replays a stream of 1,000 events of 64 bytes.
func BenchmarkLoad(b *testing.B) {
	const events = 1000
	s := benchStore(b)
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "bench"}
	var expected uint64
	for expected < events {
		var evs []persistence.Event
		for range 100 {
			evs = append(evs, persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: make([]byte, 64)})
		}
		seq, err := s.Append(ctx, persistence.Append{Stream: st, Expected: expected, Events: evs})
		if err != nil {
			b.Fatal(err)
		}
		expected = seq
	}
	b.ResetTimer()
	for b.Loop() {
		n := 0
		if err := s.Load(ctx, st, 0, func(persistence.Event) error { n++; return nil }); err != nil || n != events {
			b.Fatalf("Load: %d events, %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N*events)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkCreateDevices creates devices with secrets, 10,000 per call.
func BenchmarkCreateDevices(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err != nil {
		b.Fatal(err)
	}
	call := 0
	for b.Loop() {
		ds := make([]persistence.Device, persistence.MaxCreateDevices)
		for i := range ds {
			ds[i] = persistence.Device{ID: fmt.Sprintf("c%d-d%05d", call, i), ProductID: "p", Secret: "12345678"}
		}
		call++
		if err := s.CreateDevices(ctx, ds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*persistence.MaxCreateDevices)/b.Elapsed().Seconds(), "devices/s")
}
