package persistence

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
)

// SealKeyLen is the length of a seal key (AES-256).
const SealKeyLen = 32

// Sealer seals and opens device credentials with a store's seal key:
// AES-256-GCM, a random nonce, and a label (say "secret/<id>") as the
// additional data, so a sealed value cannot be moved to another device or
// field. Every store seals the same way, so a sealed value means the same
// thing in all of them. A Sealer is safe for concurrent use.
type Sealer struct{ aead cipher.AEAD }

// NewSealer returns the sealer of a SealKeyLen-byte key.
func NewSealer(key []byte) (Sealer, error) {
	if len(key) != SealKeyLen {
		return Sealer{}, fmt.Errorf("%w: seal key of %d bytes, want %d", ErrInvalid, len(key), SealKeyLen)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return Sealer{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return Sealer{}, err
	}
	return Sealer{aead}, nil
}

// Seal returns nonce || ciphertext of plain, bound to label; nil for an
// empty plain.
func (s Sealer) Seal(plain []byte, label string) ([]byte, error) {
	if len(plain) == 0 {
		return nil, nil
	}
	out := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(out); err != nil {
		return nil, fmt.Errorf("sealing: %w", err)
	}
	return s.aead.Seal(out, out, plain, []byte(label)), nil
}

// Open reverses Seal; nil for an empty sealed value.
func (s Sealer) Open(sealed []byte, label string) ([]byte, error) {
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

// SealCheck identifies a seal key without revealing it (HMAC-SHA256 of a
// fixed message): what a store keeps to refuse a wrong key.
func SealCheck(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("otafleet seal key check"))
	return m.Sum(nil)
}
