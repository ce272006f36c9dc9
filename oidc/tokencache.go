package oidc

import (
	"crypto/sha256"
	"sync"
	"time"
)

// verifiedCache remembers JWT access tokens whose signature has been checked,
// so that introspection and heartbeats (many calls per token) verify each
// token's signature once. Keys are SHA-256 digests of the whole token, so an
// entry can only be hit by the very same bytes that were verified. Expiry
// and session state are still checked on every use, by the caller.
type verifiedCache struct {
	now    func() time.Time
	max    int
	shards [16]struct {
		mu sync.Mutex
		m  map[[32]byte]cachedToken
	}
}

type cachedToken struct {
	id      string
	expires time.Time
}

func newVerifiedCache(max int, now func() time.Time) *verifiedCache {
	c := &verifiedCache{now: now, max: max / 16}
	for i := range c.shards {
		c.shards[i].m = make(map[[32]byte]cachedToken)
	}
	return c
}

func (c *verifiedCache) get(token string) (string, bool) {
	key := sha256.Sum256([]byte(token))
	sh := &c.shards[key[0]%16]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[key]
	if !ok {
		return "", false
	}
	if !c.now().Before(e.expires) {
		delete(sh.m, key)
		return "", false
	}
	return e.id, true
}

func (c *verifiedCache) put(token, id string, expires time.Time) {
	key := sha256.Sum256([]byte(token))
	sh := &c.shards[key[0]%16]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(sh.m) >= c.max {
		// Full: drop expired entries, and if none, an arbitrary tenth.
		now := c.now()
		dropped := 0
		for k, e := range sh.m {
			if !now.Before(e.expires) || dropped < c.max/10 {
				delete(sh.m, k)
				dropped++
			}
		}
	}
	sh.m[key] = cachedToken{id: id, expires: expires}
}
