package pebblestore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/otafleet/otafleet/persistence"
)

func openMem(t *testing.T) *Store {
	t.Helper()
	s, err := Open("db", Options{FS: vfs.NewMem(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func oneEvent(n int) []persistence.Event {
	return []persistence.Event{{Type: persistence.EventTypeDevice, Version: 1, Payload: fmt.Appendf(nil, "e%d", n)}}
}

// TestAppendFailedCommitForgetsSequence: a commit whose outcome is unknown
// (here: written, then reported failed) drops the cached sequence number,
// so the next append checks Expected against what is really stored.
func TestAppendFailedCommitForgetsSequence(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "d1"}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Events: oneEvent(1), Active: new(true)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.stripe(st).last[st]; !ok {
		t.Fatal("the stream's sequence number is not cached after an append")
	}
	errUnknown := errors.New("injected: outcome unknown")
	s.afterCommit = func() error { return errUnknown }
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 1, Events: oneEvent(2), NoSync: true}); !errors.Is(err, errUnknown) {
		t.Fatalf("Append with a failing commit: %v, want the injected error", err)
	}
	s.afterCommit = nil
	if _, ok := s.stripe(st).last[st]; ok {
		t.Fatal("a failed commit left the stream's sequence number cached")
	}
	// The batch landed: the writer's Expected (1) is stale now.
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 1, Events: oneEvent(3)}); !errors.Is(err, persistence.ErrConflict) {
		t.Fatalf("Append expecting 1 after a failed commit that landed: %v, want ErrConflict", err)
	}
	if seq, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 2, Events: oneEvent(3)}); err != nil || seq != 3 {
		t.Fatalf("Append expecting 2: %d, %v; want 3", seq, err)
	}
	if synced, unsynced := s.Appends(); synced != 2 || unsynced != 0 {
		t.Fatalf("Appends = %d synced, %d unsynced; want 2 and 0 (a failed commit is not counted)", synced, unsynced)
	}
}

// TestAppendSequenceCacheBounded: a stripe caches at most stripeStreams
// sequence numbers, an idle stream (mark cleared) is dropped, and an evicted
// stream is still fenced (its last key is read again).
func TestAppendSequenceCacheBounded(t *testing.T) {
	s := openMem(t)
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindDevice, ID: "d1"}
	p := s.stripe(st)
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Events: oneEvent(1), Active: new(true)}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2*stripeStreams; i++ {
		p.remember(persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("other-%d", i)}, 7)
	}
	if len(p.last) > stripeStreams {
		t.Fatalf("a stripe caches %d streams, want at most %d", len(p.last), stripeStreams)
	}
	delete(p.last, st) // as if evicted
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 0, Events: oneEvent(9)}); !errors.Is(err, persistence.ErrConflict) {
		t.Fatalf("a stale Append of an evicted stream: %v, want ErrConflict", err)
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 1, Events: oneEvent(2), Active: new(false)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.last[st]; ok {
		t.Fatal("a stream whose mark was cleared is still cached")
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Expected: 1, Events: oneEvent(9)}); !errors.Is(err, persistence.ErrConflict) {
		t.Fatalf("a stale Append of an idle stream: %v, want ErrConflict", err)
	}
}
