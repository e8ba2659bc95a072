package pebblestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"github.com/otafleet/otafleet/persistence"
)

// stripe is the lock of a set of streams (hashed), with the last sequence
// numbers of those of them that were written lately.
type stripe struct {
	// mu orders the Expected check and the commit of appends (and
	// snapshots) to the stripe's streams.
	mu sync.Mutex
	// last caches the last sequence number of streams appended to or read
	// under mu, so that Append checks Expected without a Pebble iterator. An
	// entry is dropped when its stream's active mark is cleared (the actor
	// went idle), when a commit's outcome is unknown (it failed), and at
	// random when the stripe holds stripeStreams entries: memory stays
	// bounded whatever the number of streams, and a miss reads the last key.
	last map[persistence.Stream]uint64
}

// stripeStreams bounds the cached sequence numbers of one stripe: with 1024
// stripes, about 260,000 streams (some 25 MiB at most).
const stripeStreams = 256

// stripe returns st's stripe.
func (s *Store) stripe(st persistence.Stream) *stripe {
	var h maphash.Hash
	h.SetSeed(s.streamSeed)
	h.WriteString(string(st.Kind))
	h.WriteByte('/')
	h.WriteString(st.ID)
	return &s.stripes[h.Sum64()%uint64(len(s.stripes))]
}

// lastSeqLocked returns st's last sequence number from the stripe's cache,
// reading (and caching) it on a miss. The caller holds p.mu.
func (s *Store) lastSeqLocked(p *stripe, st persistence.Stream) (uint64, error) {
	if seq, ok := p.last[st]; ok {
		return seq, nil
	}
	seq, err := s.lastSeq(st)
	if err != nil {
		return 0, err
	}
	p.remember(st, seq)
	return seq, nil
}

// remember caches seq as st's last sequence number, evicting another entry
// when the stripe is full. The caller holds p.mu.
func (p *stripe) remember(st persistence.Stream, seq uint64) {
	if p.last == nil {
		p.last = make(map[persistence.Stream]uint64)
	}
	if _, ok := p.last[st]; !ok && len(p.last) >= stripeStreams {
		for k := range p.last {
			delete(p.last, k)
			break
		}
	}
	p.last[st] = seq
}

// Append implements persistence.EventStore. The Expected check reads the
// stream's last sequence number from memory once the stream was used (see
// stripe); a commit that fails forgets it, since its outcome is unknown.
func (s *Store) Append(ctx context.Context, a persistence.Append) (uint64, error) {
	if err := a.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	p := s.stripe(a.Stream)
	p.mu.Lock()
	defer p.mu.Unlock()
	last, err := s.lastSeqLocked(p, a.Stream)
	if err != nil {
		return 0, err
	}
	if last != a.Expected {
		return 0, fmt.Errorf("%w: stream %s ends at %d, writer expected %d", persistence.ErrConflict, a.Stream, last, a.Expected)
	}
	if uint64(len(a.Events)) > math.MaxUint64-last {
		return 0, fmt.Errorf("%w: stream %s: sequence numbers exhausted", persistence.ErrInvalid, a.Stream)
	}
	if len(a.Events) == 0 && len(a.Records) == 0 && a.Active == nil {
		return last, nil
	}
	b := s.db.NewBatch()
	defer b.Close()
	seq := last
	for _, e := range a.Events {
		seq++
		if err := b.Set(persistence.EventKey(a.Stream, seq), persistence.EncodeEvent(e), nil); err != nil {
			return 0, err
		}
	}
	for _, r := range a.Records {
		k := persistence.RecordKey(a.Stream, r.Key)
		if r.Delete {
			err = b.Delete(k, nil)
		} else {
			err = b.Set(k, persistence.EncodeRecord(r), nil)
		}
		if err != nil {
			return 0, err
		}
	}
	if a.Active != nil {
		if *a.Active {
			err = b.Set(persistence.ActiveKey(a.Stream), nil, nil)
		} else {
			err = b.Delete(persistence.ActiveKey(a.Stream), nil)
		}
		if err != nil {
			return 0, err
		}
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	opts, counter := pebble.Sync, &s.syncedAppends
	if a.NoSync {
		opts, counter = pebble.NoSync, &s.unsyncedAppends
	}
	if err := s.commit(b, opts); err != nil {
		delete(p.last, a.Stream)
		return 0, err
	}
	counter.Add(1)
	if a.Active != nil && !*a.Active {
		delete(p.last, a.Stream)
	} else {
		p.remember(a.Stream, seq)
	}
	return seq, nil
}

// Appends implements persistence.AppendCounter: how many Append calls
// committed a batch synced (pebble.Sync) and unsynced (Append.NoSync) since
// the store was opened.
func (s *Store) Appends() (synced, unsynced uint64) {
	return s.syncedAppends.Load(), s.unsyncedAppends.Load()
}

// lastSeq reads the sequence number of st's last event.
func (s *Store) lastSeq(st persistence.Stream) (uint64, error) {
	prefix := persistence.EventPrefix(st)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return 0, s.readErr(prefix, err)
	}
	var seq uint64
	if it.Last() {
		k := it.Key()
		if len(k) != len(prefix)+8 {
			err = &persistence.CorruptError{Key: bytes.Clone(k), Reason: "event key of the wrong length"}
		} else {
			seq = binary.BigEndian.Uint64(k[len(prefix):])
		}
	}
	if err := firstErr(err, it.Error(), it.Close()); err != nil {
		return 0, s.iterErr(prefix, err)
	}
	return seq, nil
}

