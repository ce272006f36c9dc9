package activity

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/idleguard/idleguard/session"
)

// Several replicas on one database (issue 10). Each replica keeps its own
// memory of the sessions it serves, which may lag what the others did. The
// rules that keep the idle model whole, all switched on by Config.Replicas > 1:
//
//   - Memory only ever errs early: a replica's view of last_active_at is the
//     maximum of its own activity and what it read from the store, never
//     more than the truth. So a replica that lets a credential through is
//     never late; a replica that would refuse one re-reads the session
//     first (get) and merges what the store knows (max of last_active_at).
//   - What a replica refuses by, the store must know in time: activity that
//     runs ahead of the store is written once the stored deadline is within
//     nearMargin (by the flush loop, or at once by the request that finds it
//     so), so that no replica judging by the store ends a session someone is
//     using elsewhere.
//   - Ends, joins and reauthentications go into the change feed in the same
//     transaction; every replica polls it (SyncInterval, or at once when the
//     store notifies) and reloads the sessions it holds.
//   - One sweeper at a time, by a lease; its ends are conditional on the
//     stored deadline still being due (session.End.IfDue).
//   - Refresh rotation is a compare-and-swap in the store.

// ReplicaStore is what the tracker needs from the store when several
// replicas share it.
type ReplicaStore interface {
	SessionChanges(ctx context.Context, after int64, limit int) ([]session.Change, error)
	LastSessionChange(ctx context.Context) (int64, error)
	PurgeSessionChanges(ctx context.Context, before time.Time) error
	AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
	RefreshGeneration(ctx context.Context, chainID string) (uint64, error)
	RotateRefreshChain(ctx context.Context, chainID string, from uint64) (bool, error)
}

// ChangeNotifier is implemented by stores that can announce new change feed
// rows as they are committed (PostgreSQL's LISTEN/NOTIFY). The channel
// receives a value after new rows; the tracker then syncs at once instead
// of at its next poll. A lost notification costs at most one SyncInterval.
type ChangeNotifier interface {
	Changes(ctx context.Context) <-chan struct{}
}

const (
	sweeperLease    = "sweeper"
	changeBatch     = 500
	changeRetention = time.Hour // a replica away longer reloads nothing it missed: it restarts
	purgeEvery      = time.Minute
)

func (t *Tracker) replicated() bool { return t.cfg.Replicas > 1 }

// nearMargin is how long before the stored deadline activity that memory
// holds must be in the store: two flush intervals, so that the flush loop
// gets there in time and a request arriving later writes at once.
func (t *Tracker) nearMargin() time.Duration { return 2 * t.cfg.FlushInterval }

// overByMemory reports whether e, by memory alone, is over at now (the
// session or one of its apps). Callers hold the lock.
func (t *Tracker) overByMemory(e *entry, now time.Time) bool {
	if e.auth.Live() && !now.Before(t.deadline(e)) {
		return true
	}
	for _, a := range e.apps {
		if d := t.appDeadline(e, a); a.Live() && !d.IsZero() && !now.Before(d) {
			return true
		}
	}
	return false
}

// behindNearDeadline reports whether e holds activity the store lacks while
// the stored deadline (of the session, or of an app with one of its own) is
// within nearMargin of now. Only with several replicas; callers hold the lock.
func (t *Tracker) behindNearDeadline(e *entry, now time.Time) bool {
	if !t.replicated() {
		return false
	}
	soon := now.Add(t.nearMargin())
	if e.auth.Live() && e.auth.LastActiveAt.After(e.persistedLast) {
		if stored := Deadline(e.persistedLast, e.persistedLimit, e.auth.AbsoluteDeadline); !soon.Before(stored) {
			return true
		}
	}
	for _, a := range e.apps {
		l := t.ownLimit(a)
		if a.Live() && l > 0 && a.LastActiveAt.After(a.persistedLast) && !soon.Before(a.persistedLast.Add(l)) {
			return true
		}
	}
	return false
}

// reload reads session sid from the store and merges it into memory.
func (t *Tracker) reload(ctx context.Context, sid string) (*entry, error) {
	auth, apps, err := t.store.AuthSession(ctx, sid)
	if err != nil {
		return nil, fmt.Errorf("reload session %s: %w", sid, err)
	}
	return t.mergeLoaded(auth, apps), nil
}

// reloadHeldOne reloads session sid if memory holds it (several replicas
// only; a session not in memory is loaded fresh anyway).
func (t *Tracker) reloadHeldOne(ctx context.Context, sid string) error {
	if !t.replicated() || !t.held(sid) {
		return nil
	}
	_, err := t.reload(ctx, sid)
	return err
}

