package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/otafleet/otafleet/internal/pgtest"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/pgstore"
)

// TestPipelinesCompete runs competing writers (four per stream) through a
// committer with several pipelines and small batches: every sequence
// number of every stream has exactly one winner, whose event is stored,
// and the writers' batches never lose an append to another's.
func TestPipelinesCompete(t *testing.T) {
	s, err := pgstore.Open(context.Background(), pgtest.NewDatabase(t), pgstore.Options{SealKey: testKey, Logger: testLogger(t), Pipelines: 3, MaxBatch: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const streams, writers, appends = 4, 4, 30
	ctx := context.Background()
	type win struct {
		st  persistence.Stream
		seq uint64
	}
	var mu sync.Mutex
	owner := map[win]string{}
	var wg sync.WaitGroup
	errs := make(chan error, streams*writers)
	for i := range streams {
		st := persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("s%d", i)}
		for w := range writers {
			name := fmt.Sprintf("w%d", w)
			wg.Go(func() {
				for range appends {
					last, err := s.LastSeq(ctx, st)
					if err != nil {
						errs <- err
						return
					}
					seq, err := s.Append(ctx, persistence.Append{Stream: st, Expected: last, Events: []persistence.Event{{Type: 1, Payload: []byte(name)}}})
					if errors.Is(err, persistence.ErrConflict) {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					if other, dup := owner[win{st, seq}]; dup {
						errs <- fmt.Errorf("%s seq %d won by %s and %s", st, seq, other, name)
					}
					owner[win{st, seq}] = name
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range streams {
		st := persistence.Stream{Kind: persistence.KindDevice, ID: fmt.Sprintf("s%d", i)}
		n := 0
		if err := s.Load(ctx, st, 0, func(e persistence.Event) error {
			n++
			if got := owner[win{st, e.Seq}]; got != string(e.Payload) {
				return fmt.Errorf("%s event %d written by %s, won by %q", st, e.Seq, e.Payload, got)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if n < appends { // each round has a winner
			t.Fatalf("%s has %d events, want at least %d", st, n, appends)
		}
	}
}

// TestHeadAtZero: a stream whose head exists at 0 (written with records or
// a mark only) takes its first events with Expected 0, once.
func TestHeadAtZero(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	st := persistence.Stream{Kind: persistence.KindTask, ID: "t"}
	if seq, err := s.Append(ctx, persistence.Append{Stream: st, Records: []persistence.Record{{Key: []byte("k"), Payload: []byte("v")}}, Active: new(true)}); err != nil || seq != 0 {
		t.Fatalf("records-only Append = %d, %v", seq, err)
	}
	if seq, err := s.Append(ctx, persistence.Append{Stream: st, Events: []persistence.Event{{Type: 1}}}); err != nil || seq != 1 {
		t.Fatalf("first events after a records-only Append = %d, %v; want 1", seq, err)
	}
	if _, err := s.Append(ctx, persistence.Append{Stream: st, Events: []persistence.Event{{Type: 1}}}); !errors.Is(err, persistence.ErrConflict) {
		t.Fatalf("a second Append expecting 0: %v, want ErrConflict", err)
	}
	var ids []string
	if err := s.Active(ctx, persistence.KindTask, func(id string) error { ids = append(ids, id); return nil }); err != nil || len(ids) != 1 {
		t.Fatalf("Active = %v, %v; want the mark kept", ids, err)
	}
}
