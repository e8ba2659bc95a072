package memstore

import (
	"context"
	"maps"
	"slices"

	"github.com/otafleet/otafleet/persistence"
)

var _ persistence.Lister = (*Store)(nil)

// Streams implements persistence.Lister.
func (s *Store) Streams(ctx context.Context, fn func(persistence.Stream) error) error {
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	set := map[persistence.Stream]bool{}
	for st, evs := range s.events {
		if len(evs) > 0 {
			set[st] = true
		}
	}
	for st := range s.snapshots {
		set[st] = true
	}
	for st, m := range s.records {
		if len(m) > 0 {
			set[st] = true
		}
	}
	s.mu.Unlock()
	for st := range set {
		if err := fn(st); err != nil {
			return err
		}
	}
	return nil
}

// Blobs implements persistence.Lister.
func (s *Store) Blobs(ctx context.Context, fn func(id string) error) error {
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	ids := slices.Sorted(maps.Keys(s.blobs))
	s.mu.Unlock()
	for _, id := range ids {
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// SessionTransports implements persistence.Lister.
func (s *Store) SessionTransports(ctx context.Context, fn func(transport string) error) error {
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	var names []string
	for name, m := range s.sessions {
		if len(m) > 0 {
			names = append(names, name)
		}
	}
	s.mu.Unlock()
	slices.Sort(names)
	for _, name := range names {
		if err := fn(name); err != nil {
			return err
		}
	}
	return nil
}
