// Package persistencetest is the contract suite of persistence.Store: every
// implementation (memstore, pebblestore, pgstore) runs
//
//	persistencetest.Run(t, func(t *testing.T) persistence.Store { ... })
//
// and must pass it. The suite covers the journal (ordering, Expected and
// ErrConflict, concurrent appends, Load after N, snapshots, active marks,
// closed stores, invalid IDs, appends marked NoSync, state records written
// with an append's events, all or none) and the registry (CRUD, paging, all-or-nothing
// CreateDevices, references, credentials, blobs), sessions and, for a store
// that implements persistence.Lister, its listings; for one that implements
// persistence.NodeSessions, which node holds each session, and for one that
// implements persistence.SharedSecrets, the secrets of a cluster. Each subtest opens its own
// store; the suite closes it. It is for tests only.
package persistencetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/otafleet/otafleet/persistence"
)

// Open returns a new, empty store for one subtest.
type Open func(t *testing.T) persistence.Store

// Run runs the contract suite against the stores open returns.
func Run(t *testing.T, open Open) {
	for _, c := range []struct {
		name string
		fn   func(*testing.T, persistence.Store)
	}{
		{"AppendLoad", testAppendLoad},
		{"LoadAfter", testLoadAfter},
		{"Conflict", testConflict},
		{"ConflictWarm", testConflictWarm},
		{"ConflictAfterFailedAppend", testConflictAfterFailedAppend},
		{"NoSync", testNoSync},
		{"ConcurrentSameStream", testConcurrentSameStream},
		{"ConcurrentStreams", testConcurrentStreams},
		{"PayloadsAreCopied", testPayloadsCopied},
		{"EmptyAppend", testEmptyAppend},
		{"Snapshots", testSnapshots},
		{"Records", testRecords},
		{"RecordsAtomic", testRecordsAtomic},
		{"ActiveMarks", testActive},
		{"InvalidIDs", testInvalidIDs},
		{"CancelledContext", testCancelled},
		{"Products", testProducts},
		{"Devices", testDevices},
		{"CreateDevices", testCreateDevices},
		{"CreateDevicesMax", testCreateDevicesMax},
		{"Groups", testGroups},
		{"Tasks", testTasks},
		{"Packages", testPackages},
		{"Paging", testPaging},
		{"Blobs", testBlobs},
		{"BlobTooLarge", testBlobTooLarge},
		{"BlobReaderFails", testBlobReaderFails},
		{"BlobDeleteWhileOpen", testBlobDeleteWhileOpen},
		{"Sessions", testSessions},
		{"NodeSessions", testNodeSessions},
		{"SharedSecrets", testSharedSecrets},
		{"Lister", testLister},
		{"Closed", testClosed},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() { _ = s.Close() })
			c.fn(t, s)
		})
	}
}

var (
	dev1 = persistence.Stream{Kind: persistence.KindDevice, ID: "dev-1"}
	dev2 = persistence.Stream{Kind: persistence.KindDevice, ID: "dev-2"}
)

// ev is a test event whose fields derive from n.
func ev(n int) persistence.Event {
	return persistence.Event{
		Type: persistence.EventTypeDevice, Version: uint32(n % 3), At: int64(n) * 1e9,
		Payload: []byte(fmt.Sprintf("payload-%d", n)),
	}
}

func evs(from, to int) []persistence.Event {
	var out []persistence.Event
	for n := from; n <= to; n++ {
		out = append(out, ev(n))
	}
	return out
}

func mustAppend(t *testing.T, s persistence.EventStore, a persistence.Append) uint64 {
	t.Helper()
	seq, err := s.Append(context.Background(), a)
	if err != nil {
		t.Fatalf("Append(%s, expected %d, %d events): %v", a.Stream, a.Expected, len(a.Events), err)
	}
	return seq
}

func load(t *testing.T, s persistence.EventStore, st persistence.Stream, after uint64) []persistence.Event {
	t.Helper()
	var out []persistence.Event
	if err := s.Load(context.Background(), st, after, func(e persistence.Event) error {
		out = append(out, e)
		return nil
	}); err != nil {
		t.Fatalf("Load(%s, after %d): %v", st, after, err)
	}
	return out
}

// checkEvents compares loaded events with ev(first), ev(first+1), ... at
// sequence numbers seq, seq+1, ...
func checkEvents(t *testing.T, got []persistence.Event, seq uint64, first, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("loaded %d events, want %d", len(got), n)
	}
	for i, e := range got {
		want := ev(first + i)
		want.Seq = seq + uint64(i)
		if e.Seq != want.Seq || e.Type != want.Type || e.Version != want.Version || e.At != want.At || !bytes.Equal(e.Payload, want.Payload) {
			t.Fatalf("event %d = %+v, want %+v", i, e, want)
		}
	}
}

func isErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func ok(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func testAppendLoad(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 3)}); got != 3 {
		t.Fatalf("first Append returned %d, want 3", got)
	}
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 3, Events: evs(4, 4)}); got != 4 {
		t.Fatalf("second Append returned %d, want 4", got)
	}
	mustAppend(t, s, persistence.Append{Stream: dev2, Events: evs(100, 101)})
	// Same ID, another kind: a separate stream.
	cell := persistence.Stream{Kind: persistence.KindCell, ID: "dev-1"}
	mustAppend(t, s, persistence.Append{Stream: cell, Events: evs(200, 200)})

	checkEvents(t, load(t, s, dev1, 0), 1, 1, 4)
	checkEvents(t, load(t, s, dev2, 0), 1, 100, 2)
	checkEvents(t, load(t, s, cell, 0), 1, 200, 1)
	if got := load(t, s, persistence.Stream{Kind: persistence.KindTask, ID: "none"}, 0); len(got) != 0 {
		t.Fatalf("Load of an empty stream = %v", got)
	}
	// A stream whose ID extends another's does not leak into it.
	mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: "dev-10"}, Events: evs(300, 300)})
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 4)

	for st, want := range map[persistence.Stream]uint64{dev1: 4, dev2: 2, cell: 1, {Kind: persistence.KindTask, ID: "none"}: 0} {
		got, err := s.LastSeq(ctx, st)
		ok(t, "LastSeq", err)
		if got != want {
			t.Errorf("LastSeq(%s) = %d, want %d", st, got, want)
		}
	}
	// fn's error stops Load and comes back.
	stop := errors.New("stop")
	calls := 0
	err := s.Load(ctx, dev1, 0, func(persistence.Event) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Load with a failing fn: %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func testLoadAfter(t *testing.T, s persistence.Store) {
	const n = 300
	expected := uint64(0)
	for i := 1; i <= n; i += 10 {
		expected = mustAppend(t, s, persistence.Append{Stream: dev1, Expected: expected, Events: evs(i, i+9)})
	}
	for _, after := range []uint64{0, 1, 9, 10, 150, 299, 300, 301, 1 << 40, ^uint64(0)} {
		got := load(t, s, dev1, after)
		if after >= n {
			if len(got) != 0 {
				t.Fatalf("Load after %d returned %d events", after, len(got))
			}
			continue
		}
		checkEvents(t, got, after+1, int(after)+1, n-int(after))
	}
}

func testConflict(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 2)})
	for _, expected := range []uint64{0, 1, 3, 100} {
		_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: expected, Events: evs(9, 9), Active: new(true)})
		isErr(t, fmt.Sprintf("Append expecting %d of a stream at 2", expected), err, persistence.ErrConflict)
	}
	_, err := s.Append(ctx, persistence.Append{Stream: dev2, Expected: 1, Events: evs(9, 9)})
	isErr(t, "Append expecting 1 of an empty stream", err, persistence.ErrConflict)
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 2)
	if got := load(t, s, dev2, 0); len(got) != 0 {
		t.Fatalf("a conflicting append wrote %v", got)
	}
	if ids := active(t, s, persistence.KindDevice); len(ids) != 0 {
		t.Fatalf("a conflicting append set marks %v", ids)
	}
}

// testConflictWarm fences a second writer once the store has seen the stream
// (a store may keep its last sequence number in memory): stale writers
// conflict whichever of them wrote last, after a mark is set or cleared, and
// after unsynced appends.
func testConflictWarm(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	a := mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 2), Active: new(true)})
	_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: 0, Events: evs(9, 9)})
	isErr(t, "a second writer expecting an empty stream", err, persistence.ErrConflict)
	b, err := s.LastSeq(ctx, dev1)
	ok(t, "LastSeq", err)
	b = mustAppend(t, s, persistence.Append{Stream: dev1, Expected: b, Events: evs(3, 3)}) // the second writer takes over
	_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: a, Events: evs(9, 9)})
	isErr(t, "the first writer after the second wrote", err, persistence.ErrConflict)
	b = mustAppend(t, s, persistence.Append{Stream: dev1, Expected: b, Events: evs(4, 4), Active: new(false)})
	_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: a, Events: evs(9, 9)})
	isErr(t, "a stale writer after the mark was cleared", err, persistence.ErrConflict)
	b = mustAppend(t, s, persistence.Append{Stream: dev1, Expected: b, Events: evs(5, 6), NoSync: true})
	_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: b - 2, Events: evs(9, 9), NoSync: true})
	isErr(t, "a stale writer after an unsynced append", err, persistence.ErrConflict)
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: b, Events: evs(7, 7)}); got != 7 {
		t.Fatalf("Append after 6 events returned %d, want 7", got)
	}
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 7)
}

