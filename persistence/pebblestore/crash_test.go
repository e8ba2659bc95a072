package pebblestore_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pebblestore"
)

// smallMemtables makes Pebble flush and compact often, so that crashes hit
// flushes and compactions too.
func smallMemtables(o *pebble.Options) {
	o.MemTableSize = 256 << 10
	o.L0CompactionThreshold = 2
}

func openFS(t testing.TB, fs vfs.FS) *pebblestore.Store {
	t.Helper()
	s, err := pebblestore.Open("db", pebblestore.Options{FS: fs, Logger: testLogger(t), Tune: smallMemtables})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func writerStream(w int) persistence.Stream {
	return persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("w%03d", w)}
}

// crashPayload describes its event: writer, sequence number, the last
// sequence number of its batch and whether the batch set the active mark,
// padded to make the store flush now and then.
func crashPayload(w int, seq, end uint64, mark bool) []byte {
	b := binary.AppendUvarint(nil, uint64(w))
	b = binary.AppendUvarint(b, seq)
	b = binary.AppendUvarint(b, end)
	if mark {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	return append(b, make([]byte, 200)...)
}

func parseCrashPayload(p []byte) (w int, seq, end uint64, mark bool, err error) {
	var f [3]uint64
	for i := range f {
		v, n := binary.Uvarint(p)
		if n <= 0 {
			return 0, 0, 0, false, errors.New("bad payload")
		}
		f[i], p = v, p[n:]
	}
	if len(p) == 0 {
		return 0, 0, 0, false, errors.New("bad payload")
	}
	return int(f[0]), f[1], f[2], p[0] == 1, nil
}

// appendBatch appends batch j of writer w (1 to 3 events) after expected,
// with the record "end" holding the batch's last sequence number.
func appendBatch(s persistence.EventStore, w, j int, expected uint64) (uint64, error) {
	n := uint64(1 + j%3)
	mark := j%2 == 0
	var evs []persistence.Event
	for i := uint64(1); i <= n; i++ {
		evs = append(evs, persistence.Event{Type: persistence.EventTypeDevice, Version: 1, At: int64(j), Payload: crashPayload(w, expected+i, expected+n, mark)})
	}
	end := persistence.Record{Key: []byte("end"), Type: persistence.RecordTypeState, Version: 1, Payload: binary.AppendUvarint(nil, expected+n)}
	return s.Append(context.Background(), persistence.Append{Stream: writerStream(w), Expected: expected, Events: evs, Records: []persistence.Record{end}, Active: &mark})
}

// crashPoint is a crash image and what had been acknowledged before it.
type crashPoint struct {
	fs    *vfs.MemFS
	acked []uint64 // per writer
}

// checkRecovered opens the image and checks that every acknowledged append
// is there, in order, without gaps, that each stream ends on a whole batch
// and that its record and active mark match the last batch.
func checkRecovered(t *testing.T, name string, cp crashPoint) {
	t.Helper()
	s, err := pebblestore.Open("db", pebblestore.Options{FS: cp.fs, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("%s: reopening the crash image: %v", name, err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Verify(ctx); err != nil {
		t.Fatalf("%s: Verify: %v", name, err)
	}
	var marked []string
	if err := s.Active(ctx, persistence.KindDevice, func(id string) error { marked = append(marked, id); return nil }); err != nil {
		t.Fatalf("%s: Active: %v", name, err)
	}
	for w, acked := range cp.acked {
		st := writerStream(w)
		var last, end uint64
		var mark bool
		err := s.Load(ctx, st, 0, func(e persistence.Event) error {
			pw, seq, pend, pmark, err := parseCrashPayload(e.Payload)
			if err != nil || pw != w || seq != e.Seq {
				return fmt.Errorf("event %d of %s has payload %x (%v)", e.Seq, st, e.Payload, err)
			}
			last, end, mark = e.Seq, pend, pmark
			return nil
		})
		if err != nil {
			t.Fatalf("%s: Load(%s): %v", name, st, err)
		}
		if last < acked {
			t.Fatalf("%s: stream %s ends at %d, but %d was acknowledged before the crash", name, st, last, acked)
		}
		if last != end {
			t.Fatalf("%s: stream %s ends at %d inside a batch ending at %d: a torn batch", name, st, last, end)
		}
		var recEnd uint64
		err = s.LoadRecords(ctx, st, func(r persistence.Record) error {
			v, n := binary.Uvarint(r.Payload)
			if string(r.Key) != "end" || n != len(r.Payload) {
				return fmt.Errorf("record %q = %x", r.Key, r.Payload)
			}
			recEnd = v
			return nil
		})
		if err != nil {
			t.Fatalf("%s: LoadRecords(%s): %v", name, st, err)
		}
		if recEnd != last {
			t.Fatalf("%s: stream %s ends at %d, its record says %d: records and events of a batch came apart", name, st, last, recEnd)
		}
		if got := slices.Contains(marked, st.ID); last > 0 && got != mark {
			t.Fatalf("%s: stream %s: active mark %v, but its last batch set it %v", name, st, got, mark)
		}
	}
}

func snapshotAcked(acked []atomic.Uint64) []uint64 {
	out := make([]uint64, len(acked))
	for i := range acked {
		out[i] = acked[i].Load()
	}
	return out
}

// TestCrashManyWriters crashes (CrashClone) at many points while many
// goroutines append, then recovers every image.
func TestCrashManyWriters(t *testing.T) {
	writers, appends := 16, 60
	if testing.Short() {
		writers, appends = 8, 20
	}
	fs := vfs.NewCrashableMem()
	s := openFS(t, fs)
	defer s.Close()
	acked := make([]atomic.Uint64, writers)
	progress := make(chan struct{}, 1)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			var expected uint64
			for j := range appends {
				seq, err := appendBatch(s, w, j, expected)
				if err != nil {
					errs <- err
					return
				}
				expected = seq
				acked[w].Store(seq)
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	rng := rand.New(rand.NewPCG(1, 2))
	var points []crashPoint
	for finished := false; !finished; {
		select {
		case <-progress:
		case <-done:
			finished = true
		}
		before := snapshotAcked(acked)
		img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 0))})
		points = append(points, crashPoint{img, before})
	}
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(points) < 10 {
		t.Logf("only %d crash points", len(points))
	}
	for i, cp := range points {
		checkRecovered(t, fmt.Sprintf("crash point %d", i), cp)
	}
	t.Logf("%d crash points checked", len(points))
}

// TestCrashAfterEveryAppend crashes after every acknowledged append of a few
// concurrent writers.
func TestCrashAfterEveryAppend(t *testing.T) {
	const writers, appends = 4, 20
	fs := vfs.NewCrashableMem()
	s := openFS(t, fs)
	defer s.Close()
	acked := make([]atomic.Uint64, writers)
	var mu sync.Mutex
	var points []crashPoint
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			var expected uint64
			for j := range appends {
				seq, err := appendBatch(s, w, j, expected)
				if err != nil {
					errs <- err
					return
				}
				expected = seq
				acked[w].Store(seq)
				before := snapshotAcked(acked)
				img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 0))})
				mu.Lock()
				points = append(points, crashPoint{img, before})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, cp := range points {
		checkRecovered(t, fmt.Sprintf("crash point %d", i), cp)
	}
}

