package oidc

import (
	"cmp"
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

// Keys holds the provider's signing keys in memory: the newest one in force
// signs, every unretired one is published in the JWKS so that tokens signed
// before a rotation still verify.
//
// With several replicas a new key is published before it signs: Rotate
// dates it PublishDelay ahead, every replica reloads the keys at least that
// often (housekeeping), so by the time any replica signs with it every
// replica publishes it and verifies its tokens. A token with a key id this
// replica does not know makes it re-read the keys (at most once a second),
// in case its last reload failed.
type Keys struct {
	store KeyStore
	cfg   KeysConfig

	mu         sync.RWMutex
	keys       []*signingKey // newest first
	public     []op.Key
	byID       map[string]*jose.JSONWebKey
	lastReload time.Time // of a reload for an unknown key id
}

// KeysConfig configures Keys.
type KeysConfig struct {
	Algorithm string // RS256, ES256 or EdDSA
	Now       func() time.Time
	// Retention is how long a rotated-out key stays published (KeyRetention).
	Retention time.Duration
	// PublishDelay is how long a rotated key is published before it signs
	// (KeyPublishDelay): 0 with one replica.
	PublishDelay time.Duration
}

type signingKey struct {
	id    string
	alg   jose.SignatureAlgorithm
	key   crypto.Signer
	since time.Time // signs from then on
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
// the newest stored key has another algorithm than the configured one).
func LoadKeys(ctx context.Context, store KeyStore, cfg KeysConfig) (*Keys, error) {
	k := &Keys{store: store, cfg: cfg}
	if err := k.Reload(ctx); err != nil {
		return nil, err
	}
	k.mu.RLock()
	first, changed := len(k.keys) == 0, len(k.keys) > 0 && k.keys[0].alg != k.alg()
	k.mu.RUnlock()
	switch {
	case first:
		// Nothing signs yet, so nothing waits for publication; replicas that
		// start together on a fresh database may each add one, and each
		// stays published for Retention.
		now := k.cfg.Now()
		if _, err := k.add(ctx, now, now.Add(cfg.Retention)); err != nil {
			return nil, err
		}
	case changed:
		if _, err := k.Rotate(ctx); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *Keys) alg() jose.SignatureAlgorithm { return jose.SignatureAlgorithm(k.cfg.Algorithm) }

// Rotate adds a new key that signs from PublishDelay on. The keys before it
// stay published for Retention after that, the longest lifetime of a token
// they may have signed, then leave the JWKS.
func (k *Keys) Rotate(ctx context.Context) (string, error) {
	since := k.cfg.Now().Add(k.cfg.PublishDelay)
	return k.add(ctx, since, since.Add(k.cfg.Retention))
}

// add stores a new key that signs from since, retiring the others at retire.
func (k *Keys) add(ctx context.Context, since, retire time.Time) (string, error) {
	priv, err := generateKey(k.alg())
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", err
	}
	sk := session.SigningKey{ID: session.NewID(), Algorithm: string(k.alg()), PrivateDER: der, CreatedAt: since}
	if err := k.store.AddSigningKey(ctx, sk, retire); err != nil {
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

// Reload re-reads the keys from the store (after a rotation at another
// replica or by `idleguard keys rotate`, say).
func (k *Keys) Reload(ctx context.Context) error {
	stored, err := k.store.SigningKeys(ctx, k.cfg.Now())
	if err != nil {
		return fmt.Errorf("load signing keys: %w", err)
	}
	keys := make([]*signingKey, 0, len(stored))
	public := make([]op.Key, 0, len(stored))
	byID := make(map[string]*jose.JSONWebKey, len(stored))
	for _, s := range stored {
		parsed, err := x509.ParsePKCS8PrivateKey(s.PrivateDER)
		if err != nil {
			return fmt.Errorf("signing key %s: %w", s.ID, err)
		}
		signer, ok := parsed.(crypto.Signer)
		if !ok {
			return fmt.Errorf("signing key %s: not a signer", s.ID)
		}
		alg := jose.SignatureAlgorithm(s.Algorithm)
		keys = append(keys, &signingKey{id: s.ID, alg: alg, key: signer, since: s.CreatedAt})
		public = append(public, &publicKey{id: s.ID, alg: alg, key: signer.Public()})
		byID[s.ID] = &jose.JSONWebKey{Key: signer.Public(), KeyID: s.ID, Algorithm: s.Algorithm, Use: "sig"}
	}
	k.mu.Lock()
	k.keys, k.public, k.byID = keys, public, byID
	k.mu.Unlock()
	return nil
}

// Signing returns the current signing key: the newest in force. Before any
// is (only a store whose every key waits for publication), the oldest.
func (k *Keys) Signing() op.SigningKey {
	now := k.cfg.Now()
	k.mu.RLock()
	defer k.mu.RUnlock()
	for _, s := range k.keys {
		if !now.Before(s.since) {
			return s
		}
	}
	if len(k.keys) == 0 {
		return nil
	}
	return k.keys[len(k.keys)-1]
}

// Public returns every published key, those waiting to sign included.
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

// verifyKey is VerifyKey that re-reads the keys once when kid is unknown, at
// most once a second (a key id is the sender's to choose).
func (k *Keys) verifyKey(ctx context.Context, kid string) (*jose.JSONWebKey, bool) {
	if key, ok := k.VerifyKey(kid); ok {
		return key, true
	}
	now := k.cfg.Now()
	k.mu.Lock()
	due := now.Sub(k.lastReload) >= time.Second
	if due {
		k.lastReload = now
	}
	k.mu.Unlock()
	if !due {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second) // a token check never waits long on the database
	defer cancel()
	if k.Reload(ctx) != nil {
		return nil, false
	}
	return k.VerifyKey(kid)
}

// VerifySignature implements oidc.KeySet for zitadel's verifiers, from memory.
func (k *Keys) VerifySignature(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("want exactly one signature")
	}
	kid := jws.Signatures[0].Header.KeyID
	key, ok := k.verifyKey(ctx, kid)
	if !ok {
		return nil, fmt.Errorf("unknown key id %q", kid)
	}
	return jws.Verify(key)
}

// DefaultHousekeepInterval is how often a provider purges what has expired
// and reloads its keys, unless Config.HousekeepInterval says otherwise.
const DefaultHousekeepInterval = 30 * time.Second

// KeyPublishDelay is how long, with several replicas, a rotated key is
// published before it signs: two housekeeping intervals, by which every
// replica has reloaded the keys (each does once an interval). With one
// replica a new key signs at once.
func KeyPublishDelay(cfg Config) time.Duration {
	if cfg.Session.Replicas <= 1 {
		return 0
	}
	return 2 * cmp.Or(cfg.HousekeepInterval, DefaultHousekeepInterval)
}

// KeysConfigOf is the key configuration of a provider configured by cfg.
func KeysConfigOf(cfg Config) KeysConfig {
	kc := KeysConfig{Algorithm: cmp.Or(cfg.KeyAlgorithm, string(jose.RS256)), Now: cfg.Now,
		Retention: KeyRetention(cfg), PublishDelay: KeyPublishDelay(cfg)}
	if kc.Now == nil {
		kc.Now = time.Now
	}
	return kc
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