// testConflictAfterFailedAppend checks that failed appends (a conflict, a
// cancelled context, an invalid stream) leave the stream's sequence where it
// was: the writer's Expected still works, and a guess past it conflicts.
func testConflictAfterFailedAppend(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 2)})
	_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: 1, Events: evs(9, 9)})
	isErr(t, "Append expecting 1 of a stream at 2", err, persistence.ErrConflict)
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Append(cancelled, persistence.Append{Stream: dev1, Expected: 2, Events: evs(9, 9)}); err == nil {
		t.Fatal("Append with a cancelled context succeeded")
	}
	for _, expected := range []uint64{1, 3} {
		_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: expected, Events: evs(9, 9)})
		isErr(t, fmt.Sprintf("Append expecting %d after failed appends at 2", expected), err, persistence.ErrConflict)
	}
	mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 2, Events: evs(3, 3)})
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 3)
}

// testNoSync checks that an unsynced append is an append like any other
// while the store runs: numbered, ordered, visible to Load and LastSeq, its
// mark set, and counted apart by stores that count appends.
func testNoSync(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	var synced0, unsynced0 uint64
	counter, counts := s.(persistence.AppendCounter)
	if counts {
		synced0, unsynced0 = counter.Appends()
	}
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 1)})
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 1, Events: evs(2, 3), Active: new(true), NoSync: true}); got != 3 {
		t.Fatalf("unsynced Append returned %d, want 3", got)
	}
	mustAppend(t, s, persistence.Append{Stream: dev2, Events: evs(1, 1), NoSync: true})
	if last, err := s.LastSeq(ctx, dev1); err != nil || last != 3 {
		t.Fatalf("LastSeq after an unsynced append = %d, %v; want 3", last, err)
	}
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 3)
	if ids := active(t, s, persistence.KindDevice); !slices.Equal(ids, []string{"dev-1"}) {
		t.Fatalf("Active after an unsynced append = %v, want [dev-1]", ids)
	}
	_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: 2, Events: evs(9, 9), NoSync: true})
	isErr(t, "an unsynced Append with a stale Expected", err, persistence.ErrConflict)
	if counts {
		synced, unsynced := counter.Appends()
		if synced-synced0 != 1 || unsynced-unsynced0 != 2 {
			t.Fatalf("Appends counted %d synced, %d unsynced; want 1 and 2", synced-synced0, unsynced-unsynced0)
		}
	}
}

func testConcurrentSameStream(t *testing.T, s persistence.Store) {
	const writers, rounds = 8, 20
	var expected uint64
	for round := range rounds {
		var wg sync.WaitGroup
		results := make([]error, writers)
		seqs := make([]uint64, writers)
		for w := range writers {
			wg.Go(func() {
				seqs[w], results[w] = s.Append(context.Background(), persistence.Append{
					Stream: dev1, Expected: expected, Events: []persistence.Event{ev(round*writers + w)},
				})
			})
		}
		wg.Wait()
		winner := -1
		for w, err := range results {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("round %d: writers %d and %d both appended after %d", round, winner, w, expected)
			case err == nil:
				winner = w
			case !errors.Is(err, persistence.ErrConflict):
				t.Fatalf("round %d: writer %d: %v, want nil or ErrConflict", round, w, err)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no writer won", round)
		}
		expected++
		if seqs[winner] != expected {
			t.Fatalf("round %d: winner got seq %d, want %d", round, seqs[winner], expected)
		}
		got := load(t, s, dev1, expected-1)
		if len(got) != 1 || !bytes.Equal(got[0].Payload, ev(round*writers+winner).Payload) {
			t.Fatalf("round %d: stored %v, want the winner's event", round, got)
		}
	}
}

func testConcurrentStreams(t *testing.T, s persistence.Store) {
	const streams, appends = 32, 10
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		st := persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("d%02d", i)}
		wg.Go(func() {
			var expected uint64
			for j := range appends {
				seq, err := s.Append(context.Background(), persistence.Append{Stream: st, Expected: expected, Events: evs(2*j, 2*j+1), Active: new(j%2 == 0)})
				if err != nil {
					errs <- fmt.Errorf("%s append %d: %w", st, j, err)
					return
				}
				expected = seq
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range streams {
		st := persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("d%02d", i)}
		checkEvents(t, load(t, s, st, 0), 1, 0, 2*appends)
	}
	if ids := active(t, s, persistence.KindDevice); len(ids) != 0 { // the last append of each cleared its mark
		t.Fatalf("marks left: %v", ids)
	}
}

func testPayloadsCopied(t *testing.T, s persistence.Store) {
	e := ev(1)
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: []persistence.Event{e}})
	e.Payload[0] = 'X'
	got := load(t, s, dev1, 0)
	checkEvents(t, got, 1, 1, 1)
	got[0].Payload[0] = 'Y'
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 1)
}

func testEmptyAppend(t *testing.T, s persistence.Store) {
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 2)})
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 2}); got != 2 {
		t.Fatalf("empty Append returned %d, want 2", got)
	}
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 2, Active: new(true)}); got != 2 {
		t.Fatalf("mark-only Append returned %d, want 2", got)
	}
	if ids := active(t, s, persistence.KindDevice); !slices.Equal(ids, []string{"dev-1"}) {
		t.Fatalf("Active = %v, want [dev-1]", ids)
	}
	_, err := s.Append(context.Background(), persistence.Append{Stream: dev1, Expected: 1})
	isErr(t, "empty Append with a wrong Expected", err, persistence.ErrConflict)
}

func testSnapshots(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	if _, found, err := s.LoadSnapshot(ctx, dev1); err != nil || found {
		t.Fatalf("LoadSnapshot of a new stream = found %v, %v", found, err)
	}
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 10)})
	err := s.SaveSnapshot(ctx, dev1, persistence.Snapshot{Seq: 11, Type: persistence.SnapshotTypeState})
	isErr(t, "SaveSnapshot past the last event", err, persistence.ErrInvalid)
	for _, seq := range []uint64{4, 10, 0} {
		want := persistence.Snapshot{Seq: seq, Type: persistence.SnapshotTypeState, Version: 2, Payload: []byte(fmt.Sprintf("state@%d", seq))}
		ok(t, "SaveSnapshot", s.SaveSnapshot(ctx, dev1, want))
		want.Payload[0] = 'X' // the store keeps its own copy
		want.Payload[0] = 's'
		got, found, err := s.LoadSnapshot(ctx, dev1)
		if err != nil || !found || got.Seq != want.Seq || got.Type != want.Type || got.Version != want.Version || !bytes.Equal(got.Payload, want.Payload) {
			t.Fatalf("LoadSnapshot = %+v, %v, %v; want %+v", got, found, err, want)
		}
		checkEvents(t, load(t, s, dev1, got.Seq), got.Seq+1, int(got.Seq)+1, 10-int(got.Seq))
	}
	if _, found, _ := s.LoadSnapshot(ctx, dev2); found {
		t.Fatal("another stream has dev-1's snapshot")
	}
}

// rec is a test record: key k, its payload and type derived from n.
func rec(k string, n int) persistence.Record {
	return persistence.Record{Key: []byte(k), Type: persistence.RecordTypeState + uint32(n%5), Version: uint32(n % 3), Payload: []byte(fmt.Sprintf("value-%d", n))}
}

func del(k string) persistence.Record { return persistence.Record{Key: []byte(k), Delete: true} }

func records(t *testing.T, s persistence.EventStore, st persistence.Stream) []persistence.Record {
	t.Helper()
	var out []persistence.Record
	ok(t, "LoadRecords", s.LoadRecords(context.Background(), st, func(r persistence.Record) error {
		out = append(out, r)
		return nil
	}))
	return out
}

// checkRecords compares st's records with want (in key order).
func checkRecords(t *testing.T, s persistence.EventStore, st persistence.Stream, want ...persistence.Record) {
	t.Helper()
	got := records(t, s, st)
	same := len(got) == len(want)
	for i := 0; same && i < len(got); i++ {
		g, w := got[i], want[i]
		same = bytes.Equal(g.Key, w.Key) && g.Type == w.Type && g.Version == w.Version && bytes.Equal(g.Payload, w.Payload) && !g.Delete
	}
	if !same {
		t.Fatalf("records of %s = %v, want %v", st, got, want)
	}
}

