package pebblestore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

// diskFailure fails, once armed, every matching write operation from the
// failAt-th on, like a disk that died (or, with upTo, the ones up to the
// upTo-th: a disk that came back).
type diskFailure struct {
	armed  atomic.Bool
	count  atomic.Int32
	failAt int32
	upTo   int32 // 0: no end
	match  func(errorfs.Op) bool
}

func (d *diskFailure) String() string { return "diskFailure" }

func (d *diskFailure) MaybeError(op errorfs.Op) error {
	if !d.armed.Load() || op.Kind.ReadOrWrite() != errorfs.OpIsWrite || !d.match(op) {
		return nil
	}
	if n := d.count.Add(1); n >= d.failAt && (d.upTo == 0 || n <= d.upTo) {
		return errorfs.ErrInjected
	}
	return nil
}

func walOps(op errorfs.Op) bool {
	return strings.HasSuffix(op.Path, ".log") && op.Kind != errorfs.OpRemove
}

func walSyncs(op errorfs.Op) bool {
	if !walOps(op) {
		return false
	}
	switch op.Kind {
	case errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo:
		return true
	}
	return false
}

func tableWrites(op errorfs.Op) bool { return strings.HasSuffix(op.Path, ".sst") }

// TestWriteFailures injects disk failures while writers append: Append
// returns errors (never panics), the store then refuses every call with
// ErrFailed, and a crash image of the disk recovers with every acknowledged
// append and no torn batch.
func TestWriteFailures(t *testing.T) {
	for _, c := range []struct {
		name   string
		match  func(errorfs.Op) bool
		failAt []int32
	}{
		{"wal-writes", walOps, []int32{1, 2, 3, 5, 8, 13, 40, 100}},
		{"wal-syncs", walSyncs, []int32{1, 2, 5, 20, 60}},
		{"all-writes", func(errorfs.Op) bool { return true }, []int32{1, 3, 10, 30, 100, 300}},
	} {
		for _, failAt := range c.failAt {
			t.Run(fmt.Sprintf("%s/%d", c.name, failAt), func(t *testing.T) {
				testWriteFailure(t, &diskFailure{failAt: failAt, match: c.match}, true)
			})
		}
	}
	// Failing table writes (flush, compaction) are background errors that
	// Pebble retries: appends go on.
	t.Run("table-writes", func(t *testing.T) {
		testWriteFailure(t, &diskFailure{failAt: 1, upTo: 5, match: tableWrites}, false)
	})
}

func testWriteFailure(t *testing.T, inj *diskFailure, wantFailure bool) {
	const writers, appends = 8, 100
	mem := vfs.NewCrashableMem()
	s, err := pebblestore.Open("db", pebblestore.Options{FS: errorfs.Wrap(pebblestore.WithoutWALRecycling(mem), inj), Logger: testLogger(t), Tune: smallMemtables})
	if err != nil {
		t.Fatal(err)
	}
	inj.armed.Store(true)
	acked := make([]atomic.Uint64, writers)
	var failures atomic.Int32
	var wg sync.WaitGroup
	unexpected := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			var expected uint64
			for j := range appends {
				seq, err := appendBatch(s, w, j, expected)
				if err != nil {
					failures.Add(1)
					if !errors.Is(err, pebblestore.ErrFailed) {
						unexpected <- fmt.Errorf("writer %d: Append failed with %v, want ErrFailed", w, err)
					}
					return
				}
				expected = seq
				acked[w].Store(seq)
			}
		})
	}
	wg.Wait()
	close(unexpected)
	for err := range unexpected {
		t.Error(err)
	}
	if inj.count.Load() == 0 {
		t.Fatal("no write met the injector")
	}
	if !wantFailure {
		if failures.Load() != 0 {
			t.Fatalf("%d appends failed", failures.Load())
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		checkRecovered(t, "after table write failures", crashPoint{mem, snapshotAcked(acked)})
		return
	}
	if failures.Load() == 0 {
		t.Fatal("no append failed")
	}
	// The failed store refuses everything.
	ctx := context.Background()
	if _, err := s.Append(ctx, persistence.Append{Stream: writerStream(0), Expected: acked[0].Load()}); !errors.Is(err, pebblestore.ErrFailed) {
		t.Fatalf("Append on a failed store: %v, want ErrFailed", err)
	}
	if err := s.Load(ctx, writerStream(0), 0, func(persistence.Event) error { return nil }); !errors.Is(err, pebblestore.ErrFailed) {
		t.Fatalf("Load on a failed store: %v, want ErrFailed", err)
	}
	if _, err := s.GetProduct(ctx, "p"); !errors.Is(err, pebblestore.ErrFailed) {
		t.Fatalf("GetProduct on a failed store: %v, want ErrFailed", err)
	}
	// The process dies: what the disk holds is what recovery sees.
	rng := rand.New(rand.NewPCG(uint64(inj.failAt), 9))
	for i := range 3 {
		img := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: []int{0, 50, 100}[i], RNG: rand.New(rand.NewPCG(rng.Uint64(), 0))})
		checkRecovered(t, fmt.Sprintf("image %d", i), crashPoint{img, snapshotAcked(acked)})
	}
	if err := s.Close(); !errors.Is(err, pebblestore.ErrFailed) && err != nil {
		t.Logf("Close of the failed store: %v", err)
	}
}
