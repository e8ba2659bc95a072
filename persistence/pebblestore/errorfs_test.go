package pebblestore_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
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

func tableWrites(op errorfs.Op) bool { return strings.HasSuffix(op.Path, ".sst") }

// TestWriteFailures injects failing table writes (flushes, compactions) while
// writers append: Pebble retries them, every append succeeds, and the disk
// recovers with every acknowledged append.
func TestWriteFailures(t *testing.T) {
	// WAL write and sync failures are fatal: the store exits the process
	// (Options.OnFatal), so they cannot be injected in this process; a
	// subprocess test of them is still to be written.
	// Failing table writes (flush, compaction) are background errors that
	// Pebble retries: appends go on.
	t.Run("table-writes", func(t *testing.T) {
		testWriteFailure(t, &diskFailure{failAt: 1, upTo: 5, match: tableWrites})
	})
}

func testWriteFailure(t *testing.T, inj *diskFailure) {
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
	if failures.Load() != 0 {
		t.Fatalf("%d appends failed", failures.Load())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, "after table write failures", crashPoint{mem, snapshotAcked(acked)})
}