// testRecords: records are written with an append (with or without
// events), replaced, deleted, listed in key byte order per stream, and the
// store keeps its own copies.
func testRecords(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	checkRecords(t, s, dev1)
	// Keys are any bytes: '/', NUL and 0xff included; order is byte order.
	k0, k1, kSlash, kHigh := "\x00\x01", "b", "a/b", "\xff"
	long := strings.Repeat("k", persistence.MaxRecordKeyLen)
	r := rec(k1, 1)
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 2), Records: []persistence.Record{r, rec(kSlash, 2), rec(kHigh, 3), rec(k0, 4), rec(long, 5)}})
	r.Payload[0] = 'X' // the store keeps its own copy
	checkRecords(t, s, dev1, rec(k0, 4), rec(kSlash, 2), rec(k1, 1), rec(long, 5), rec(kHigh, 3))
	got := records(t, s, dev1)
	got[0].Payload[0], got[0].Key[0] = 'Y', 'Y'
	checkRecords(t, s, dev1, rec(k0, 4), rec(kSlash, 2), rec(k1, 1), rec(long, 5), rec(kHigh, 3))
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 2)

	// Records without events: the sequence number stays; replaced and
	// deleted ones (deleting a missing key is harmless), unsynced too.
	if seq := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 2, Records: []persistence.Record{rec(k1, 6), del(kSlash), del("missing")}}); seq != 2 {
		t.Fatalf("a records-only Append returned %d, want 2", seq)
	}
	checkRecords(t, s, dev1, rec(k0, 4), rec(k1, 6), rec(long, 5), rec(kHigh, 3))
	mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 2, Events: evs(3, 3), Records: []persistence.Record{del(k0), rec(kSlash, 7)}, NoSync: true})
	checkRecords(t, s, dev1, rec(kSlash, 7), rec(k1, 6), rec(long, 5), rec(kHigh, 3))
	// A record deleted and set again in one append ends set (order holds).
	mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 3, Records: []persistence.Record{del(k1), rec(k1, 8)}})
	checkRecords(t, s, dev1, rec(kSlash, 7), rec(k1, 8), rec(long, 5), rec(kHigh, 3))

	// Streams do not share records, whatever their IDs and kinds.
	for _, st := range []persistence.Stream{dev2, {Kind: persistence.KindDevice, ID: "dev"}, {Kind: persistence.KindDevice, ID: "dev-10"}, {Kind: persistence.KindTask, ID: "dev-1"}} {
		checkRecords(t, s, st)
	}
	ab := persistence.Stream{Kind: persistence.KindTask, ID: "a"}
	abc := persistence.Stream{Kind: persistence.KindTask, ID: "ab"}
	mustAppend(t, s, persistence.Append{Stream: ab, Records: []persistence.Record{rec("c", 9)}})
	mustAppend(t, s, persistence.Append{Stream: abc, Records: []persistence.Record{rec("d", 10)}})
	checkRecords(t, s, ab, rec("c", 9))
	checkRecords(t, s, abc, rec("d", 10))

	// A failing fn stops LoadRecords with its error.
	stop := errors.New("stop")
	isErr(t, "LoadRecords with a failing fn", s.LoadRecords(ctx, dev1, func(persistence.Record) error { return stop }), stop)
}

// testRecordsAtomic: an append that fails (a conflict, an invalid record
// key) writes none of its records, events or mark.
func testRecordsAtomic(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 1), Records: []persistence.Record{rec("a", 1)}})
	_, err := s.Append(ctx, persistence.Append{Stream: dev1, Expected: 0, Events: evs(2, 2), Records: []persistence.Record{rec("a", 2), rec("b", 3)}, Active: new(true)})
	isErr(t, "Append with records and a stale Expected", err, persistence.ErrConflict)
	_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: 0, Records: []persistence.Record{del("a")}})
	isErr(t, "records-only Append with a stale Expected", err, persistence.ErrConflict)
	for _, bad := range []persistence.Record{{}, {Key: []byte{}}, {Key: bytes.Repeat([]byte("k"), persistence.MaxRecordKeyLen+1)}, {Key: nil, Delete: true}} {
		_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: 1, Events: evs(2, 2), Records: []persistence.Record{rec("b", 4), bad}, Active: new(true)})
		isErr(t, fmt.Sprintf("Append with record key %q", bad.Key), err, persistence.ErrInvalid)
	}
	checkRecords(t, s, dev1, rec("a", 1))
	checkEvents(t, load(t, s, dev1, 0), 1, 1, 1)
	if ids := active(t, s, persistence.KindDevice); len(ids) != 0 {
		t.Fatalf("failed appends set marks %v", ids)
	}
	if got := mustAppend(t, s, persistence.Append{Stream: dev1, Expected: 1, Events: evs(2, 2), Records: []persistence.Record{rec("b", 4)}}); got != 2 {
		t.Fatalf("Append after the failures returned %d, want 2", got)
	}
	checkRecords(t, s, dev1, rec("a", 1), rec("b", 4))
}

func active(t *testing.T, s persistence.EventStore, kind persistence.Kind) []string {
	t.Helper()
	var ids []string
	ok(t, "Active", s.Active(context.Background(), kind, func(id string) error {
		ids = append(ids, id)
		return nil
	}))
	return ids
}

func testActive(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	for _, id := range []string{"b", "a", "c", "ab"} {
		mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: id}, Events: evs(1, 1), Active: new(true)})
	}
	mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindTask, ID: "t1"}, Events: evs(1, 1), Active: new(true)})
	if got, want := active(t, s, persistence.KindDevice), []string{"a", "ab", "b", "c"}; !slices.Equal(got, want) {
		t.Fatalf("Active(devices) = %v, want %v", got, want)
	}
	// Cleared in the same batch as an event.
	mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: "b"}, Expected: 1, Events: evs(2, 2), Active: new(false)})
	// Setting twice is harmless; clearing an unset mark too.
	mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: "a"}, Expected: 1, Events: evs(2, 2), Active: new(true)})
	mustAppend(t, s, persistence.Append{Stream: persistence.Stream{Kind: persistence.KindDevice, ID: "z"}, Events: evs(1, 1), Active: new(false)})
	if got, want := active(t, s, persistence.KindDevice), []string{"a", "ab", "c"}; !slices.Equal(got, want) {
		t.Fatalf("Active(devices) = %v, want %v", got, want)
	}
	if got, want := active(t, s, persistence.KindTask), []string{"t1"}; !slices.Equal(got, want) {
		t.Fatalf("Active(tasks) = %v, want %v", got, want)
	}
	if got := active(t, s, persistence.KindCell); len(got) != 0 {
		t.Fatalf("Active(cells) = %v", got)
	}
	stop := errors.New("stop")
	isErr(t, "Active with a failing fn", s.Active(ctx, persistence.KindDevice, func(string) error { return stop }), stop)
	isErr(t, "Active of an unknown kind", s.Active(ctx, "x", func(string) error { return nil }), persistence.ErrInvalid)
}

// badIDs are IDs no method accepts.
var badIDs = []string{"", "a/b", "/", strings.Repeat("x", persistence.MaxIDLen+1), "tab\there", "nul\x00"}

// badDeviceIDs are valid IDs that no device may have.
var badDeviceIDs = []string{"a+b", "#", "evil\u202egpj.exe", "zero\u200bwidth", "c1\u0085", "bad\xffutf8"}

