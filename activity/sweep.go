package activity

import (
	"context"
	"errors"
	"time"

	"github.com/idleguard/idleguard/session"
)

// sweepBatch bounds how many sessions one sweep transaction ends.
const sweepBatch = 500

// evictAfter is how long a clean session stays in memory unused.
const evictAfter = 10 * time.Minute

// Run starts the flush and sweep loops; they stop when ctx is done or Close
// is called.
//
// First it tightens stored deadlines to the configuration in force, in case
// it became stricter while the provider was down.
func (t *Tracker) Run(ctx context.Context) {
	if err := t.TightenDeadlines(ctx); err != nil {
		t.cfg.Logger.ErrorContext(ctx, "tighten stored deadlines", "error", err)
	}
	if t.replicated() {
		t.startSync(ctx)
	}
	t.done.Add(2)
	go t.loop(ctx, t.cfg.FlushInterval, nil, func(ctx context.Context) {
		if err := t.Flush(ctx, false); err != nil {
			t.cfg.Logger.ErrorContext(ctx, "flush activity", "error", err)
		}
	})
	go t.loop(ctx, t.cfg.SweepInterval, nil, func(ctx context.Context) {
		if _, err := t.Sweep(ctx); err != nil {
			t.cfg.Logger.ErrorContext(ctx, "sweep", "error", err)
		}
	})
}

// loop runs fn every interval, and whenever wake (which may be nil)
// receives, until ctx is done or Close is called.
func (t *Tracker) loop(ctx context.Context, every time.Duration, wake <-chan struct{}, fn func(context.Context)) {
	defer t.done.Done()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.stop:
			return
		case _, ok := <-wake:
			if !ok {
				wake = nil // the notifier is gone: polling alone bounds the delay
				continue
			}
		case <-tick.C:
		}
		fn(ctx)
	}
}

// Close stops the loops and writes every unflushed activity.
func (t *Tracker) Close(ctx context.Context) error {
	t.closeOnce.Do(func() { close(t.stop) })
	t.done.Wait()
	err := t.Flush(ctx, true)
	if t.replicated() {
		err = errors.Join(err, t.store.ReleaseLease(ctx, sweeperLease, t.cfg.ReplicaID))
	}
	return err
}

// Flush writes coalesced activity: every session whose in-memory state has
// run ahead of the stored one by more than its slack, whose refresh
// generation changed, or that the sweeper flagged (all of them when force).
// It also evicts clean sessions unused for evictAfter.
func (t *Tracker) Flush(ctx context.Context, force bool) error {
	unlock, err := t.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	now := t.cfg.Now()
	var batch []pending
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		for sid, e := range sh.m {
			upd, dirty := t.pendingUpdate(e, force, now)
			if dirty {
				batch = append(batch, pending{e, upd})
				continue
			}
			if now.Sub(e.lastUsed) > evictAfter {
				delete(sh.m, sid)
			}
		}
		sh.mu.Unlock()
	}
	return t.write(ctx, batch)
}

