package pebblestore

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/otafleet/otafleet/persistence"
)

func sessionPrefix(transport string) []byte { return join(prefixSessions, transport, "") }

// decodeSession returns the payload of the session stored at key.
func decodeSession(key, v []byte) ([]byte, error) {
	e, err := persistence.DecodeEvent(0, v)
	if err == nil && e.Type != recSession {
		err = fmt.Errorf("record of type %d where a session (%d) was expected", e.Type, recSession)
	}
	if err == nil && e.Version != recVersion {
		err = fmt.Errorf("session version %d is unknown to this build (it reads %d)", e.Version, recVersion)
	}
	if err != nil {
		return nil, &persistence.CorruptError{Key: bytes.Clone(key), Reason: err.Error()}
	}
	return e.Payload, nil
}

// PutSession implements persistence.Sessions (unsynced: see the package doc).
func (s *Store) PutSession(ctx context.Context, transport, id string, value []byte) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	return s.writeSession(ctx, func(b *pebble.Batch) error {
		return b.Set(join(prefixSessions, transport, id), persistence.EncodeEvent(persistence.Event{
			Type: recSession, Version: recVersion, Payload: value,
		}), nil)
	})
}

// GetSession implements persistence.Sessions.
func (s *Store) GetSession(ctx context.Context, transport, id string) ([]byte, error) {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return nil, err
	}
	if err := s.enter(ctx); err != nil {
		return nil, err
	}
	defer s.exit()
	k := join(prefixSessions, transport, id)
	v, ok, err := s.get(k)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("session", transport+"/"+id)
	}
	return decodeSession(k, v)
}

// DeleteSession implements persistence.Sessions.
func (s *Store) DeleteSession(ctx context.Context, transport, id string) error {
	if err := persistence.ValidateSessionKey(transport, id); err != nil {
		return err
	}
	return s.writeSession(ctx, func(b *pebble.Batch) error {
		return b.Delete(join(prefixSessions, transport, id), nil)
	})
}

func (s *Store) writeSession(ctx context.Context, fill func(b *pebble.Batch) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	b := s.db.NewBatch()
	defer b.Close()
	if err := fill(b); err != nil {
		return err
	}
	return s.commit(b, pebble.NoSync)
}

// ListSessions implements persistence.Sessions. A session that does not
// decode stops the listing with a *persistence.CorruptError naming its key.
func (s *Store) ListSessions(ctx context.Context, transport string, fn func(id string, value []byte) error) error {
	if err := persistence.ValidateID(transport); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	prefix := sessionPrefix(transport)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return s.readErr(prefix, err)
	}
	err = func() error {
		for valid := it.First(); valid; valid = it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(it.Key(), err)
			}
			payload, err := decodeSession(it.Key(), v)
			if err != nil {
				return err
			}
			if err := fn(string(it.Key()[len(prefix):]), payload); err != nil {
				return err
			}
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(prefix, ierr)
	}
	return firstErr(err, it.Close())
}
