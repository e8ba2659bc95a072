package pebblestore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/persistence/registrypb"
)

// sealer seals and opens device credentials with the store's key.
type sealer struct{ aead cipher.AEAD }

func (s *Store) sealer() (sealer, error) {
	return newSealer(s.sealKey[:])
}

func newSealer(key []byte) (sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return sealer{}, err
	}
	return sealer{aead}, nil
}

// seal returns nonce || ciphertext of plain, bound to label (say
// "secret/<id>"); nil for an empty plain.
func (s sealer) seal(plain []byte, label string) ([]byte, error) {
	if len(plain) == 0 {
		return nil, nil
	}
	out := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}
	return s.aead.Seal(out, out, plain, []byte(label)), nil
}

// open reverses seal.
func (s sealer) open(sealed []byte, label string) ([]byte, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	n := s.aead.NonceSize()
	if len(sealed) < n+s.aead.Overhead() {
		return nil, fmt.Errorf("sealed %s of %d bytes is too short", label, len(sealed))
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(label))
	if err != nil {
		return nil, fmt.Errorf("sealed %s does not open with the store's key", label)
	}
	return plain, nil
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
	to, err := newSealer(newKey)
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
			plain, err := from.open(*c.sealed, c.label)
			if err != nil {
				it.Close()
				return &persistence.CorruptError{Key: k, Reason: fmt.Sprintf("%v (%s)", err, what)}
			}
			if *c.sealed, err = to.seal(plain, c.label); err != nil {
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
	if err := b.Set(keySeal, append([]byte{sealExternal}, sealCheck(newKey)...), nil); err != nil {
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
