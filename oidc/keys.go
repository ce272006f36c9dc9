package oidc

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/session"
)

// KeyStore keeps signing keys.
type KeyStore interface {
	AddSigningKey(ctx context.Context, k session.SigningKey, retireOthers time.Time) error
	SigningKeys(ctx context.Context, now time.Time) ([]session.SigningKey, error)
}

// SupportedAlgorithms are the signing algorithms `keys.algorithm` accepts.
var SupportedAlgorithms = []string{string(jose.RS256), string(jose.ES256), string(jose.EdDSA)}

// Keys holds the provider's signing keys in memory: the newest signs, every
// unretired one is published in the JWKS so that tokens signed before a
// rotation still verify.
type Keys struct {
	store KeyStore
	alg   jose.SignatureAlgorithm
	now   func() time.Time

	mu      sync.RWMutex
	current *signingKey
	public  []op.Key
	byID    map[string]*jose.JSONWebKey
}

type signingKey struct {
	id  string
	alg jose.SignatureAlgorithm
	key crypto.Signer
}

func (k *signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return k.alg }
func (k *signingKey) Key() any                                    { return k.key }
func (k *signingKey) ID() string                                  { return k.id }

type publicKey struct {
	id  string
	alg jose.SignatureAlgorithm
	key crypto.PublicKey
}

func (k *publicKey) ID() string                         { return k.id }
func (k *publicKey) Algorithm() jose.SignatureAlgorithm { return k.alg }
func (k *publicKey) Use() string                        { return "sig" }
func (k *publicKey) Key() any                           { return k.key }

// LoadKeys reads the stored keys, generating a first key (or a new one when
// the configured algorithm changed) when needed.
func LoadKeys(ctx context.Context, store KeyStore, alg string, now func() time.Time) (*Keys, error) {
	k := &Keys{store: store, alg: jose.SignatureAlgorithm(alg), now: now}
	if err := k.Reload(ctx); err != nil {
		return nil, err
	}
	k.mu.RLock()
	need := k.current == nil || k.current.alg != k.alg
	k.mu.RUnlock()
	if need {
		if _, err := k.Rotate(ctx, 0); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// Rotate adds a new current key. Older keys stay published for keep (the
// longest lifetime of a token they may have signed), then leave the JWKS.
func (k *Keys) Rotate(ctx context.Context, keep time.Duration) (string, error) {
	priv, err := generateKey(k.alg)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", err
	}
	now := k.now()
	sk := session.SigningKey{ID: session.NewID(), Algorithm: string(k.alg), PrivateDER: der, CreatedAt: now}
	if err := k.store.AddSigningKey(ctx, sk, now.Add(keep)); err != nil {
		return "", fmt.Errorf("store signing key: %w", err)
	}
	return sk.ID, k.Reload(ctx)
}

func generateKey(alg jose.SignatureAlgorithm) (crypto.Signer, error) {
	switch alg {
	case jose.RS256:
		return rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		return priv, err
	}
	return nil, fmt.Errorf("keys.algorithm %q is not supported (want RS256, ES256 or EdDSA)", alg)
}

// Reload re-reads the keys from the store (after `idleguard keys rotate` in
// another process, say).
func (k *Keys) Reload(ctx context.Context) error {
	stored, err := k.store.SigningKeys(ctx, k.now())
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	var current *signingKey
	var public []op.Key
	byID := make(map[string]*jose.JSONWebKey, len(stored))
	for i, s := range stored {
		parsed, err := x509.ParsePKCS8PrivateKey(s.PrivateDER)
		if err != nil {
			return fmt.Errorf("signing key %s: %w", s.ID, err)
		}
		signer, ok := parsed.(crypto.Signer)
		if !ok {
			return fmt.Errorf("signing key %s: not a signer", s.ID)
		}
		alg := jose.SignatureAlgorithm(s.Algorithm)
		if i == 0 {
			current = &signingKey{id: s.ID, alg: alg, key: signer}
		}
		public = append(public, &publicKey{id: s.ID, alg: alg, key: signer.Public()})
		byID[s.ID] = &jose.JSONWebKey{Key: signer.Public(), KeyID: s.ID, Algorithm: s.Algorithm, Use: "sig"}
	}
	k.mu.Lock()
	k.current, k.public, k.byID = current, public, byID
	k.mu.Unlock()
	return nil
}

// Signing returns the current signing key.
func (k *Keys) Signing() op.SigningKey {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.current
}

// Public returns every published key.
func (k *Keys) Public() []op.Key {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.public
}

// Algorithms returns the algorithms of published keys.
func (k *Keys) Algorithms() []jose.SignatureAlgorithm {
	k.mu.RLock()
	defer k.mu.RUnlock()
	var out []jose.SignatureAlgorithm
	seen := map[jose.SignatureAlgorithm]bool{}
	for _, p := range k.public {
		if !seen[p.Algorithm()] {
			seen[p.Algorithm()] = true
			out = append(out, p.Algorithm())
		}
	}
	return out
}

// VerifyKey returns the public key with id kid.
func (k *Keys) VerifyKey(kid string) (*jose.JSONWebKey, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	j, ok := k.byID[kid]
	return j, ok
}

// VerifySignature implements oidc.KeySet for zitadel's verifiers, from memory.
func (k *Keys) VerifySignature(_ context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("want exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	key, ok := k.VerifyKey(kid)
	if !ok {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return jws.Verify(key)
}

// KeyRetention is how long a rotated-out key stays published: the longest
// lifetime of any token it may have signed (ID tokens, access tokens, logout
// tokens), plus a minute of margin.
func KeyRetention(cfg Config) time.Duration {
	keep := max(cfg.IDTokenTTL, 10*time.Minute, logoutTokenTTL)
	for _, c := range cfg.Clients {
		keep = max(keep, c.AccessTokenTTL, c.IDTokenTTL)
	}
	return keep + time.Minute
}
