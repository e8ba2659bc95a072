package persistencetest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/otafleet/otafleet/persistence"
)

// The benchmarks every store runs, so that
//
//	go test ./persistence/pebblestore ./persistence/pgstore -run '^$' -bench .
//
// compares the stores side by side on the same work.

// OpenB returns a new, empty store for one benchmark; the benchmark's
// cleanup closes it.
type OpenB func(b *testing.B) persistence.Store

// BenchAppendSynced appends one small event per synced append, from 1
// goroutine, from 64 and from 256 (each on its own stream, so their syncs
// group). A store that counts its group commits (a GroupCommits method,
// as pgstore's) also reports the appends each commit carried. Each run
// reports the CPU time of this process per append (cpu-us/append, user
// and system: the store's own goroutines included) and, for a store with
// a server (a ServerCPU method, as pgstore's benchmark store has), the
// server's too (server-cpu-us/append).
func BenchAppendSynced(b *testing.B, open OpenB) { benchAppend(b, open, false) }

// BenchAppendUnsynced is BenchAppendSynced with Append.NoSync: the
// store's own cost per append (the Expected check, the batch, the WAL write)
// without the fsync.
func BenchAppendUnsynced(b *testing.B, open OpenB) { benchAppend(b, open, true) }

func benchAppend(b *testing.B, open OpenB, noSync bool) {
	for _, goroutines := range []int{1, 64, 256} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			s := open(b)
			counter, _ := s.(groupCommitter)
			var commits0 uint64
			if counter != nil {
				commits0 = counter.GroupCommits()
			}
			payload := make([]byte, 64)
			var issued atomic.Int64
			var wg sync.WaitGroup
			server, _ := s.(serverCPU)
			var server0 time.Duration
			if server != nil {
				var err error
				if server0, err = server.ServerCPU(); err != nil {
					b.Fatal(err)
				}
			}
			cpu0 := processCPU(b)
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
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/append")
			if server != nil {
				server1, err := server.ServerCPU()
				if err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(float64((server1-server0).Microseconds())/float64(b.N), "server-cpu-us/append")
			}
			if counter != nil {
				if n := counter.GroupCommits() - commits0; n > 0 {
					b.ReportMetric(float64(b.N)/float64(n), "appends/commit")
				}
			}
		})
	}
}

// serverCPU is a store whose server's processes report the CPU time they
// used (user and system, since they started).
type serverCPU interface{ ServerCPU() (time.Duration, error) }

// processCPU returns the CPU time (user and system) this process used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// groupCommitter is a store that counts the group commits that wrote its
// appends (pgstore.Store.GroupCommits).
type groupCommitter interface{ GroupCommits() uint64 }

// BenchLoad replays a stream of 1,000 events of 64 bytes.
func BenchLoad(b *testing.B, open OpenB) {
	const events = 1000
	s := open(b)
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

// BenchCreateDevices creates devices with secrets, 10,000 per call.
func BenchCreateDevices(b *testing.B, open OpenB) {
	s := open(b)
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
