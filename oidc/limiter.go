package oidc

import (
	"sync"
	"time"
)

// loginLimiter slows password guessing: after MaxFailures failures for a
// username or a client address, every further attempt must wait a delay
// that doubles with each failure, up to LockoutMax.
type loginLimiter struct {
	cfg LoginConfig
	now func() time.Time
	mu  sync.Mutex
	m   map[string]*failures
}

type failures struct {
	n     int
	until time.Time
	last  time.Time
}

func newLoginLimiter(cfg LoginConfig, now func() time.Time) *loginLimiter {
	return &loginLimiter{cfg: cfg, now: now, m: make(map[string]*failures)}
}

func (l *loginLimiter) wait(keys ...string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	var wait time.Duration
	for _, k := range keys {
		if f, ok := l.m[k]; ok && f.until.After(now) {
			wait = max(wait, f.until.Sub(now))
		}
	}
	return wait
}

func (l *loginLimiter) fail(keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for _, k := range keys {
		f, ok := l.m[k]
		if !ok {
			f = &failures{}
			l.m[k] = f
		}
		f.n++
		f.last = now
		if over := f.n - l.cfg.MaxFailures; over >= 0 {
			d := l.cfg.LockoutBase << min(over, 30)
			if d <= 0 || d > l.cfg.LockoutMax {
				d = l.cfg.LockoutMax
			}
			f.until = now.Add(d)
		}
	}
}

func (l *loginLimiter) succeed(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, key)
}

// purge forgets failures older than LockoutMax.
func (l *loginLimiter) purge() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	for k, f := range l.m {
		if now.Sub(f.last) > l.cfg.LockoutMax && now.After(f.until) {
			delete(l.m, k)
		}
	}
}
