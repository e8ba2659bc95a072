package pebblestore

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"fmt"
)

// sealer seals and opens device credentials with the store's key.
type sealer struct{ aead cipher.AEAD }

func (s *Store) sealer() (sealer, error) {
	block, err := aes.NewCipher(s.sealKey[:])
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
