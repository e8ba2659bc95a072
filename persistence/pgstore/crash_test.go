package pgstore_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestCrash crashes PostgreSQL (pg_ctl -m immediate stop) under a store:
// calls fail while it is down (they do not hang), and once it is back the
// same store resumes and finds every acknowledged append, synced or
// unsynced but followed by a synced one.
func TestCrash(t *testing.T) {
	if os.Getenv(pgtest.EnvDSN) != "" {
		t.Skip("the crash test needs the private server: it cannot crash one given by " + pgtest.EnvDSN)
	}
	// A server of its own: the recovery after the crash replays only this
	// test's writes, and the shared server's other tests are undisturbed.
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	s, err := pgstore.Open(context.Background(), srv.NewDatabase(t), pgstore.Options{SealKey: testKey, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	synced := persistence.Stream{Kind: persistence.KindDevice, ID: "synced"}
	unsynced := persistence.Stream{Kind: persistence.KindDevice, ID: "unsynced"}
	last := persistence.Stream{Kind: persistence.KindTask, ID: "last"}
	ev := persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte("x")}
	var seq, useq uint64
	for i := range 50 {
		var err error
		if seq, err = s.Append(ctx, persistence.Append{Stream: synced, Expected: seq, Events: []persistence.Event{ev}}); err != nil {
			t.Fatal(err)
		}
		if useq, err = s.Append(ctx, persistence.Append{Stream: unsynced, Expected: useq, Events: []persistence.Event{ev, ev}, NoSync: true, Active: new(i%2 == 0)}); err != nil {
			t.Fatal(err)
		}
	}
	// The synced append that makes the unsynced ones before it durable.
	if _, err := s.Append(ctx, persistence.Append{Stream: last, Events: []persistence.Event{ev}}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Crash(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: synced, Expected: seq, Events: []persistence.Event{ev}}); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("Append while PostgreSQL was down: %v, want persistence.ErrUnavailable", err)
	} else {
		t.Logf("Append while PostgreSQL is down: %v", err)
	}
	if _, err := s.LastSeq(ctx, synced); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("LastSeq while PostgreSQL was down: %v, want persistence.ErrUnavailable", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("Ping while PostgreSQL was down: %v, want persistence.ErrUnavailable", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping after the restart: %v", err)
	}
	for st, want := range map[persistence.Stream]uint64{synced: seq, unsynced: useq, last: 1} {
		got, err := s.LastSeq(ctx, st)
		if err != nil {
			t.Fatalf("LastSeq(%s) after the restart: %v", st, err)
		}
		if got != want {
			t.Fatalf("LastSeq(%s) after the crash = %d, want %d", st, got, want)
		}
		n := uint64(0)
		if err := s.Load(ctx, st, 0, func(persistence.Event) error { n++; return nil }); err != nil || n != want {
			t.Fatalf("Load(%s) after the crash: %d events, %v; want %d", st, n, err, want)
		}
	}
	var active []string
	if err := s.Active(ctx, persistence.KindDevice, func(id string) error { active = append(active, id); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(active) != 0 { // the last unsynced append (i = 49) cleared the mark
		t.Fatalf("active marks after the crash: %v", active)
	}
	// The store writes again.
	if _, err := s.Append(ctx, persistence.Append{Stream: synced, Expected: seq, Events: []persistence.Event{ev}}); err != nil {
		t.Fatalf("Append after the restart: %v", err)
	}
}

// TestHungServer freezes PostgreSQL (SIGSTOP: connections stay open and
// nothing answers): an append and a read end after Options.Timeout with
// persistence.ErrUnavailable rather than hang, and once the server runs
// again the same store resumes.
func TestHungServer(t *testing.T) {
	if os.Getenv(pgtest.EnvDSN) != "" {
		t.Skip("the test needs the private server: it cannot freeze one given by " + pgtest.EnvDSN)
	}
	srv, err := pgtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Error(err)
		}
	})
	s, err := pgstore.Open(context.Background(), srv.NewDatabase(t), pgstore.Options{SealKey: testKey, Logger: testLogger(t), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "hung"}
	ev := persistence.Event{Type: persistence.EventTypeDevice, Version: 1, Payload: []byte("x")}
	seq, err := s.Append(ctx, persistence.Append{Stream: st, Events: []persistence.Event{ev}})
	if err != nil {
		t.Fatal(err)
	}
	thaw, err := srv.Freeze()
	if err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = thaw()
		}
	}()
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: seq, Events: []persistence.Event{ev}}); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("Append to a hung server: %v, want persistence.ErrUnavailable", err)
	} else {
		t.Logf("Append to a hung server: %v", err)
	}
	if err := s.Load(ctx, st, 0, func(persistence.Event) error { return nil }); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("Load from a hung server: %v, want persistence.ErrUnavailable", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, persistence.ErrUnavailable) {
		t.Fatalf("Ping of a hung server: %v, want persistence.ErrUnavailable", err)
	}
	thawed = true
	if err := thaw(); err != nil {
		t.Fatal(err)
	}
	// The append that timed out may have been written: read the head.
	if seq, err = s.LastSeq(ctx, st); err != nil {
		t.Fatalf("LastSeq once the server runs again: %v", err)
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: seq, Events: []persistence.Event{ev}}); err != nil {
		t.Fatalf("Append once the server runs again: %v", err)
	}
}