// mergeLoaded merges a session read from the store into memory (installing
// it if memory has none) and returns the entry in memory.
func (t *Tracker) mergeLoaded(auth *session.AuthSession, apps []*session.AppSession) *entry {
	sh := t.shard(auth.ID)
	sh.mu.Lock()
	e, ok := sh.m[auth.ID]
	if ok {
		t.merge(e, auth, apps)
	}
	sh.mu.Unlock()
	if !ok {
		e = t.install(auth, apps)
	}
	return e
}

// merge folds what the store knows into e: the later activity, ends, new
// apps, a reauthentication, newer refresh generations. Memory never moves
// backwards and nothing ended is revived. Callers hold the lock.
func (t *Tracker) merge(e *entry, auth *session.AuthSession, apps []*session.AppSession) {
	if e.auth.Live() && !auth.Live() {
		e.auth.EndedAt, e.auth.EndReason, e.auth.EndedBy, e.auth.IdleLimit = auth.EndedAt, auth.EndReason, auth.EndedBy, auth.IdleLimit
	}
	switch {
	case auth.AuthTime.After(e.auth.AuthTime):
		e.auth.AuthTime, e.auth.AMR = auth.AuthTime, auth.AMR
	case auth.AuthTime.Equal(e.auth.AuthTime) && len(auth.AMR) > len(e.auth.AMR):
		e.auth.AMR = auth.AMR // a step-up elsewhere: it only ever adds methods
	}
	e.auth.AbsoluteDeadline = minTime(e.auth.AbsoluteDeadline, auth.AbsoluteDeadline)
	e.auth.LastActiveAt = maxTime(e.auth.LastActiveAt, auth.LastActiveAt)
	e.persistedLast = maxTime(e.persistedLast, auth.LastActiveAt)
	e.persistedLimit = auth.IdleLimit
	for _, sa := range apps {
		a := e.app(sa.ID)
		if a == nil {
			e.apps = append(e.apps, t.loadedApp(sa))
			continue
		}
		if a.Live() && !sa.Live() {
			a.EndedAt, a.EndReason = sa.EndedAt, sa.EndReason
		}
		a.Scopes = sa.Scopes
		a.LastActiveAt = maxTime(a.LastActiveAt, sa.LastActiveAt)
		a.persistedLast = maxTime(a.persistedLast, sa.LastActiveAt)
		for c, g := range sa.RefreshChains {
			a.RefreshChains[c] = max(a.RefreshChains[c], g)
			a.persistedChains[c] = max(a.persistedChains[c], g)
		}
	}
}

// Sync applies the change feed: every session that another replica ended,
// joined an app to or reauthenticated since the last Sync, and that this
// replica holds in memory, is reloaded from the store. It returns how many
// sessions it reloaded. Run calls it every SyncInterval (and whenever a
// ChangeNotifier store says so) with several replicas.
func (t *Tracker) Sync(ctx context.Context) (int, error) {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	total := 0
	for {
		n, more, err := t.syncBatch(ctx)
		total += n
		if err != nil || !more {
			return total, err
		}
	}
}

// syncBatch applies one batch of the change feed from the cursor on, its
// reads bounded by StaleAfter (a read that hangs counts as a failure), and
// records whether it succeeded; more is whether the feed holds more rows.
// Callers hold syncMu.
func (t *Tracker) syncBatch(ctx context.Context) (n int, more bool, err error) {
	started := t.cfg.Now()
	ctx, cancel := context.WithTimeout(ctx, t.cfg.StaleAfter)
	defer cancel()
	defer func() { t.feed.record(started, err) }()
	changes, err := t.store.SessionChanges(ctx, t.cursor, changeBatch)
	if err != nil || len(changes) == 0 {
		return 0, false, fmtErr("read change feed", err)
	}
	t.applyRevocations(changes)
	if n, err = t.reloadHeld(ctx, changes); err != nil {
		return n, false, err
	}
	t.cursor = changes[len(changes)-1].ID
	return n, len(changes) == changeBatch, nil
}

// fmtErr wraps err with context, or returns nil.
func fmtErr(context string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", context, err)
}

// applyRevocations passes the access tokens revoked at other replicas to
// OnRevoke.
func (t *Tracker) applyRevocations(changes []session.Change) {
	for _, c := range changes {
		if c.TokenID != "" && t.cfg.OnRevoke != nil {
			t.cfg.OnRevoke(c.TokenID)
		}
	}
}

