package pebblestore

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/otafleet/otafleet/persistence"
)

var _ persistence.Lister = (*Store)(nil)

// Streams implements persistence.Lister: it walks the event keys, then the
// snapshots and the records of streams without events (seeking from one
// stream to the next, so each stream costs a seek, not a scan of its keys).
func (s *Store) Streams(ctx context.Context, fn func(persistence.Stream) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	hasEvents := func(st persistence.Stream) (bool, error) {
		k, err := s.firstUnder(persistence.EventPrefix(st))
		return k != nil, err
	}
	err := s.eachStream(ctx, []byte("e/"), func(k []byte) (persistence.Stream, []byte, error) {
		st, _, err := persistence.ParseEventKey(k)
		return st, persistence.EventPrefix(st), err
	}, fn)
	if err != nil {
		return err
	}
	err = s.eachStream(ctx, []byte("s/"), parseSnapshotKey, func(st persistence.Stream) error {
		if ok, err := hasEvents(st); ok || err != nil {
			return err
		}
		return fn(st)
	})
	if err != nil {
		return err
	}
	return s.eachStream(ctx, []byte("k/"), func(k []byte) (persistence.Stream, []byte, error) {
		st, _, err := persistence.ParseRecordKey(k)
		return st, persistence.RecordPrefix(st), err
	}, func(st persistence.Stream) error {
		if ok, err := hasEvents(st); ok || err != nil {
			return err
		}
		if ok, err := s.exists(persistence.SnapshotKey(st)); ok || err != nil {
			return err
		}
		return fn(st)
	})
}

// parseSnapshotKey splits s/<kind>/<id> into its stream (the stream's only
// snapshot key: no prefix to seek past).
func parseSnapshotKey(k []byte) (persistence.Stream, []byte, error) {
	kind, id, ok := bytes.Cut(bytes.TrimPrefix(k, []byte("s/")), []byte("/"))
	st := persistence.Stream{Kind: persistence.Kind(kind), ID: string(id)}
	if !ok || !bytes.HasPrefix(k, []byte("s/")) {
		return st, nil, fmt.Errorf("%w: %q is not a snapshot key", persistence.ErrInvalid, k)
	}
	return st, nil, st.Validate()
}

// eachStream calls fn with the stream of each group of keys under space:
// parse names a key's stream and the prefix of all that stream's keys, past
// which the walk seeks (nil: the key is the stream's only one). A key that does not parse is a
// *persistence.CorruptError.
func (s *Store) eachStream(ctx context.Context, space []byte, parse func(k []byte) (persistence.Stream, []byte, error), fn func(persistence.Stream) error) error {
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: space, UpperBound: prefixEnd(space)})
	if err != nil {
		return s.readErr(space, err)
	}
	err = func() error {
		for valid := it.First(); valid; {
			if err := ctx.Err(); err != nil {
				return err
			}
			st, prefix, err := parse(it.Key())
			if err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(it.Key()), Reason: err.Error()}
			}
			if err := fn(st); err != nil {
				return err
			}
			if prefix == nil {
				valid = it.Next()
			} else {
				valid = it.SeekGE(prefixEnd(prefix))
			}
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(space, ierr)
	}
	return firstErr(err, it.Close())
}

// Blobs implements persistence.Lister: the blob headers (a blob being
// written has none yet).
func (s *Store) Blobs(ctx context.Context, fn func(id string) error) error {
	return s.eachKeyPart(ctx, prefixBlobHeader, false, fn)
}

// SessionTransports implements persistence.Lister.
func (s *Store) SessionTransports(ctx context.Context, fn func(transport string) error) error {
	return s.eachKeyPart(ctx, prefixSessions, true, fn)
}

// eachKeyPart calls fn with the first key component after prefix of the keys
// under it: each key's when group is false; each group's once (seeking past
// it) when it is true.
func (s *Store) eachKeyPart(ctx context.Context, prefix []byte, group bool, fn func(string) error) error {
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return s.readErr(prefix, err)
	}
	err = func() error {
		for valid := it.First(); valid; {
			if err := ctx.Err(); err != nil {
				return err
			}
			part, _, _ := bytes.Cut(it.Key()[len(prefix):], []byte("/"))
			name := string(part)
			if err := persistence.ValidateID(name); err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(it.Key()), Reason: err.Error()}
			}
			if err := fn(name); err != nil {
				return err
			}
			if group {
				valid = it.SeekGE(prefixEnd(join(prefix, name, "")))
			} else {
				valid = it.Next()
			}
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(prefix, ierr)
	}
	return firstErr(err, it.Close())
}
