package pebblestore

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/registrypb"
)

// sealer seals and opens device credentials with the store's key.
type sealer = persistence.Sealer

func (s *Store) sealer() (sealer, error) {
	return persistence.NewSealer(s.sealKey[:])
}

// reseal re-seals every device's credentials, sealed under the store's
// current key (what names it in messages), under newKey, and records newKey's
// check value in place of the old seal record: one synced batch, so a crash
// leaves the store all under the old key or all under the new one. It runs
// in Open, before any other call.
func (s *Store) reseal(newKey []byte, what string) error {
	from, err := s.sealer()
	if err != nil {
		return err
	}
	to, err := persistence.NewSealer(newKey)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: prefixDevice, UpperBound: prefixEnd(prefixDevice)})
	if err != nil {
		return err
	}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		var r registrypb.Device
		if err := decodeRecord(k, it.Value(), recDevice, &r); err != nil {
			it.Close()
			return err
		}
		for _, c := range []struct {
			sealed *[]byte
			label  string
		}{{&r.SealedSecret, "secret/" + r.Id}, {&r.SealedPsk, "psk/" + r.Id}} {
			plain, err := from.Open(*c.sealed, c.label)
			if err != nil {
				it.Close()
				return &persistence.CorruptError{Key: k, Reason: fmt.Sprintf("%v (%s)", err, what)}
			}
			if *c.sealed, err = to.Seal(plain, c.label); err != nil {
				it.Close()
				return err
			}
		}
		v, err := encodeRecord(recDevice, &r)
		if err != nil {
			it.Close()
			return err
		}
		if err := b.Set(k, v, nil); err != nil {
			it.Close()
			return err
		}
		n++
	}
	if err := firstErr(it.Error(), it.Close()); err != nil {
		return s.readErr(nil, err)
	}
	if err := b.Set(keySeal, append([]byte{sealExternal}, persistence.SealCheck(newKey)...), nil); err != nil {
		return err
	}
	if err := s.commit(b, pebble.Sync); err != nil {
		return err
	}
	copy(s.sealKey[:], newKey)
	s.log.Info("device credentials re-sealed under the new seal key", "devices", n, "from", what)
	// Rewrite the old seal record and the old sealed values out of the
	// files now rather than at some later compaction. Best effort: the
	// store is consistent either way.
	if err := s.db.Flush(); err == nil {
		for _, p := range [][]byte{prefixMeta, prefixDevice} {
			err = firstErr(err, s.db.Compact(context.Background(), p, prefixEnd(p), false))
		}
		if err != nil {
			s.log.Warn("pebblestore: compacting after the re-seal", "error", err)
		}
	}
	return nil
}