// iterErr maps an iteration error; a *persistence.CorruptError passes.
func (s *Store) iterErr(key []byte, err error) error {
	if _, ok := err.(*persistence.CorruptError); ok {
		return err
	}
	return s.readErr(key, err)
}

// Load implements persistence.EventStore. Sequence numbers must follow each
// other from after+1: a gap is a *persistence.CorruptError.
func (s *Store) Load(ctx context.Context, st persistence.Stream, after uint64, fn func(persistence.Event) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	if after == math.MaxUint64 {
		return nil
	}
	prefix := persistence.EventPrefix(st)
	lower := persistence.EventKey(st, after+1)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return s.readErr(lower, err)
	}
	last := lower // the key that errors name
	err = func() error {
		next := after + 1
		for valid := it.First(); valid; valid = it.Next() {
			k := it.Key()
			last = k
			if len(k) != len(prefix)+8 {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: "event key of the wrong length"}
			}
			seq := binary.BigEndian.Uint64(k[len(prefix):])
			if seq != next {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("sequence number %d where %d was expected (a gap in the stream)", seq, next)}
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(k, err)
			}
			e, err := persistence.DecodeEvent(seq, v)
			if err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: err.Error()}
			}
			e.Payload = bytes.Clone(e.Payload)
			if err := fn(e); err != nil {
				return err
			}
			if next%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			next++
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(last, ierr)
	}
	return firstErr(err, it.Close())
}

// LastSeq implements persistence.EventStore.
func (s *Store) LastSeq(ctx context.Context, st persistence.Stream) (uint64, error) {
	if err := st.Validate(); err != nil {
		return 0, err
	}
	if err := s.enter(ctx); err != nil {
		return 0, err
	}
	defer s.exit()
	return s.lastSeq(st)
}

// SaveSnapshot implements persistence.EventStore.
func (s *Store) SaveSnapshot(ctx context.Context, st persistence.Stream, snap persistence.Snapshot) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if snap.Seq > math.MaxInt64 {
		return fmt.Errorf("%w: snapshot of %s at %d", persistence.ErrInvalid, st, snap.Seq)
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	p := s.stripe(st)
	p.mu.Lock()
	defer p.mu.Unlock()
	last, err := s.lastSeqLocked(p, st)
	if err != nil {
		return err
	}
	if snap.Seq > last {
		return fmt.Errorf("%w: snapshot of %s at %d is past its last event %d", persistence.ErrInvalid, st, snap.Seq, last)
	}
	b := s.db.NewBatch()
	defer b.Close()
	if err := b.Set(persistence.SnapshotKey(st), persistence.EncodeSnapshot(snap), nil); err != nil {
		return err
	}
	return s.commit(b, pebble.Sync)
}