func testInvalidIDs(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	streams := []persistence.Stream{{Kind: "x", ID: "ok"}, {Kind: "", ID: "ok"}, {Kind: "d/e", ID: "ok"}}
	for _, id := range badIDs {
		streams = append(streams, persistence.Stream{Kind: persistence.KindDevice, ID: id})
	}
	for _, st := range streams {
		what := fmt.Sprintf("stream %q", st)
		_, err := s.Append(ctx, persistence.Append{Stream: st, Events: evs(1, 1)})
		isErr(t, what+" Append", err, persistence.ErrInvalid)
		isErr(t, what+" Load", s.Load(ctx, st, 0, func(persistence.Event) error { return nil }), persistence.ErrInvalid)
		_, err = s.LastSeq(ctx, st)
		isErr(t, what+" LastSeq", err, persistence.ErrInvalid)
		isErr(t, what+" SaveSnapshot", s.SaveSnapshot(ctx, st, persistence.Snapshot{}), persistence.ErrInvalid)
		_, _, err = s.LoadSnapshot(ctx, st)
		isErr(t, what+" LoadSnapshot", err, persistence.ErrInvalid)
		isErr(t, what+" LoadRecords", s.LoadRecords(ctx, st, func(persistence.Record) error { return nil }), persistence.ErrInvalid)
	}
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}))
	for _, id := range badIDs {
		what := fmt.Sprintf("ID %q", id)
		isErr(t, what+" PutProduct", s.PutProduct(ctx, persistence.Product{ID: id, Protocol: persistence.ProtocolMQTT}), persistence.ErrInvalid)
		isErr(t, what+" PutDevice", s.PutDevice(ctx, persistence.Device{ID: id, ProductID: "p"}), persistence.ErrInvalid)
		isErr(t, what+" PutDevice product", s.PutDevice(ctx, persistence.Device{ID: "d", ProductID: id}), persistence.ErrInvalid)
		isErr(t, what+" CreateDevices", s.CreateDevices(ctx, []persistence.Device{{ID: "d", ProductID: "p"}, {ID: id, ProductID: "p"}}), persistence.ErrInvalid)
		isErr(t, what+" PutGroup", s.PutGroup(ctx, persistence.Group{ID: id}), persistence.ErrInvalid)
		isErr(t, what+" PutTask", s.PutTask(ctx, persistence.TaskRecord{ID: id, PackageID: "k"}), persistence.ErrInvalid)
		isErr(t, what+" PutTask package", s.PutTask(ctx, persistence.TaskRecord{ID: "t", PackageID: id}), persistence.ErrInvalid)
		isErr(t, what+" PutGroup member", s.PutGroup(ctx, persistence.Group{ID: "g", DeviceIDs: []string{"d", id}}), persistence.ErrInvalid)
		isErr(t, what+" PutPackage", s.PutPackage(ctx, persistence.Package{ID: id, ProductID: "p", Type: persistence.PackageFirmware, Version: "1"}), persistence.ErrInvalid)
		_, err := s.GetProduct(ctx, id)
		isErr(t, what+" GetProduct", err, persistence.ErrInvalid)
		_, err = s.GetDevice(ctx, id)
		isErr(t, what+" GetDevice", err, persistence.ErrInvalid)
		_, err = s.DeviceCredentials(ctx, id)
		isErr(t, what+" DeviceCredentials", err, persistence.ErrInvalid)
		_, err = s.GetGroup(ctx, id)
		isErr(t, what+" GetGroup", err, persistence.ErrInvalid)
		_, err = s.GetPackage(ctx, id)
		isErr(t, what+" GetPackage", err, persistence.ErrInvalid)
		isErr(t, what+" DeleteDevice", s.DeleteDevice(ctx, id), persistence.ErrInvalid)
		_, _, err = s.WriteBlob(ctx, id, strings.NewReader("x"), 10)
		isErr(t, what+" WriteBlob", err, persistence.ErrInvalid)
		_, err = s.OpenBlob(ctx, id)
		isErr(t, what+" OpenBlob", err, persistence.ErrInvalid)
		isErr(t, what+" DeleteBlob", s.DeleteBlob(ctx, id), persistence.ErrInvalid)
	}
	// Device IDs follow ValidateDeviceID's stricter rule.
	for _, id := range badDeviceIDs {
		what := fmt.Sprintf("device ID %q", id)
		isErr(t, what+" PutDevice", s.PutDevice(ctx, persistence.Device{ID: id, ProductID: "p"}), persistence.ErrInvalid)
		isErr(t, what+" CreateDevices", s.CreateDevices(ctx, []persistence.Device{{ID: "d", ProductID: "p"}, {ID: id, ProductID: "p"}}), persistence.ErrInvalid)
	}
	if devs, err := s.ListDevices(ctx, "", 0); err != nil || len(devs) != 0 {
		t.Fatalf("invalid CreateDevices calls created %v (%v)", devs, err)
	}
	isErr(t, "PutProduct without protocol", s.PutProduct(ctx, persistence.Product{ID: "q"}), persistence.ErrInvalid)
	isErr(t, "PutPackage without type", s.PutPackage(ctx, persistence.Package{ID: "k", ProductID: "p", Version: "1"}), persistence.ErrInvalid)
	isErr(t, "PutPackage without version", s.PutPackage(ctx, persistence.Package{ID: "k", ProductID: "p", Type: persistence.PackageSoftware}), persistence.ErrInvalid)
	// The longest valid ID works.
	long := persistence.Stream{Kind: persistence.KindDevice, ID: strings.Repeat("y", persistence.MaxIDLen)}
	mustAppend(t, s, persistence.Append{Stream: long, Events: evs(1, 1), Active: new(true)})
	checkEvents(t, load(t, s, long, 0), 1, 1, 1)
	if got := active(t, s, persistence.KindDevice); !slices.Equal(got, []string{long.ID}) {
		t.Fatalf("Active = %v", got)
	}
}

func testCancelled(t *testing.T, s persistence.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, persistence.Append{Stream: dev1, Events: evs(1, 1)}); err == nil {
		t.Fatal("Append with a cancelled context succeeded")
	}
	if got := load(t, s, dev1, 0); len(got) != 0 {
		t.Fatalf("a cancelled Append wrote %v", got)
	}
	if err := s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}); err == nil {
		t.Fatal("PutProduct with a cancelled context succeeded")
	}
	if _, _, err := s.WriteBlob(ctx, "b", strings.NewReader("data"), 100); err == nil {
		t.Fatal("WriteBlob with a cancelled context succeeded")
	}
	if _, err := s.OpenBlob(context.Background(), "b"); !errors.Is(err, persistence.ErrNotFound) {
		t.Fatalf("OpenBlob after a cancelled WriteBlob: %v, want ErrNotFound", err)
	}
}

var created = time.Date(2025, 4, 14, 1, 2, 3, 4, time.UTC)

func testProducts(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	p := persistence.Product{ID: "p1", Name: "Meter", Protocol: persistence.ProtocolLWM2M, SoftwarePCP: true, SkipVersionCheck: true, LwM2MSecurity: persistence.LwM2MPSK, Created: created}
	ok(t, "PutProduct", s.PutProduct(ctx, p))
	got, err := s.GetProduct(ctx, "p1")
	ok(t, "GetProduct", err)
	if !got.Created.Equal(p.Created) {
		t.Fatalf("Created = %v, want %v", got.Created, p.Created)
	}
	got.Created = p.Created
	if got != p {
		t.Fatalf("GetProduct = %+v, want %+v", got, p)
	}
	p.Name, p.Protocol, p.SoftwarePCP, p.Created = "Meter 2", persistence.ProtocolMQTT, false, time.Time{}
	isErr(t, "PutProduct of an MQTT product in LwM2M security mode PSK", s.PutProduct(ctx, p), persistence.ErrInvalid)
	p.LwM2MSecurity = persistence.LwM2MNoSec
	ok(t, "PutProduct (replace)", s.PutProduct(ctx, p))
	if got, _ := s.GetProduct(ctx, "p1"); got != p {
		t.Fatalf("replaced product = %+v, want %+v", got, p)
	}
	_, err = s.GetProduct(ctx, "p2")
	isErr(t, "GetProduct of a missing product", err, persistence.ErrNotFound)
	isErr(t, "DeleteProduct of a missing product", s.DeleteProduct(ctx, "p2"), persistence.ErrNotFound)

	// Referenced products cannot go.
	ok(t, "PutDevice", s.PutDevice(ctx, persistence.Device{ID: "d1", ProductID: "p1"}))
	ok(t, "PutPackage", s.PutPackage(ctx, persistence.Package{ID: "k1", ProductID: "p1", Type: persistence.PackageFirmware, Version: "2.0"}))
	err = s.DeleteProduct(ctx, "p1")
	isErr(t, "DeleteProduct of a product with devices", err, persistence.ErrInUse)
	ok(t, "DeleteDevice", s.DeleteDevice(ctx, "d1"))
	err = s.DeleteProduct(ctx, "p1")
	isErr(t, "DeleteProduct of a product with packages", err, persistence.ErrInUse)
	if !strings.Contains(err.Error(), "k1") {
		t.Errorf("ErrInUse does not name the package: %v", err)
	}
	ok(t, "DeletePackage", s.DeletePackage(ctx, "k1"))
	ok(t, "DeleteProduct", s.DeleteProduct(ctx, "p1"))
	_, err = s.GetProduct(ctx, "p1")
	isErr(t, "GetProduct after delete", err, persistence.ErrNotFound)
}

