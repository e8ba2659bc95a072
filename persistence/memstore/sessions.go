package memstore

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/otafleet/otafleet/persistence"
)

// PutSession implements persistence.Sessions.
func (s *Store) PutSession(ctx context.Context, transport, id string, value []byte) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	m := s.sessions[transport]
	if m == nil {
		m = map[string][]byte{}
		s.sessions[transport] = m
	}
	m[id] = bytes.Clone(value)
	return nil
}

// GetSession implements persistence.Sessions.
func (s *Store) GetSession(ctx context.Context, transport, id string) ([]byte, error) {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	v, ok := s.sessions[transport][id]
	if !ok {
		return nil, fmt.Errorf("%w: session %s/%s", persistence.ErrNotFound, transport, id)
	}
	return bytes.Clone(v), nil
}

// DeleteSession implements persistence.Sessions.
func (s *Store) DeleteSession(ctx context.Context, transport, id string) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return err
	}
	delete(s.sessions[transport], id)
	return nil
}

// ListSessions implements persistence.Sessions. fn runs without the store's
// lock, on a copy taken at the call.
func (s *Store) ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error {
	if err := persistence.ValidateID(transport); err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	m := maps.Clone(s.sessions[transport])
	s.mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(m)) {
		if err := fn(id, bytes.Clone(m[id])); err != nil {
			return err
		}
	}
	return nil
}