// flushSession writes one session's unwritten activity now.
func (t *Tracker) flushSession(ctx context.Context, sid string) error {
	unlock, err := t.lockWrites(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	sh := t.shard(sid)
	sh.mu.Lock()
	e, ok := sh.m[sid]
	var upd session.ActivityUpdate
	dirty := false
	if ok {
		upd, dirty = t.pendingUpdate(e, true, t.cfg.Now())
	}
	sh.mu.Unlock()
	if !dirty {
		return nil
	}
	return t.write(ctx, []pending{{e, upd}})
}

// pending is one session's write, with the entry it was taken from.
type pending struct {
	e   *entry
	upd session.ActivityUpdate
}

// write stores a batch of activity updates and records them as persisted.
// Callers hold writeMu.
func (t *Tracker) write(ctx context.Context, batch []pending) error {
	if len(batch) == 0 {
		return nil
	}
	updates := make([]session.ActivityUpdate, len(batch))
	for i, p := range batch {
		updates[i] = p.upd
	}
	if err := t.store.FlushActivity(ctx, updates); err != nil {
		return err
	}
	for _, p := range batch {
		sh := t.shard(p.upd.AuthSessionID)
		sh.mu.Lock()
		p.e.persistedLast = maxTime(p.e.persistedLast, p.upd.LastActiveAt)
		p.e.persistedLimit = p.upd.IdleLimit
		p.e.forceFlush = false
		for _, au := range p.upd.Apps {
			if a := p.e.app(au.ID); a != nil {
				a.persistedLast = maxTime(a.persistedLast, au.LastActiveAt)
				for c, g := range au.RefreshChains {
					a.persistedChains[c] = max(a.persistedChains[c], g)
				}
			}
		}
		sh.mu.Unlock()
	}
	return nil
}

// pendingUpdate returns the write that brings the store up to date with e,
// and whether one is due. Callers hold the lock.
func (t *Tracker) pendingUpdate(e *entry, force bool, now time.Time) (session.ActivityUpdate, bool) {
	if !e.auth.Live() && !e.hasLiveApp() {
		return session.ActivityUpdate{}, false
	}
	slack := t.slack(e)
	limit := t.limit(e)
	dirty := e.forceFlush || limit != e.persistedLimit || e.auth.LastActiveAt.Sub(e.persistedLast) > slack ||
		t.behindNearDeadline(e, now)
	if force && e.auth.LastActiveAt.After(e.persistedLast) {
		dirty = true
	}
	upd := session.ActivityUpdate{AuthSessionID: e.auth.ID, LastActiveAt: e.auth.LastActiveAt, IdleLimit: limit, Deadline: t.deadline(e)}
	for _, a := range e.apps {
		if !a.Live() {
			continue
		}
		var moved map[string]uint64
		for c, g := range a.RefreshChains {
			if g != a.persistedChains[c] {
				if moved == nil {
					moved = map[string]uint64{}
				}
				moved[c] = g
			}
		}
		appDirty := moved != nil || a.LastActiveAt.Sub(a.persistedLast) > slack ||
			(force && a.LastActiveAt.After(a.persistedLast))
		if appDirty || dirty {
			dirty = true
			upd.Apps = append(upd.Apps, session.AppActivity{ID: a.ID, LastActiveAt: a.LastActiveAt, Deadline: t.appDeadline(e, a), RefreshChains: moved})
		}
	}
	return upd, dirty
}

func (e *entry) hasLiveApp() bool {
	for _, a := range e.apps {
		if a.Live() {
			return true
		}
	}
	return false
}

// Sweep ends every session whose deadline has passed by the clock, and
// returns how many sessions (authentication or application) it ended. It
// only propagates what every credential check already enforces: it reads the
// stored deadlines (never later than the true ones) through their partial
// indexes, re-checks each candidate against memory, and flushes those that
// turn out to be alive.
//
// With several replicas only the holder of the sweeper lease sweeps, it
// renews the lease before every batch after the first (a sweep of many
// batches may outlast one lease time), it judges each candidate after
// re-reading it from the store, and each end is conditional on the stored
// deadline still being due (session.End.IfDue).
func (t *Tracker) Sweep(ctx context.Context) (int, error) {
	if ok, err := t.holdsSweeperLease(ctx); !ok || err != nil {
		return 0, err
	}
	if err := t.purgeChanges(ctx); err != nil {
		t.cfg.Logger.ErrorContext(ctx, "purge change feed", "error", err)
	}
	total := 0
	for {
		now := t.cfg.Now()
		if total > 0 {
			// A long sweep renews its lease before each further batch, so that
			// no other replica takes it over while this one still ends sessions;
			// one that lost it stops.
			if ok, err := t.holdsSweeperLease(ctx); !ok || err != nil {
				return total, err
			}
		}
		auth, err := t.store.DueAuthSessions(ctx, now, sweepBatch)
		if err != nil {
			return total, err
		}
		apps, err := t.store.DueAppSessions(ctx, now, sweepBatch)
		if err != nil {
			return total, err
		}
		if len(auth) == 0 && len(apps) == 0 {
			return total, nil
		}
		candidates := append(auth, apps...)
		if err := t.preload(ctx, candidates); err != nil {
			return total, err
		}
		var ends []session.End
		seen := make(map[string]bool, len(auth)+len(apps))
		alive := 0
		for _, sid := range candidates {
			if seen[sid] {
				continue
			}
			seen[sid] = true
			end, n, err := t.planExpiry(ctx, sid, now)
			if err != nil {
				return total, err
			}
			if n == 0 {
				alive++
				continue
			}
			total += n
			ends = append(ends, end...)
		}
		if err := t.commitSweep(ctx, ends, now); err != nil {
			return total, err
		}
		if alive > 0 {
			if err := t.Flush(ctx, false); err != nil {
				return total, err
			}
		}
		if len(auth) < sweepBatch && len(apps) < sweepBatch {
			return total, nil
		}
		if alive == len(seen) {
			return total, nil // nothing ended; avoid spinning on stale rows
		}
	}
}

// commitSweep persists the sweeper's ends. With several replicas each end
// is conditional on the store (IfDue), and the sessions are dropped from
// memory afterwards, so that one whose end the store refused is read again
// rather than refused by a memory that marked it ended.
func (t *Tracker) commitSweep(ctx context.Context, ends []session.End, now time.Time) error {
	if len(ends) == 0 {
		return nil
	}
	if !t.replicated() {
		return t.commit(ctx, ends)
	}
	for i := range ends {
		ends[i].IfDue = now
	}
	err := t.commit(ctx, ends)
	for _, e := range ends {
		t.evict(endedSession(e))
	}
	return err
}

// endedSession is the authentication session an End belongs to.
func endedSession(e session.End) string {
	if e.AuthSessionID != "" {
		return e.AuthSessionID
	}
	if len(e.AppSessions) > 0 {
		return SessionID(e.AppSessions[0].ID)
	}
	return ""
}

// planExpiry decides, for one candidate, what has expired at now: the
// authentication session (idle_timeout or max_lifetime) and application
// sessions with deadlines of their own (app_idle_timeout, or an exempt app's
// own idle_timeout / max_lifetime). A candidate still alive is flagged for
// flushing. The sweep has just preloaded the candidates (with several
// replicas, re-read them), so memory is as fresh as the store.
func (t *Tracker) planExpiry(ctx context.Context, sid string, now time.Time) ([]session.End, int, error) {
	sh, e, err := t.load(ctx, sid)
	if err != nil {
		return nil, 0, err
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var ends []session.End
	n := 0
	if e.auth.Live() && !now.Before(t.deadline(e)) {
		end := t.planEnd(e, ExpiryReason(now, e.auth.AbsoluteDeadline, false), "system", now)
		n += 1 + len(end.AppSessions)
		ends = append(ends, end)
	}
	for _, a := range e.apps {
		d := t.appDeadline(e, a)
		if !a.Live() || d.IsZero() || now.Before(d) {
			continue
		}
		ends = append(ends, t.expireApp(e, a, now))
		n++
	}
	if n == 0 {
		e.forceFlush = true
	}
	return ends, n, nil
}

// expireApp marks an application session that is past its own deadline
// ended in memory and returns the End to persist: app_idle_timeout, or for
// an exempt app its own idle_timeout or max_lifetime. Callers hold the lock.
func (t *Tracker) expireApp(e *entry, a *appState, now time.Time) session.End {
	reason := session.ReasonAppIdleTimeout
	if a.policy.Exempt {
		reason = ExpiryReason(now, e.auth.AbsoluteDeadline, false)
	}
	end := session.End{At: now, Reason: reason, Initiator: "system", UserID: e.auth.UserID}
	t.endApp(e, a, &end, now, reason)
	return end
}

// TightenDeadlines moves stored deadlines that the configuration in force
// makes too late earlier; see session.SQLite.TightenDeadlines.
func (t *Tracker) TightenDeadlines(ctx context.Context) error {
	l := session.Limits{IdleTimeout: t.cfg.IdleTimeout, MaxLifetime: t.cfg.MaxLifetime, Clients: map[string]session.ClientLimits{}}
	for _, id := range t.cfg.Clients {
		if p, ok := t.cfg.Client(id); ok {
			l.Clients[id] = session.ClientLimits{IdleTimeout: p.IdleTimeout, AppIdleTimeout: p.AppIdleTimeout, Exempt: p.Exempt}
		}
	}
	return t.store.TightenDeadlines(ctx, l)
}