func testDevices(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	err := s.PutDevice(ctx, persistence.Device{ID: "d1", ProductID: "p1"})
	isErr(t, "PutDevice of an unknown product", err, persistence.ErrNotFound)
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p1", Protocol: persistence.ProtocolMQTT}))
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p2", Protocol: persistence.ProtocolLWM2M}))
	d := persistence.Device{ID: "d1", ProductID: "p1", Secret: "12345678", PSK: []byte{1, 2, 3}, Created: created}
	ok(t, "PutDevice", s.PutDevice(ctx, d))
	d.PSK[0] = 9 // the store keeps its own copy
	got, err := s.GetDevice(ctx, "d1")
	ok(t, "GetDevice", err)
	if got.Secret != "" || got.PSK != nil || !got.HasSecret || !got.HasPSK || got.ProductID != "p1" || !got.Created.Equal(created) {
		t.Fatalf("GetDevice = %+v: want no credentials, both Has flags, product p1", got)
	}
	creds, err := s.DeviceCredentials(ctx, "d1")
	ok(t, "DeviceCredentials", err)
	if creds.Secret != "12345678" || !bytes.Equal(creds.PSK, []byte{1, 2, 3}) || creds.ProductID != "p1" {
		t.Fatalf("DeviceCredentials = %+v", creds)
	}
	// A device put again without credentials keeps them; new ones replace.
	ok(t, "PutDevice (move to p2)", s.PutDevice(ctx, persistence.Device{ID: "d1", ProductID: "p2"}))
	if creds, _ := s.DeviceCredentials(ctx, "d1"); creds.Secret != "12345678" || !bytes.Equal(creds.PSK, []byte{1, 2, 3}) || creds.ProductID != "p2" {
		t.Fatalf("credentials after a put without them = %+v", creds)
	}
	ok(t, "PutDevice (new secret)", s.PutDevice(ctx, persistence.Device{ID: "d1", ProductID: "p2", Secret: "s2"}))
	if creds, _ := s.DeviceCredentials(ctx, "d1"); creds.Secret != "s2" || !bytes.Equal(creds.PSK, []byte{1, 2, 3}) {
		t.Fatalf("credentials after a new secret = %+v", creds)
	}
	// The move to p2 released p1.
	ok(t, "DeleteProduct p1", s.DeleteProduct(ctx, "p1"))
	isErr(t, "DeleteProduct p2", s.DeleteProduct(ctx, "p2"), persistence.ErrInUse)

	ok(t, "PutDevice (no credentials)", s.PutDevice(ctx, persistence.Device{ID: "d2", ProductID: "p2"}))
	got, _ = s.GetDevice(ctx, "d2")
	if got.HasSecret || got.HasPSK {
		t.Fatalf("device without credentials reads %+v", got)
	}
	if creds, err := s.DeviceCredentials(ctx, "d2"); err != nil || creds.Secret != "" || creds.PSK != nil {
		t.Fatalf("DeviceCredentials of a device without any = %+v, %v", creds, err)
	}
	list, err := s.ListDevices(ctx, "", 0)
	ok(t, "ListDevices", err)
	if len(list) != 2 || list[0].ID != "d1" || list[1].ID != "d2" || list[0].Secret != "" || list[0].PSK != nil || !list[0].HasSecret {
		t.Fatalf("ListDevices = %+v", list)
	}
	ok(t, "DeleteDevice", s.DeleteDevice(ctx, "d1"))
	isErr(t, "DeleteDevice again", s.DeleteDevice(ctx, "d1"), persistence.ErrNotFound)
	_, err = s.GetDevice(ctx, "d1")
	isErr(t, "GetDevice after delete", err, persistence.ErrNotFound)
	_, err = s.DeviceCredentials(ctx, "d1")
	isErr(t, "DeviceCredentials after delete", err, persistence.ErrNotFound)
}

func testCreateDevices(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}))
	batch := func(ids ...string) []persistence.Device {
		var ds []persistence.Device
		for _, id := range ids {
			ds = append(ds, persistence.Device{ID: id, ProductID: "p", Secret: "s-" + id})
		}
		return ds
	}
	ok(t, "CreateDevices", s.CreateDevices(ctx, batch("a", "b", "c")))
	ok(t, "CreateDevices (empty)", s.CreateDevices(ctx, nil))
	for _, c := range []struct {
		name string
		ds   []persistence.Device
		want error
		id   string
	}{
		{"an existing ID", batch("x", "y", "b", "z"), persistence.ErrExists, `"b"`},
		{"an ID twice", batch("x", "y", "x"), persistence.ErrExists, `"x"`},
		{"an unknown product", append(batch("x"), persistence.Device{ID: "y", ProductID: "nope"}), persistence.ErrNotFound, `"nope"`},
	} {
		err := s.CreateDevices(ctx, c.ds)
		isErr(t, "CreateDevices with "+c.name, err, c.want)
		if !strings.Contains(err.Error(), c.id) {
			t.Errorf("CreateDevices with %s: error %q does not name %s", c.name, err, c.id)
		}
	}
	list, err := s.ListDevices(ctx, "", 0)
	ok(t, "ListDevices", err)
	var ids []string
	for _, d := range list {
		ids = append(ids, d.ID)
	}
	if !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("after failed calls the devices are %v, want [a b c]", ids)
	}
	if creds, _ := s.DeviceCredentials(ctx, "b"); creds.Secret != "s-b" {
		t.Fatalf("DeviceCredentials(b) = %+v", creds)
	}
}

func testCreateDevicesMax(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}))
	ds := make([]persistence.Device, persistence.MaxCreateDevices+1)
	for i := range ds {
		ds[i] = persistence.Device{ID: fmt.Sprintf("dev-%05d", i), ProductID: "p", Secret: "secret"}
	}
	isErr(t, "CreateDevices over the limit", s.CreateDevices(ctx, ds), persistence.ErrInvalid)
	ok(t, "CreateDevices at the limit", s.CreateDevices(ctx, ds[:persistence.MaxCreateDevices]))
	n := 0
	for after := ""; ; {
		page, err := s.ListDevices(ctx, after, persistence.MaxListLimit)
		ok(t, "ListDevices", err)
		if len(page) == 0 {
			break
		}
		n += len(page)
		after = page[len(page)-1].ID
	}
	if n != persistence.MaxCreateDevices {
		t.Fatalf("listed %d devices, want %d", n, persistence.MaxCreateDevices)
	}
}

func testGroups(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	g := persistence.Group{ID: "g1", Name: "north", DeviceIDs: []string{"d2", "d1", "unknown"}, Created: created}
	ok(t, "PutGroup", s.PutGroup(ctx, g))
	g.DeviceIDs[0] = "changed"
	got, err := s.GetGroup(ctx, "g1")
	ok(t, "GetGroup", err)
	if got.Name != "north" || !slices.Equal(got.DeviceIDs, []string{"d2", "d1", "unknown"}) || !got.Created.Equal(created) {
		t.Fatalf("GetGroup = %+v", got)
	}
	ok(t, "PutGroup (replace)", s.PutGroup(ctx, persistence.Group{ID: "g1", Name: "south"}))
	if got, _ := s.GetGroup(ctx, "g1"); got.Name != "south" || len(got.DeviceIDs) != 0 {
		t.Fatalf("replaced group = %+v", got)
	}
	ok(t, "DeleteGroup", s.DeleteGroup(ctx, "g1"))
	isErr(t, "DeleteGroup again", s.DeleteGroup(ctx, "g1"), persistence.ErrNotFound)
	_, err = s.GetGroup(ctx, "g1")
	isErr(t, "GetGroup after delete", err, persistence.ErrNotFound)
}

func testTasks(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	for _, id := range []string{"t2", "t1", "t3"} {
		ok(t, "PutTask", s.PutTask(ctx, persistence.TaskRecord{ID: id, Name: "n" + id, PackageID: "k1", Created: created}))
	}
	got, err := s.GetTask(ctx, "t2")
	ok(t, "GetTask", err)
	if got.Name != "nt2" || got.PackageID != "k1" || !got.Created.Equal(created) {
		t.Fatalf("GetTask = %+v", got)
	}
	page, err := s.ListTasks(ctx, "t1", 1)
	ok(t, "ListTasks", err)
	if len(page) != 1 || page[0].ID != "t2" {
		t.Fatalf("ListTasks(after t1, 1) = %+v", page)
	}
	ok(t, "DeleteTask", s.DeleteTask(ctx, "t2"))
	isErr(t, "DeleteTask again", s.DeleteTask(ctx, "t2"), persistence.ErrNotFound)
	_, err = s.GetTask(ctx, "t2")
	isErr(t, "GetTask after delete", err, persistence.ErrNotFound)
	page, err = s.ListTasks(ctx, "", 0)
	ok(t, "ListTasks", err)
	if len(page) != 2 || page[0].ID != "t1" || page[1].ID != "t3" {
		t.Fatalf("ListTasks = %+v", page)
	}
}

func testPackages(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	p := persistence.Package{
		ID: "k1", ProductID: "p1", Type: persistence.PackageSoftware, Version: "2.0.1",
		SourceVersions: []string{"1.0", "1.1"}, FileName: "fw.bin", Size: 12345, SHA256: sha256.Sum256([]byte("x")),
		Description: "fixes", CustomInfo: `{"k":"v"}`, OmitSign: true, SegmentSize: 500, CheckCode: 0x3132, Created: created,
	}
	isErr(t, "PutPackage of an unknown product", s.PutPackage(ctx, p), persistence.ErrNotFound)
	ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p1", Protocol: persistence.ProtocolLWM2M}))
	ok(t, "PutPackage", s.PutPackage(ctx, p))
	got, err := s.GetPackage(ctx, "k1")
	ok(t, "GetPackage", err)
	if !got.Created.Equal(p.Created) {
		t.Fatalf("Created = %v, want %v", got.Created, p.Created)
	}
	got.Created = p.Created
	if fmt.Sprint(got) != fmt.Sprint(p) {
		t.Fatalf("GetPackage = %+v\nwant %+v", got, p)
	}
	list, err := s.ListPackages(ctx, "", 0)
	ok(t, "ListPackages", err)
	if len(list) != 1 || list[0].ID != "k1" {
		t.Fatalf("ListPackages = %+v", list)
	}
	ok(t, "DeletePackage", s.DeletePackage(ctx, "k1"))
	isErr(t, "DeletePackage again", s.DeletePackage(ctx, "k1"), persistence.ErrNotFound)
	_, err = s.GetPackage(ctx, "k1")
	isErr(t, "GetPackage after delete", err, persistence.ErrNotFound)
}

