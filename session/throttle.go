package session

import "time"

// LoginPolicy is the defence against password guessing: after MaxFailures
// attempts for one key (a username, a client address, a device cookie),
// every further attempt waits a delay that doubles with each one, up to
// LockoutMax. It is a pure rule, shared by every store backend.
type LoginPolicy struct {
	// MaxFailures is how many attempts a key may make before delays start;
	// default 5.
	MaxFailures int
	// LockoutBase is the first delay, doubled per further attempt up to
	// LockoutMax; defaults 1s and 15m.
	LockoutBase time.Duration
	LockoutMax  time.Duration
}

// WithDefaults returns p with every unset field at its default.
func (p LoginPolicy) WithDefaults() LoginPolicy {
	if p.MaxFailures <= 0 {
		p.MaxFailures = 5
	}
	if p.LockoutBase <= 0 {
		p.LockoutBase = time.Second
	}
	if p.LockoutMax <= 0 {
		p.LockoutMax = 15 * time.Minute
	}
	return p
}

// LockedUntil is when a key that has made n attempts, the last at at, may
// try again; the zero time while n is below MaxFailures.
func (p LoginPolicy) LockedUntil(n int, at time.Time) time.Time {
	over := n - p.MaxFailures
	if over < 0 {
		return time.Time{}
	}
	d := p.LockoutBase << min(over, 30)
	if d <= 0 || d > p.LockoutMax {
		d = p.LockoutMax
	}
	return at.Add(d)
}

// Stale reports whether a count whose last attempt was at last, locked
// until until, is forgotten at now: its lock is over and its last attempt
// older than LockoutMax.
func (p LoginPolicy) Stale(last, until, now time.Time) bool {
	return !until.After(now) && now.Sub(last) > p.LockoutMax
}

// LoginAttempt is one sign-in attempt counted by ReserveLoginAttempt before
// its password is checked: the keys it was counted against and the lock it
// set on each (zero: none), so that giving it back lifts only its own lock.
type LoginAttempt struct {
	Keys  []string
	Locks []time.Time
}

// Only returns the part of a for the given keys.
func (a LoginAttempt) Only(keys ...string) LoginAttempt {
	var out LoginAttempt
	for i, k := range a.Keys {
		for _, want := range keys {
			if k == want {
				out.Keys, out.Locks = append(out.Keys, k), append(out.Locks, a.Locks[i])
			}
		}
	}
	return out
}

// loginCount is one key's stored count as a backend reads it; the zero
// value stands for a key without one.
type loginCount struct {
	failures    int
	last, until time.Time
}

// reserve decides one attempt against keys whose stored counts are stored,
// in the same order: either the longest lock still running at now (wait),
// or the count each key reaches with this attempt and the lock that sets.
// Both backends write what it decides.
func (p LoginPolicy) reserve(stored []loginCount, now time.Time) (counts []int, locks []time.Time, wait time.Duration) {
	counts = make([]int, len(stored))
	for i, c := range stored {
		switch {
		case c.until.After(now):
			wait = max(wait, c.until.Sub(now))
		case !p.Stale(c.last, c.until, now):
			counts[i] = c.failures
		}
	}
	if wait > 0 {
		return nil, nil, wait
	}
	locks = make([]time.Time, len(stored))
	for i := range counts {
		counts[i]++
		locks[i] = p.LockedUntil(counts[i], now)
	}
	return counts, locks, 0
}
