package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// Appends are fenced by the events' key and the heads a store knows (no
// head row): these tests write with two stores on one database, which
// know different heads, as two processes would, and with a transaction of
// their own that holds a sequence number while an append waits for it.

func event(payload string) []persistence.Event {
	return []persistence.Event{{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte(payload)}}
}

func rec(key, payload string) []persistence.Record {
	return []persistence.Record{{Key: []byte(key), Type: 1, Version: 1, Payload: []byte(payload)}}
}

// appendTo appends a's events to st and checks the outcome: want 0 is
// ErrConflict, any other the new last sequence number.
func appendTo(t *testing.T, s *pgstore.Store, a persistence.Append, want uint64) {
	t.Helper()
	seq, err := s.Append(context.Background(), a)
	switch {
	case want == 0 && !errors.Is(err, persistence.ErrConflict):
		t.Fatalf("Append(%s, Expected %d, %d events, %d records) = %d, %v; want ErrConflict", a.Stream, a.Expected, len(a.Events), len(a.Records), seq, err)
	case want != 0 && (err != nil || seq != want):
		t.Fatalf("Append(%s, Expected %d, %d events, %d records) = %d, %v; want %d", a.Stream, a.Expected, len(a.Events), len(a.Records), seq, err, want)
	}
}

// TestFenceStaleHeads: a store whose known head is behind (another store
// appended since) conflicts for an Expected behind the stream's, whether
// the append has events or only records or a mark, and writes with the
// right one, whether it is ahead of the head it knows or past the
// stream's end (a gap: refused).
func TestFenceStaleHeads(t *testing.T) {
	s1, dsn := openStore(t)
	s2, err := open(t, dsn, testKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "d"}
	appendTo(t, s1, persistence.Append{Stream: st, Events: event("1")}, 1)
	if last, err := s2.LastSeq(ctx, st); err != nil || last != 1 {
		t.Fatalf("LastSeq = %d, %v", last, err)
	}
	appendTo(t, s1, persistence.Append{Stream: st, Expected: 1, Events: event("2")}, 2) // s2 knows 1
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 1, Events: event("x")}, 0)
	appendTo(t, s1, persistence.Append{Stream: st, Expected: 2, Events: event("3")}, 3) // s2 knows 2 now
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 2, Records: rec("k", "x")}, 0)
	yes := true
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 2, Active: &yes}, 0)
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 9, Events: event("gap")}, 0)
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 9, Records: rec("k", "gap")}, 0)
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 3, Records: rec("k", "v")}, 3)
	appendTo(t, s2, persistence.Append{Stream: st, Expected: 3, Events: event("4"), Active: &yes}, 4)
	appendTo(t, s1, persistence.Append{Stream: st, Expected: 3, Events: event("x")}, 0)
	appendTo(t, s1, persistence.Append{Stream: st, Expected: 4, Events: event("5")}, 5)

	var got []string
	if err := s1.Load(ctx, st, 0, func(e persistence.Event) error { got = append(got, string(e.Payload)); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []string{"1", "2", "3", "4", "5"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	var recs []string
	if err := s1.LoadRecords(ctx, st, func(r persistence.Record) error { recs = append(recs, string(r.Payload)); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(recs, []string{"v"}) {
		t.Fatalf("records %q, want [v]", recs)
	}
	var active []string
	if err := s1.Active(ctx, st.Kind, func(id string) error { active = append(active, id); return nil }); err != nil || !slices.Equal(active, []string{"d"}) {
		t.Fatalf("Active = %q, %v", active, err)
	}
}

// TestFenceInFlight: an append (with events, or with records only) whose
// next sequence number another transaction is writing waits for it, and
// conflicts when it commits; when it rolls back, the append is written.
// An append to another stream in the same group commit is written either
// way (the batch is written again without the append that conflicts).
func TestFenceInFlight(t *testing.T) {
	for _, commit := range []bool{true, false} {
		for _, events := range []bool{true, false} {
			t.Run(fmt.Sprintf("commit=%v/events=%v", commit, events), func(t *testing.T) {
				s, dsn := openStore(t)
				ctx := context.Background()
				st := persistence.Stream{Kind: persistence.KindDevice, ID: "d"}
				other := persistence.Stream{Kind: persistence.KindDevice, ID: "e"}
				gate := persistence.Stream{Kind: persistence.KindDevice, ID: "gate"}
				for _, x := range []persistence.Stream{st, other, gate} {
					appendTo(t, s, persistence.Append{Stream: x, Events: event("1")}, 1)
				}
				// writer writes st's next event; gater holds the
				// committer (blocked on gate's) until st's and other's
				// appends are queued, so that they share a batch.
				writer, writerPID := holdSeq(t, dsn, st, 2)
				gater, gaterPID := holdSeq(t, dsn, gate, 2)
				done := make(chan error, 3)
				go func() {
					_, err := s.Append(ctx, persistence.Append{Stream: gate, Expected: 1, Events: event("2")})
					done <- err
				}()
				waitBlockedBy(t, dsn, gaterPID)
				a := persistence.Append{Stream: st, Expected: 1, Events: event("mine")}
				if !events {
					a = persistence.Append{Stream: st, Expected: 1, Records: rec("k", "mine")}
				}
				mine, others := make(chan error, 1), make(chan error, 1)
				go func() { _, err := s.Append(ctx, a); mine <- err }()
				go func() {
					_, err := s.Append(ctx, persistence.Append{Stream: other, Expected: 1, Events: event("2")})
					others <- err
				}()
				for pgstore.Queued(s) < 2 {
					runtime.Gosched()
				}
				if err := gater.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				if err := <-done; !errors.Is(err, persistence.ErrConflict) {
					t.Fatalf("gate append: %v, want ErrConflict", err)
				}
				waitBlockedBy(t, dsn, writerPID)
				var err error
				if commit {
					err = writer.Commit(ctx)
				} else {
					err = writer.Rollback(ctx)
				}
				if err != nil {
					t.Fatal(err)
				}
				if err := <-mine; commit && !errors.Is(err, persistence.ErrConflict) {
					t.Fatalf("append behind a committed writer: %v, want ErrConflict", err)
				} else if !commit && err != nil {
					t.Fatalf("append after a writer that rolled back: %v", err)
				}
				if err := <-others; err != nil {
					t.Fatalf("append to another stream in the same batch: %v", err)
				}
				wantLast := uint64(1)
				if commit || events {
					wantLast = 2
				}
				if last, err := s.LastSeq(ctx, st); err != nil || last != wantLast {
					t.Fatalf("LastSeq = %d, %v; want %d", last, err, wantLast)
				}
				if last, err := s.LastSeq(ctx, other); err != nil || last != 2 {
					t.Fatalf("LastSeq(other) = %d, %v; want 2", last, err)
				}
				var recs int
				if err := s.LoadRecords(ctx, st, func(persistence.Record) error { recs++; return nil }); err != nil {
					t.Fatal(err)
				}
				if wantRecs := map[bool]int{true: 0, false: 1}[commit || events]; recs != wantRecs {
					t.Fatalf("%d records, want %d", recs, wantRecs)
				}
				if err := s.Load(ctx, st, 0, func(persistence.Event) error { return nil }); err != nil {
					t.Fatalf("Load: %v (a placeholder left?)", err)
				}
			})
		}
	}
}

// holdSeq begins a transaction of its own that writes st's event seq, and
// returns it (rolled back at the end of t unless it ended) with its
// backend's pid.
func holdSeq(t *testing.T, dsn string, st persistence.Stream, seq uint64) (pgx.Tx, int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(ctx) })
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	var pid int
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	body := persistence.EncodeEvent(persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte("other writer")})
	if _, err := tx.Exec(ctx, `INSERT INTO events (kind, id, seq, body) VALUES ($1, $2, $3, $4)`, string(st.Kind), st.ID, int64(seq), body); err != nil {
		t.Fatal(err)
	}
	return tx, pid
}

// waitBlockedBy waits until a session of the database waits for a lock
// that the backend pid holds.
func waitBlockedBy(t *testing.T, dsn string, pid int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))`, pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if _, err := conn.Exec(ctx, `SELECT pg_sleep(0.01)`); err != nil { // the server's wait, between polls
			t.Fatal(err)
		}
	}
}

// TestMigrateFromVersion2: a database written by the schema of version 2
// (whose streams kept the head, last_seq) migrates to the newest, and its
// streams read and append as before: the heads come from the events.
func TestMigrateFromVersion2(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if v, err := pgstore.MigrateTo(ctx, pool, testLogger(t), 2); err != nil || v.After != 2 {
		t.Fatalf("MigrateTo(2) = %+v, %v", v, err)
	}
	ev := func(p string) []byte {
		return persistence.EncodeEvent(persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte(p)})
	}
	record := persistence.EncodeRecord(persistence.Record{Key: []byte("k"), Type: 1, Version: 1, Payload: []byte("r")})
	// As version 2's appends left them: a stream with events and a mark,
	// one with records only.
	execSQL(t, dsn, `INSERT INTO streams (kind, id, last_seq, active) VALUES ('d', 'a', 2, true), ('t', 'b', 0, false)`)
	execSQL(t, dsn, `INSERT INTO events (kind, id, seq, body) VALUES ('d', 'a', 1, $1), ('d', 'a', 2, $2)`, ev("1"), ev("2"))
	execSQL(t, dsn, `INSERT INTO records (kind, id, key, body) VALUES ('t', 'b', 'k', $1)`, record)

	s, err := open(t, dsn, testKey)
	if err != nil {
		t.Fatal(err)
	}
	var version int64
	if err := pool.QueryRow(ctx, `SELECT max(version_id) FROM `+pgstore.SchemaTable).Scan(&version); err != nil || version != 3 {
		t.Fatalf("schema version %d, %v; want 3", version, err)
	}
	a := persistence.Stream{Kind: persistence.KindDevice, ID: "a"}
	b := persistence.Stream{Kind: persistence.KindTask, ID: "b"}
	if last, err := s.LastSeq(ctx, a); err != nil || last != 2 {
		t.Fatalf("LastSeq(a) = %d, %v; want 2", last, err)
	}
	if last, err := s.LastSeq(ctx, b); err != nil || last != 0 {
		t.Fatalf("LastSeq(b) = %d, %v; want 0", last, err)
	}
	appendTo(t, s, persistence.Append{Stream: a, Expected: 1, Events: event("x")}, 0)
	appendTo(t, s, persistence.Append{Stream: a, Expected: 2, Events: event("3")}, 3)
	appendTo(t, s, persistence.Append{Stream: b, Expected: 0, Events: event("1")}, 1)
	var active []string
	if err := s.Active(ctx, persistence.KindDevice, func(id string) error { active = append(active, id); return nil }); err != nil || !slices.Equal(active, []string{"a"}) {
		t.Fatalf("Active = %q, %v; want [a]", active, err)
	}
	var streams []persistence.Stream
	if err := s.Streams(ctx, func(st persistence.Stream) error { streams = append(streams, st); return nil }); err != nil || !slices.Equal(streams, []persistence.Stream{a, b}) {
		t.Fatalf("Streams = %v, %v; want [%s %s]", streams, err, a, b)
	}
}

// TestHeadsAfterServerLoss: a crash of PostgreSQL may lose unsynced
// appends whose writer saw them acknowledged; the heads a store knows
// must then not let the writer append after a sequence number that is
// gone (a gap). The test loses stream b's last event behind the store's
// back and ends every connection (as a crash does); once the store writes
// again (to stream a), b's writer, who still expects its lost event,
// conflicts.
func TestHeadsAfterServerLoss(t *testing.T) {
	s, dsn := openStore(t)
	ctx := context.Background()
	a := persistence.Stream{Kind: persistence.KindDevice, ID: "a"}
	b := persistence.Stream{Kind: persistence.KindDevice, ID: "b"}
	appendTo(t, s, persistence.Append{Stream: a, Events: event("1")}, 1)
	appendTo(t, s, persistence.Append{Stream: b, Events: event("1")}, 1)
	appendTo(t, s, persistence.Append{Stream: b, Expected: 1, Events: event("2"), NoSync: true}, 2)
	execSQL(t, dsn, `DELETE FROM events WHERE kind = 'd' AND id = 'b' AND seq = 2;
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	for try := 1; ; try++ {
		seq, err := s.Append(ctx, persistence.Append{Stream: a, Expected: 1, Events: event("2")})
		if err == nil {
			break
		}
		if !errors.Is(err, persistence.ErrUnavailable) || try == 20 {
			t.Fatalf("Append(a) after the connections ended (try %d): %d, %v", try, seq, err)
		}
	}
	appendTo(t, s, persistence.Append{Stream: b, Expected: 2, Events: event("3")}, 0)
	if last, err := s.LastSeq(ctx, b); err != nil || last != 1 {
		t.Fatalf("LastSeq(b) = %d, %v; want 1", last, err)
	}
	appendTo(t, s, persistence.Append{Stream: b, Expected: 1, Events: event("2 again")}, 2)
}