func testPaging(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	var want []string
	for i := range 25 {
		id := fmt.Sprintf("p%02d", 24-i)
		ok(t, "PutProduct", s.PutProduct(ctx, persistence.Product{ID: id, Protocol: persistence.ProtocolMQTT}))
		ok(t, "PutGroup", s.PutGroup(ctx, persistence.Group{ID: id}))
		want = append(want, id)
	}
	slices.Sort(want)
	var got []string
	for after := ""; ; {
		page, err := s.ListProducts(ctx, after, 10)
		ok(t, "ListProducts", err)
		if len(page) > 10 {
			t.Fatalf("a page of %d products, limit 10", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, p := range page {
			got = append(got, p.ID)
		}
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged products %v, want %v", got, want)
	}
	page, err := s.ListGroups(ctx, "p10", 3)
	ok(t, "ListGroups", err)
	if len(page) != 3 || page[0].ID != "p11" || page[2].ID != "p13" {
		t.Fatalf("ListGroups(after p10, 3) = %+v", page)
	}
	page, err = s.ListGroups(ctx, "p105", 1) // an `after` that is not an ID
	ok(t, "ListGroups", err)
	if len(page) != 1 || page[0].ID != "p11" {
		t.Fatalf("ListGroups(after p105, 1) = %+v", page)
	}
	all, err := s.ListProducts(ctx, "", 0)
	ok(t, "ListProducts", err)
	if len(all) != 25 {
		t.Fatalf("ListProducts with the default limit = %d products", len(all))
	}
	if rest, _ := s.ListProducts(ctx, "p24", 5); len(rest) != 0 {
		t.Fatalf("ListProducts after the last = %+v", rest)
	}
}

// blobData is n deterministic pseudo-random bytes.
func blobData(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func testBlobs(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	for _, n := range []int{0, 1, persistence.BlobChunkSize - 1, persistence.BlobChunkSize, 3*persistence.BlobChunkSize + 1234} {
		id := fmt.Sprintf("blob-%d", n)
		data := blobData(n, uint64(n))
		size, sum, err := s.WriteBlob(ctx, id, bytes.NewReader(data), int64(n))
		ok(t, "WriteBlob "+id, err)
		if size != int64(n) || sum != sha256.Sum256(data) {
			t.Fatalf("WriteBlob %s = %d, %x; want %d, %x", id, size, sum, n, sha256.Sum256(data))
		}
		b, err := s.OpenBlob(ctx, id)
		ok(t, "OpenBlob "+id, err)
		if b.Size() != int64(n) || b.SHA256() != sum {
			t.Fatalf("blob %s: Size %d, SHA256 %x", id, b.Size(), b.SHA256())
		}
		all, err := io.ReadAll(b)
		ok(t, "ReadAll "+id, err)
		if !bytes.Equal(all, data) {
			t.Fatalf("blob %s: read %d bytes that differ from the %d written", id, len(all), n)
		}
		checkRandomReads(t, b, data)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
	}
	_, _, err := s.WriteBlob(ctx, "blob-1", strings.NewReader("again"), 10)
	isErr(t, "WriteBlob of an existing blob", err, persistence.ErrExists)
	ok(t, "DeleteBlob", s.DeleteBlob(ctx, "blob-1"))
	isErr(t, "DeleteBlob again", s.DeleteBlob(ctx, "blob-1"), persistence.ErrNotFound)
	_, err = s.OpenBlob(ctx, "blob-1")
	isErr(t, "OpenBlob after delete", err, persistence.ErrNotFound)
	// The ID can be written again, with other content.
	_, _, err = s.WriteBlob(ctx, "blob-1", strings.NewReader("again"), 10)
	ok(t, "WriteBlob after delete", err)
	b, err := s.OpenBlob(ctx, "blob-1")
	ok(t, "OpenBlob", err)
	defer b.Close()
	if all, _ := io.ReadAll(b); string(all) != "again" {
		t.Fatalf("rewritten blob reads %q", all)
	}
}

// checkRandomReads reads b at random offsets, concurrently, and seeks.
func checkRandomReads(t *testing.T, b persistence.Blob, data []byte) {
	t.Helper()
	n := int64(len(data))
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), uint64(n)))
			for range 50 {
				off := r.Int64N(n + 2)
				buf := make([]byte, r.IntN(3*persistence.BlobChunkSize/2)+1)
				got, err := b.ReadAt(buf, off)
				want := 0
				if off < n {
					want = int(min(int64(len(buf)), n-off))
				}
				if got != want || (got < len(buf) && err != io.EOF) || (got == len(buf) && err != nil && err != io.EOF) {
					errs <- fmt.Errorf("ReadAt(%d bytes, off %d) of %d = %d, %v; want %d", len(buf), off, n, got, err, want)
					return
				}
				if !bytes.Equal(buf[:got], data[min(off, n):min(off, n)+int64(got)]) {
					errs <- fmt.Errorf("ReadAt(%d bytes, off %d) returned other bytes", len(buf), off)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n < 10 {
		return
	}
	pos, err := b.Seek(-5, io.SeekEnd)
	if err != nil || pos != n-5 {
		t.Fatalf("Seek(-5, end) = %d, %v", pos, err)
	}
	tail, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(tail, data[n-5:]) {
		t.Fatalf("read after Seek(-5, end) = %x, %v", tail, err)
	}
	if _, err := b.Seek(3, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if pos, err := b.Seek(2, io.SeekCurrent); err != nil || pos != 5 {
		t.Fatalf("Seek(2, current) = %d, %v", pos, err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || !bytes.Equal(buf, data[5:9]) {
		t.Fatalf("read after Seek = %x, %v", buf, err)
	}
	if _, err := b.Seek(-1, io.SeekStart); err == nil {
		t.Fatal("Seek to a negative position succeeded")
	}
}

func testBlobTooLarge(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	const max = 2*persistence.BlobChunkSize + 10
	data := blobData(max+1, 7)
	_, _, err := s.WriteBlob(ctx, "big", bytes.NewReader(data), max)
	isErr(t, "WriteBlob over maxBytes", err, persistence.ErrTooLarge)
	_, err = s.OpenBlob(ctx, "big")
	isErr(t, "OpenBlob of a rejected blob", err, persistence.ErrNotFound)
	isErr(t, "DeleteBlob of a rejected blob", s.DeleteBlob(ctx, "big"), persistence.ErrNotFound)
	// Exactly maxBytes is fine, under the same ID.
	size, sum, err := s.WriteBlob(ctx, "big", bytes.NewReader(data[:max]), max)
	ok(t, "WriteBlob of exactly maxBytes", err)
	if size != max || sum != sha256.Sum256(data[:max]) {
		t.Fatalf("WriteBlob = %d, %x", size, sum)
	}
	_, _, err = s.WriteBlob(ctx, "small", strings.NewReader("x"), 0)
	isErr(t, "WriteBlob of 1 byte with maxBytes 0", err, persistence.ErrTooLarge)
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func testBlobReaderFails(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	boom := errors.New("connection reset")
	_, _, err := s.WriteBlob(ctx, "b", &failingReader{data: blobData(3*persistence.BlobChunkSize, 1), err: boom}, 1<<30)
	isErr(t, "WriteBlob from a failing reader", err, boom)
	_, err = s.OpenBlob(ctx, "b")
	isErr(t, "OpenBlob after a failed write", err, persistence.ErrNotFound)
	_, _, err = s.WriteBlob(ctx, "b", strings.NewReader("ok"), 10)
	ok(t, "WriteBlob after a failed write", err)
}

func testBlobDeleteWhileOpen(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	data := blobData(2*persistence.BlobChunkSize+5, 3)
	_, _, err := s.WriteBlob(ctx, "b", bytes.NewReader(data), int64(len(data)))
	ok(t, "WriteBlob", err)
	b, err := s.OpenBlob(ctx, "b")
	ok(t, "OpenBlob", err)
	ok(t, "DeleteBlob", s.DeleteBlob(ctx, "b"))
	_, _, err = s.WriteBlob(ctx, "b", strings.NewReader("other"), 10)
	ok(t, "WriteBlob", err)
	got := make([]byte, len(data))
	if n, err := b.ReadAt(got, 0); n != len(data) || (err != nil && err != io.EOF) || !bytes.Equal(got, data) {
		t.Fatalf("a blob opened before DeleteBlob reads %d bytes (%v), equal %v", n, err, bytes.Equal(got, data))
	}
	ok(t, "Close", b.Close())
	if _, err := b.ReadAt(got[:1], 0); err == nil {
		t.Fatal("ReadAt after Close succeeded")
	}
}

func sessions(t *testing.T, s persistence.Sessions, transport string) map[string]string {
	t.Helper()
	got := map[string]string{}
	ok(t, "ListSessions", s.ListSessions(context.Background(), transport, func(id string, v []byte) error {
		got[id] = string(v)
		return nil
	}))
	return got
}

func testSessions(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	ok(t, "PutSession a", s.PutSession(ctx, "lwm2m", "a", []byte("1")))
	ok(t, "PutSession b", s.PutSession(ctx, "lwm2m", "b", []byte("2")))
	ok(t, "PutSession other transport", s.PutSession(ctx, "lwm", "c", []byte("3")))
	buf := []byte("4")
	ok(t, "PutSession replaces", s.PutSession(ctx, "lwm2m", "a", buf))
	buf[0] = 'x' // the store keeps its own copy
	if got, want := sessions(t, s, "lwm2m"), map[string]string{"a": "4", "b": "2"}; !maps.Equal(got, want) {
		t.Fatalf("sessions of lwm2m = %v, want %v", got, want)
	}
	if got := sessions(t, s, "lwm"); len(got) != 1 || got["c"] != "3" {
		t.Fatalf("sessions of lwm = %v, want only c (prefixes of a transport name are other transports)", got)
	}
	if v, err := s.GetSession(ctx, "lwm2m", "a"); err != nil || string(v) != "4" {
		t.Fatalf("GetSession a = %q, %v; want 4", v, err)
	}
	if v, err := s.GetSession(ctx, "lwm", "a"); !errors.Is(err, persistence.ErrNotFound) {
		t.Fatalf("GetSession of another transport's session = %q, %v; want ErrNotFound", v, err)
	}
	ok(t, "DeleteSession", s.DeleteSession(ctx, "lwm2m", "a"))
	ok(t, "DeleteSession of a missing session", s.DeleteSession(ctx, "lwm2m", "a"))
	if _, err := s.GetSession(ctx, "lwm2m", "a"); !errors.Is(err, persistence.ErrNotFound) {
		t.Fatalf("GetSession of a deleted session: %v, want ErrNotFound", err)
	}
	if got := sessions(t, s, "lwm2m"); len(got) != 1 || got["b"] != "2" {
		t.Fatalf("sessions after delete = %v, want only b", got)
	}
	stop := errors.New("stop")
	n := 0
	ok(t, "PutSession a again", s.PutSession(ctx, "lwm2m", "a", nil))
	if err := s.ListSessions(ctx, "lwm2m", func(string, []byte) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("ListSessions with a failing fn: err %v after %d calls, want %v after 1", err, n, stop)
	}
	isErr(t, "PutSession with an invalid ID", s.PutSession(ctx, "lwm2m", "a/b", nil), persistence.ErrInvalid)
	isErr(t, "PutSession with an invalid transport", s.PutSession(ctx, "", "a", nil), persistence.ErrInvalid)
	_, err := s.GetSession(ctx, "lwm2m", "a/b")
	isErr(t, "GetSession with an invalid ID", err, persistence.ErrInvalid)
	isErr(t, "ListSessions of an invalid transport", s.ListSessions(ctx, "x/y", func(string, []byte) error { return nil }), persistence.ErrInvalid)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.PutSession(cctx, "lwm2m", "z", nil); err == nil {
		t.Fatal("PutSession with a cancelled context succeeded")
	}
}

// testNodeSessions: a store of one node (not a persistence.NodeSessions)
// is the sessions of node "" and refuses another node's. A store shared
// by nodes keeps each session with its holder: a node lists, reads and
// deletes only its own, a put through another node moves the session
// there, and DropNodeSessions deletes one node's and no other's.
func testNodeSessions(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	own, err := persistence.SessionsOf(s, "")
	if err != nil || own != persistence.Sessions(s) {
		t.Fatalf("SessionsOf(s, \"\") = %v, %v; want the store itself", own, err)
	}
	ns, shared := s.(persistence.NodeSessions)
	if !shared {
		_, err := persistence.SessionsOf(s, "10.0.0.1:7001")
		isErr(t, "SessionsOf(a store of one node, another node)", err, persistence.ErrInvalid)
		return
	}
	_, err = persistence.SessionsOf(s, "a/b")
	isErr(t, "SessionsOf an invalid node", err, persistence.ErrInvalid)
	a, err := persistence.SessionsOf(s, "10.0.0.1:7001")
	ok(t, "SessionsOf node a", err)
	b := ns.NodeSessions("10.0.0.2:7001")
	ok(t, "a puts d1", a.PutSession(ctx, "lwm2m", "d1", []byte("a1")))
	ok(t, "a puts d2", a.PutSession(ctx, "lwm2m", "d2", []byte("a2")))
	ok(t, "b puts d3", b.PutSession(ctx, "lwm2m", "d3", []byte("b3")))
	ok(t, "every node's handle", s.PutSession(ctx, "download-handle", "h", []byte("x")))
	if got, want := sessions(t, a, "lwm2m"), map[string]string{"d1": "a1", "d2": "a2"}; !maps.Equal(got, want) {
		t.Fatalf("node a's sessions = %v, want %v", got, want)
	}
	if got, want := sessions(t, b, "lwm2m"), map[string]string{"d3": "b3"}; !maps.Equal(got, want) {
		t.Fatalf("node b's sessions = %v, want %v", got, want)
	}
	if got := sessions(t, s, "lwm2m"); len(got) != 0 {
		t.Fatalf("the store's own (node \"\") lwm2m sessions = %v, want none: every one is a node's", got)
	}
	if got := sessions(t, a, "download-handle"); len(got) != 0 {
		t.Fatalf("node a lists %v of node \"\"'s sessions, want none", got)
	}
	if _, err := b.GetSession(ctx, "lwm2m", "d1"); !errors.Is(err, persistence.ErrNotFound) {
		t.Fatalf("node b reads node a's session: %v, want ErrNotFound", err)
	}
	// d2 registers again with node b: b holds it, a no longer sees it, and
	// a forgetting its old registration leaves b's alone.
	ok(t, "b puts d2", b.PutSession(ctx, "lwm2m", "d2", []byte("b2")))
	ok(t, "a deletes d2 (no longer its own)", a.DeleteSession(ctx, "lwm2m", "d2"))
	if v, err := b.GetSession(ctx, "lwm2m", "d2"); err != nil || string(v) != "b2" {
		t.Fatalf("node b's d2 after node a deleted its own = %q, %v; want b2", v, err)
	}
	if got, want := sessions(t, a, "lwm2m"), map[string]string{"d1": "a1"}; !maps.Equal(got, want) {
		t.Fatalf("node a's sessions after d2 moved = %v, want %v", got, want)
	}
	var nodes []string
	ok(t, "SessionNodes", ns.SessionNodes(ctx, func(n string) error { nodes = append(nodes, n); return nil }))
	if want := []string{"", "10.0.0.1:7001", "10.0.0.2:7001"}; !slices.Equal(nodes, want) {
		t.Fatalf("SessionNodes = %q, want %q", nodes, want)
	}
	// Node b is gone: its sessions are dropped, the others stay.
	n, err := ns.DropNodeSessions(ctx, "10.0.0.2:7001")
	if err != nil || n != 2 {
		t.Fatalf("DropNodeSessions(b) = %d, %v; want 2", n, err)
	}
	if got := sessions(t, b, "lwm2m"); len(got) != 0 {
		t.Fatalf("node b's sessions after the drop = %v, want none", got)
	}
	if got := sessions(t, a, "lwm2m"); len(got) != 1 {
		t.Fatalf("node a's sessions after b's drop = %v, want d1", got)
	}
	if got := sessions(t, s, "download-handle"); len(got) != 1 {
		t.Fatalf("every node's sessions after b's drop = %v, want h", got)
	}
	if n, err := ns.DropNodeSessions(ctx, "10.0.0.2:7001"); err != nil || n != 0 {
		t.Fatalf("DropNodeSessions of a node with none = %d, %v; want 0", n, err)
	}
	_, err = ns.DropNodeSessions(ctx, "")
	isErr(t, "DropNodeSessions of node \"\"", err, persistence.ErrInvalid)
	isErr(t, "a node's PutSession with an invalid ID", a.PutSession(ctx, "lwm2m", "a/b", nil), persistence.ErrInvalid)
}

// testSharedSecrets: a store that implements persistence.SharedSecrets
// creates each secret once, whoever asks first, and every caller gets
// that value; PutSharedSecret replaces it.
func testSharedSecrets(t *testing.T, s persistence.Store) {
	ss, ok2 := s.(persistence.SharedSecrets)
	if !ok2 {
		t.Skip("the store keeps no shared secrets")
	}
	ctx := context.Background()
	const callers = 8
	var wg sync.WaitGroup
	got := make([][]byte, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() {
			got[i], errs[i] = ss.SharedSecret(ctx, "api-token", func() ([]byte, error) { return []byte(fmt.Sprintf("token-%d", i)), nil })
		})
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || !bytes.Equal(got[i], got[0]) || !strings.HasPrefix(string(got[0]), "token-") {
			t.Fatalf("SharedSecret caller %d: %q, %v; want every caller the same token (caller 0 got %q)", i, got[i], errs[i], got[0])
		}
	}
	v, err := ss.SharedSecret(ctx, "api-token", func() ([]byte, error) { t.Error("create called for a secret that exists"); return nil, nil })
	if err != nil || !bytes.Equal(v, got[0]) {
		t.Fatalf("SharedSecret again = %q, %v; want %q", v, err, got[0])
	}
	boom := errors.New("boom")
	if _, err := ss.SharedSecret(ctx, "other", func() ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("SharedSecret whose create fails: %v, want %v", err, boom)
	}
	ok(t, "PutSharedSecret", ss.PutSharedSecret(ctx, "download-key", []byte{0, 1, 2}))
	ok(t, "PutSharedSecret replaces", ss.PutSharedSecret(ctx, "api-token", []byte("replaced")))
	all := map[string]string{}
	ok(t, "ListSharedSecrets", ss.ListSharedSecrets(ctx, func(name string, v []byte) error { all[name] = string(v); return nil }))
	if want := map[string]string{"api-token": "replaced", "download-key": "\x00\x01\x02"}; !maps.Equal(all, want) {
		t.Fatalf("ListSharedSecrets = %q, want %q", all, want)
	}
	_, err = ss.SharedSecret(ctx, "a/b", func() ([]byte, error) { return []byte("x"), nil })
	isErr(t, "SharedSecret with an invalid name", err, persistence.ErrInvalid)
	isErr(t, "PutSharedSecret of an empty value", ss.PutSharedSecret(ctx, "e", nil), persistence.ErrInvalid)
}

// testLister: a store that implements persistence.Lister lists each stream
// with events, a snapshot or records once (and no stream it never saw),
// the complete blobs and the transports with sessions.
func testLister(t *testing.T, s persistence.Store) {
	l, isLister := s.(persistence.Lister)
	if !isLister {
		t.Skip("the store is not a persistence.Lister")
	}
	ctx := context.Background()
	recOnly := persistence.Stream{Kind: persistence.KindTask, ID: "t-records"}
	snapOnly := persistence.Stream{Kind: persistence.KindCell, ID: "c-snapshot"}
	markOnly := persistence.Stream{Kind: persistence.KindDevice, ID: "dev-mark"}
	yes := true
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 3), Records: []persistence.Record{rec("a", 1), rec("b", 2)}})
	ok(t, "SaveSnapshot", s.SaveSnapshot(ctx, dev1, persistence.Snapshot{Seq: 2, Type: persistence.SnapshotTypeState}))
	mustAppend(t, s, persistence.Append{Stream: dev2, Events: evs(1, 1)})
	mustAppend(t, s, persistence.Append{Stream: recOnly, Records: []persistence.Record{rec("x", 1)}})
	ok(t, "SaveSnapshot of a stream without events", s.SaveSnapshot(ctx, snapOnly, persistence.Snapshot{Seq: 0, Type: persistence.SnapshotTypeState}))
	mustAppend(t, s, persistence.Append{Stream: markOnly, Active: &yes})
	got := map[persistence.Stream]int{}
	ok(t, "Streams", l.Streams(ctx, func(st persistence.Stream) error { got[st]++; return nil }))
	for _, st := range []persistence.Stream{dev1, dev2, recOnly, snapOnly} {
		if got[st] != 1 {
			t.Errorf("Streams listed %s %d times, want once (all: %v)", st, got[st], got)
		}
	}
	for st, n := range got {
		if st != dev1 && st != dev2 && st != recOnly && st != snapOnly && (st != markOnly || n != 1) {
			t.Errorf("Streams listed %s %d times, a stream never written (all: %v)", st, n, got)
		}
	}
	stop := errors.New("stop")
	if err := l.Streams(ctx, func(persistence.Stream) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("Streams with a failing fn: %v, want %v", err, stop)
	}

	for _, id := range []string{"pkg-b", "pkg-a"} {
		if _, _, err := s.WriteBlob(ctx, id, strings.NewReader("data of "+id), 100); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.WriteBlob(ctx, "pkg-c", strings.NewReader("too long"), 3); !errors.Is(err, persistence.ErrTooLarge) {
		t.Fatalf("WriteBlob past maxBytes: %v", err)
	}
	var blobs []string
	ok(t, "Blobs", l.Blobs(ctx, func(id string) error { blobs = append(blobs, id); return nil }))
	if want := []string{"pkg-a", "pkg-b"}; !slices.Equal(blobs, want) {
		t.Errorf("Blobs = %q, want %q", blobs, want)
	}

	transports := func() []string {
		var names []string
		ok(t, "SessionTransports", l.SessionTransports(ctx, func(n string) error { names = append(names, n); return nil }))
		return names
	}
	ok(t, "PutSession", s.PutSession(ctx, "lwm2m", "a", []byte("1")))
	ok(t, "PutSession", s.PutSession(ctx, "lwm2m", "b", []byte("2")))
	ok(t, "PutSession", s.PutSession(ctx, "lwm", "a", []byte("3")))
	ok(t, "PutSession", s.PutSession(ctx, "download", "h", []byte("4")))
	if got, want := transports(), []string{"download", "lwm", "lwm2m"}; !slices.Equal(got, want) {
		t.Errorf("SessionTransports = %q, want %q", got, want)
	}
	ok(t, "DeleteSession", s.DeleteSession(ctx, "download", "h"))
	if got, want := transports(), []string{"lwm", "lwm2m"}; !slices.Equal(got, want) {
		t.Errorf("SessionTransports after the last session of download went = %q, want %q", got, want)
	}
}

func testClosed(t *testing.T, s persistence.Store) {
	ctx := context.Background()
	mustAppend(t, s, persistence.Append{Stream: dev1, Events: evs(1, 1)})
	_, _, err := s.WriteBlob(ctx, "b", strings.NewReader("data"), 10)
	ok(t, "WriteBlob", err)
	b, err := s.OpenBlob(ctx, "b")
	ok(t, "OpenBlob", err)
	ok(t, "Close", s.Close())
	ok(t, "second Close", s.Close())
	closed := func(what string, err error) {
		t.Helper()
		isErr(t, what+" after Close", err, persistence.ErrClosed)
	}
	_, err = s.Append(ctx, persistence.Append{Stream: dev1, Expected: 1, Events: evs(2, 2)})
	closed("Append", err)
	closed("Load", s.Load(ctx, dev1, 0, func(persistence.Event) error { return nil }))
	_, err = s.LastSeq(ctx, dev1)
	closed("LastSeq", err)
	closed("SaveSnapshot", s.SaveSnapshot(ctx, dev1, persistence.Snapshot{Seq: 1}))
	_, _, err = s.LoadSnapshot(ctx, dev1)
	closed("LoadSnapshot", err)
	closed("Active", s.Active(ctx, persistence.KindDevice, func(string) error { return nil }))
	closed("LoadRecords", s.LoadRecords(ctx, dev1, func(persistence.Record) error { return nil }))
	closed("PutSession", s.PutSession(ctx, "lwm2m", "d", nil))
	closed("ListSessions", s.ListSessions(ctx, "lwm2m", func(string, []byte) error { return nil }))
	_, err = s.GetSession(ctx, "lwm2m", "d")
	closed("GetSession", err)
	closed("PutProduct", s.PutProduct(ctx, persistence.Product{ID: "p", Protocol: persistence.ProtocolMQTT}))
	_, err = s.GetProduct(ctx, "p")
	closed("GetProduct", err)
	_, err = s.ListProducts(ctx, "", 0)
	closed("ListProducts", err)
	closed("CreateDevices", s.CreateDevices(ctx, []persistence.Device{{ID: "d", ProductID: "p"}}))
	_, err = s.ListDevices(ctx, "", 0)
	closed("ListDevices", err)
	_, err = s.DeviceCredentials(ctx, "d")
	closed("DeviceCredentials", err)
	_, err = s.ListGroups(ctx, "", 0)
	closed("ListGroups", err)
	_, err = s.ListPackages(ctx, "", 0)
	closed("ListPackages", err)
	_, _, err = s.WriteBlob(ctx, "c", strings.NewReader("data"), 10)
	closed("WriteBlob", err)
	_, err = s.OpenBlob(ctx, "b")
	closed("OpenBlob", err)
	closed("DeleteBlob", s.DeleteBlob(ctx, "b"))
	_, err = b.ReadAt(make([]byte, 1), 0)
	closed("Blob.ReadAt", err)
	_ = b.Close()
}
