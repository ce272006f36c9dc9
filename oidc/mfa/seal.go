package mfa

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
)

// ErrNoSecretKey is returned when a sealed secret is read without the key
// that sealed it (keys.secret_key removed from the configuration).
var ErrNoSecretKey = errors.New("the secret is sealed and keys.secret_key is not set")

// Sealer seals stored secrets with AES-256-GCM under the provider's secret
// key, so that a copy of the database alone does not reveal them. The
// additional data binds each sealed value to its owner and purpose: a
// sealed secret copied to another person's row does not open. A nil
// Sealer stores secrets as they are.
type Sealer struct {
	aead cipher.AEAD
}

// NewSealer returns a Sealer for a 32-byte key, or nil for an empty key.
func NewSealer(key []byte) (*Sealer, error) {
	if len(key) == 0 {
		return nil, nil
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("secret key: %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal returns plain sealed for aad, and whether it is sealed.
func (s *Sealer) Seal(plain []byte, aad string) ([]byte, bool) {
	if s == nil {
		return plain, false
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	_, _ = rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, []byte(aad)), true
}

// Open returns the plain value of a stored one.
func (s *Sealer) Open(stored []byte, sealed bool, aad string) ([]byte, error) {
	if !sealed {
		return stored, nil
	}
	if s == nil {
		return nil, ErrNoSecretKey
	}
	n := s.aead.NonceSize()
	if len(stored) < n {
		return nil, errors.New("sealed secret too short")
	}
	plain, err := s.aead.Open(nil, stored[:n], stored[n:], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("open sealed secret: %w", err)
	}
	return plain, nil
}