// LoadSnapshot implements persistence.EventStore.
func (s *Store) LoadSnapshot(ctx context.Context, st persistence.Stream) (persistence.Snapshot, bool, error) {
	if err := st.Validate(); err != nil {
		return persistence.Snapshot{}, false, err
	}
	if err := s.enter(ctx); err != nil {
		return persistence.Snapshot{}, false, err
	}
	defer s.exit()
	k := persistence.SnapshotKey(st)
	v, ok, err := s.get(k)
	if err != nil || !ok {
		return persistence.Snapshot{}, false, err
	}
	snap, err := persistence.DecodeSnapshot(v)
	if err != nil {
		return persistence.Snapshot{}, false, &persistence.CorruptError{Key: k, Reason: err.Error()}
	}
	return snap, true, nil
}

// LoadRecords implements persistence.EventStore. It reads the records as of
// one Pebble snapshot: a batch's records are all there or none.
func (s *Store) LoadRecords(ctx context.Context, st persistence.Stream, fn func(persistence.Record) error) error {
	if err := st.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	prefix := persistence.RecordPrefix(st)
	it, err := s.db.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: prefix, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return s.readErr(prefix, err)
	}
	last := prefix // the key that errors name
	err = func() error {
		n := 0
		for valid := it.First(); valid; valid = it.Next() {
			k := it.Key()
			last = k
			key := k[len(prefix):]
			if err := (persistence.Record{Key: key}).Validate(); err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: err.Error()}
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(k, err)
			}
			r, err := persistence.DecodeRecord(bytes.Clone(key), v)
			if err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: err.Error()}
			}
			r.Payload = bytes.Clone(r.Payload)
			if err := fn(r); err != nil {
				return err
			}
			if n++; n%256 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(last, ierr)
	}
	return firstErr(err, it.Close())
}

// activeBatch bounds how many IDs Active reads before it calls fn, so that no
// iterator stays open while fn runs.
const activeBatch = 1024

// Active implements persistence.EventStore; IDs come in byte order.
func (s *Store) Active(ctx context.Context, kind persistence.Kind, fn func(string) error) error {
	if err := kind.Validate(); err != nil {
		return err
	}
	if err := s.enter(ctx); err != nil {
		return err
	}
	defer s.exit()
	prefix := persistence.ActivePrefix(kind)
	lower := prefix
	for {
		ids, err := s.activeIDs(prefix, lower)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := fn(id); err != nil {
				return err
			}
		}
		if len(ids) < activeBatch {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		lower = afterID(prefix, ids[len(ids)-1])
	}
}

// activeIDs reads up to activeBatch IDs of active marks from lower on.
func (s *Store) activeIDs(prefix, lower []byte) ([]string, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, s.readErr(lower, err)
	}
	var ids []string
	err = func() error {
		for valid := it.First(); valid && len(ids) < activeBatch; valid = it.Next() {
			k := it.Key()
			id := string(k[len(prefix):])
			if err := persistence.ValidateID(id); err != nil {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: "active mark of an invalid ID: " + err.Error()}
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return s.readErr(k, err)
			}
			if len(v) != 0 {
				return &persistence.CorruptError{Key: bytes.Clone(k), Reason: fmt.Sprintf("active mark with a %d-byte value", len(v))}
			}
			ids = append(ids, id)
		}
		return nil
	}()
	if ierr := it.Error(); err == nil && ierr != nil {
		err = s.readErr(lower, ierr)
	}
	return ids, firstErr(err, it.Close())
}