// reloadHeld reloads, in one read, the sessions named by changes that are
// in memory.
func (t *Tracker) reloadHeld(ctx context.Context, changes []session.Change) (int, error) {
	seen := make(map[string]bool, len(changes))
	var held []string
	for _, c := range changes {
		if c.SID == "" || seen[c.SID] {
			continue
		}
		seen[c.SID] = true
		if t.held(c.SID) {
			held = append(held, c.SID)
		}
	}
	n, err := t.readMerged(ctx, held)
	return n, fmtErr("reload changed sessions", err)
}

// feedHealth remembers whether this replica keeps up with the change feed.
type feedHealth struct {
	lastRead atomic.Int64 // unix nanoseconds when the last successful read began
	failing  atomic.Bool  // the last read failed
}

func (f *feedHealth) record(started time.Time, err error) {
	if err != nil {
		f.failing.Store(true)
		return
	}
	f.lastRead.Store(started.UnixNano())
	f.failing.Store(false)
}

// vouch returns ErrUnavailable when, with several replicas, reads of the
// change feed have failed for longer than StaleAfter since the last one
// that succeeded: an end at another replica may have passed this one by,
// so it answers for no session (fail closed) until a read succeeds. A
// replica whose feed works, or that has not been synced yet, vouches.
// It costs two atomic loads: it guards every credential check.
func (t *Tracker) vouch(now time.Time) error {
	if !t.replicated() || !t.feed.failing.Load() {
		return nil
	}
	if now.Sub(time.Unix(0, t.feed.lastRead.Load())) > t.cfg.StaleAfter {
		return ErrUnavailable
	}
	return nil
}

// startSync reads where the change feed ends, so that a replica starting
// now applies only what comes after (what came before is in the store it
// loads sessions from), and starts the sync loop.
func (t *Tracker) startSync(ctx context.Context) {
	started := t.cfg.Now()
	last, err := t.store.LastSessionChange(ctx)
	t.feed.record(started, err)
	if err != nil {
		t.cfg.Logger.ErrorContext(ctx, "read change feed", "error", err)
	}
	t.syncMu.Lock()
	t.cursor = max(t.cursor, last)
	t.syncMu.Unlock()
	var wake <-chan struct{}
	if n, ok := t.store.(ChangeNotifier); ok {
		wake = n.Changes(ctx)
	}
	t.done.Add(1)
	go t.loop(ctx, t.cfg.SyncInterval, wake, func(ctx context.Context) {
		if _, err := t.Sync(ctx); err != nil {
			t.cfg.Logger.ErrorContext(ctx, "sync change feed", "error", err)
		}
	})
}

// holdsSweeperLease takes or renews the sweeper lease; with one replica
// there is nothing to take.
func (t *Tracker) holdsSweeperLease(ctx context.Context) (bool, error) {
	if !t.replicated() {
		return true, nil
	}
	ok, err := t.store.AcquireLease(ctx, sweeperLease, t.cfg.ReplicaID, t.cfg.Now(), t.cfg.LeaseTime)
	if err != nil {
		return false, fmt.Errorf("sweeper lease: %w", err)
	}
	return ok, nil
}

// purgeChanges deletes change feed rows every replica has long read, at
// most once every purgeEvery. Only the sweeper calls it.
func (t *Tracker) purgeChanges(ctx context.Context) error {
	now := t.cfg.Now()
	if now.Sub(t.lastPurge) < purgeEvery {
		return nil
	}
	t.lastPurge = now
	return t.store.PurgeSessionChanges(ctx, now.Add(-changeRetention))
}

// casRefresh rotates a refresh chain in the store from gen to gen+1, so that
// of two replicas presented the same token at once exactly one succeeds
// (ErrStaleRefresh for the other).
func (t *Tracker) casRefresh(ctx context.Context, chain string, gen uint64) error {
	ok, err := t.store.RotateRefreshChain(ctx, chain, gen)
	if err != nil {
		return err
	}
	if !ok {
		return ErrStaleRefresh
	}
	return nil
}

// storedGeneration merges the stored generation of a refresh chain into
// memory, so that a token rotated at another replica is known as rotated
// here. Only with several replicas.
func (t *Tracker) storedGeneration(ctx context.Context, sh *shard, a *appState, chain string) error {
	if !t.replicated() {
		return nil
	}
	gen, err := t.store.RefreshGeneration(ctx, chain)
	if errors.Is(err, session.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	sh.mu.Lock()
	if _, ok := a.RefreshChains[chain]; ok || gen > 0 {
		a.RefreshChains[chain] = max(a.RefreshChains[chain], gen)
		a.persistedChains[chain] = max(a.persistedChains[chain], gen)
	}
	sh.mu.Unlock()
	return nil
}