// TestCrashDuringBlobWrite crashes in the middle of a blob write: the
// reopened store has no trace of it.
func TestCrashDuringBlobWrite(t *testing.T) {
	fs := vfs.NewCrashableMem()
	s := openFS(t, fs)
	defer s.Close()
	var img *vfs.MemFS
	r := &crashingReader{n: 40 * persistence.BlobChunkSize, crashAt: 20 * persistence.BlobChunkSize, crash: func() {
		img = fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 1))})
	}}
	if _, _, err := s.WriteBlob(context.Background(), "fw", r, 1<<30); err != nil {
		t.Fatal(err)
	}
	if img == nil {
		t.Fatal("no crash image")
	}
	if keys := rawKeys(t, img.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 100, RNG: rand.New(rand.NewPCG(1, 1))}), "b/", "r/w/"); len(keys) < 10 {
		t.Fatalf("the crash image holds %d blob keys; want the marker and the chunks written so far", len(keys))
	}
	s2 := openFS(t, img)
	if _, err := s2.OpenBlob(context.Background(), "fw"); !errors.Is(err, persistence.ErrNotFound) {
		t.Fatalf("OpenBlob of a blob whose write crashed: %v, want ErrNotFound", err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if keys := rawKeys(t, img, "b/", "r/w/", "r/b/"); len(keys) != 0 {
		t.Fatalf("after recovery the store still holds %d blob keys, first %q", len(keys), keys[0])
	}
}

// crashingReader yields n zero-ish bytes and calls crash once past crashAt.
type crashingReader struct {
	n, off, crashAt int
	crash           func()
}

func (r *crashingReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	if r.off >= r.crashAt && r.crash != nil {
		r.crash()
		r.crash = nil
	}
	k := min(len(p), r.n-r.off, 4096)
	for i := range k {
		p[i] = byte(r.off + i)
	}
	r.off += k
	return k, nil
}

// TestCrashUnsyncedAppends crashes while writers mix synced and unsynced
// (NoSync) appends: a recovered stream is a whole-batch prefix of what was
// written, and holds every synced append and every unsynced one that returned
// before a synced append (of any stream) began.
func TestCrashUnsyncedAppends(t *testing.T) {
	writers, appends := 8, 60
	if testing.Short() {
		writers, appends = 4, 30
	}
	fs := vfs.NewCrashableMem()
	s := openFS(t, fs)
	defer s.Close()
	returned := make([]atomic.Uint64, writers) // every append that returned
	var mu sync.Mutex
	durable := make([]uint64, writers) // what a crash must keep
	var pointsMu sync.Mutex
	var points []crashPoint
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 5))
			var expected uint64
			for j := range appends {
				synced := j%3 == 2
				before := snapshotAcked(returned)
				n := uint64(1 + j%2)
				mark := j%2 == 0
				var evs []persistence.Event
				for i := uint64(1); i <= n; i++ {
					evs = append(evs, persistence.Event{Type: persistence.EventTypeDevice, Version: 1, At: int64(j), Payload: crashPayload(w, expected+i, expected+n, mark)})
				}
				end := persistence.Record{Key: []byte("end"), Type: persistence.RecordTypeState, Version: 1, Payload: binary.AppendUvarint(nil, expected+n)}
				seq, err := s.Append(context.Background(), persistence.Append{Stream: writerStream(w), Expected: expected, Events: evs, Records: []persistence.Record{end}, Active: &mark, NoSync: !synced})
				if err != nil {
					errs <- err
					return
				}
				expected = seq
				returned[w].Store(seq)
				if synced {
					mu.Lock()
					for k, b := range before {
						durable[k] = max(durable[k], b)
					}
					durable[w] = seq
					mu.Unlock()
				}
				if rng.IntN(4) == 0 {
					mu.Lock()
					must := slices.Clone(durable)
					mu.Unlock()
					img := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: rng.IntN(101), RNG: rand.New(rand.NewPCG(rng.Uint64(), 0))})
					pointsMu.Lock()
					points = append(points, crashPoint{img, must})
					pointsMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if synced, unsynced := s.Appends(); synced == 0 || unsynced <= synced {
		t.Fatalf("Appends = %d synced, %d unsynced; want both, more unsynced", synced, unsynced)
	}
	for i, cp := range points {
		checkRecovered(t, fmt.Sprintf("crash point %d", i), cp)
	}
	t.Logf("%d crash points checked", len(points))
}
