// Package memstore is an in-memory persistence.Store (journal and registry)
// for tests: the same contract as pebblestore (persistence/persistencetest),
// nothing durable. Blobs are held in memory whole. It is safe for concurrent
// use.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/otafleet/otafleet/persistence"
)

// Store is an in-memory event store.
type Store struct {
	mu        sync.Mutex
	closed    bool
	events    map[persistence.Stream][]persistence.Event
	snapshots map[persistence.Stream]persistence.Snapshot
	records   map[persistence.Stream]map[string]persistence.Record
	active    map[persistence.Kind]map[string]bool
	appends   int // successful Append calls
	unsynced  int // of which NoSync

	products map[string]persistence.Product
	devices  map[string]persistence.Device // with credentials
	groups   map[string]persistence.Group
	packages map[string]persistence.Package
	tasks    map[string]persistence.TaskRecord
	blobs    map[string]*blob
	writing  map[string]bool              // blobs being written
	sessions map[string]map[string][]byte // transport → device → value
}

// New returns an empty store.
func New() *Store {
	return &Store{
		events:    map[persistence.Stream][]persistence.Event{},
		snapshots: map[persistence.Stream]persistence.Snapshot{},
		records:   map[persistence.Stream]map[string]persistence.Record{},
		active:    map[persistence.Kind]map[string]bool{},
		products:  map[string]persistence.Product{},
		devices:   map[string]persistence.Device{},
		groups:    map[string]persistence.Group{},
		packages:  map[string]persistence.Package{},
		tasks:     map[string]persistence.TaskRecord{},
		blobs:     map[string]*blob{},
		writing:   map[string]bool{},
		sessions:  map[string]map[string][]byte{},
	}
}

var (
	_ persistence.Store         = (*Store)(nil)
	_ persistence.AppendCounter = (*Store)(nil)
)

func (s *Store) check(ctx context.Context) error {
	if s.closed {
		return persistence.ErrClosed
	}
	return ctx.Err()
}

// Append implements persistence.EventStore.
func (s *Store) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if err := a.Validate(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	evs := s.events[a.Stream]
	last := uint64(len(evs))
	if last != a.Expected {
		return 0, fmt.Errorf("%w: stream %s ends at %d, writer expected %d", persistence.ErrConflict, a.Stream, last, a.Expected)
	}
	if len(a.Records) > 0 {
		m := s.records[a.Stream]
		if m == nil {
			m = map[string]persistence.Record{}
			s.records[a.Stream] = m
		}
		for _, r := range a.Records {
			if r.Delete {
				delete(m, string(r.Key))
				continue
			}
			m[string(r.Key)] = persistence.Record{Key: slices.Clone(r.Key), Type: r.Type, Version: r.Version, Payload: slices.Clone(r.Payload)}
		}
	}
	for _, e := range a.Events {
		last++
		e.Seq = last
		e.Payload = slices.Clone(e.Payload)
		evs = append(evs, e)
	}
	s.events[a.Stream] = evs
	if a.Active != nil {
		m := s.active[a.Stream.Kind]
		if m == nil {
			m = map[string]bool{}
			s.active[a.Stream.Kind] = m
		}
		if *a.Active {
			m[a.Stream.ID] = true
		} else {
			delete(m, a.Stream.ID)
		}
	}
	s.appends++
	if a.NoSync {
		s.unsynced++
	}
	return last, nil
}

// Load implements persistence.EventStore.
func (s *Store) Load(ctx context.Context, st persistence.Stream, after uint64, fn func(persistence.Event) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	evs := s.events[st]
	var tail []persistence.Event
	if after < uint64(len(evs)) {
		tail = slices.Clone(evs[after:])
	}
	s.mu.Unlock()
	for _, e := range tail {
		e.Payload = slices.Clone(e.Payload)
		if err := fn(e); err != nil {
			return err
		}
	}
	return nil
}

// LastSeq implements persistence.EventStore.
func (s *Store) LastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	if err := st.Validate(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	return uint64(len(s.events[st])), nil
}

// SaveSnapshot implements persistence.EventStore.
func (s *Store) SaveSnapshot(ctx context.Context, st persistence.Stream, snap persistence.Snapshot) error {
	if err := st.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	if snap.Seq > uint64(len(s.events[st])) {
		return fmt.Errorf("%w: snapshot of %s at %d is past its last event %d", persistence.ErrInvalid, st, snap.Seq, len(s.events[st]))
	}
	snap.Payload = slices.Clone(snap.Payload)
	s.snapshots[st] = snap
	return nil
}

// LoadSnapshot implements persistence.EventStore.
func (s *Store) LoadSnapshot(ctx context.Context, st persistence.Stream) (persistence.Snapshot, bool, error) {
	if err := st.Validate(); err != nil {
		return persistence.Snapshot{}, false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return persistence.Snapshot{}, false, err
	}
	snap, ok := s.snapshots[st]
	snap.Payload = slices.Clone(snap.Payload)
	return snap, ok, nil
}

// LoadRecords implements persistence.EventStore.
func (s *Store) LoadRecords(ctx context.Context, st persistence.Stream, fn func(persistence.Record) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	recs := slices.Collect(maps.Values(s.records[st]))
	s.mu.Unlock()
	slices.SortFunc(recs, func(a, b persistence.Record) int { return bytes.Compare(a.Key, b.Key) })
	for _, r := range recs {
		r.Key, r.Payload = slices.Clone(r.Key), slices.Clone(r.Payload)
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Active implements persistence.EventStore; IDs come in byte order.
func (s *Store) Active(ctx context.Context, kind persistence.Kind, fn func(string) error) error {
	if err := kind.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	var ids []string
	for id := range s.active[kind] {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	slices.Sort(ids)
	for _, id := range ids {
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// Close implements persistence.EventStore.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// Appends implements persistence.AppendCounter: the successful appends
// that asked to be synced and those marked NoSync (nothing is durable in
// memory; the split tells tests what a durable store would have synced).
func (s *Store) Appends() (synced, unsynced uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return uint64(s.appends - s.unsynced), uint64(s.unsynced)
}
