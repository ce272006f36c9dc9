package activity

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/idleguard/idleguard/session"
)

// Errors returned when a credential can no longer be used. Callers map them
// to protocol errors at the HTTP edge.
var (
	// ErrSessionOver means the session's deadline has passed or it was
	// ended. The tracker returns it as a *SessionOverError, which says why.
	ErrSessionOver = errors.New("session is over")
	// ErrRefreshReuse means a rotated refresh token was presented again; the
	// application session has been ended.
	ErrRefreshReuse = errors.New("refresh token reuse")
	// ErrStaleRefresh means a concurrent refresh already rotated the token.
	ErrStaleRefresh = errors.New("refresh token already rotated")
	// ErrUnavailable means that, with several replicas, this replica has not
	// read the change feed for longer than StaleAfter: an end at another
	// replica may have passed it by, so it vouches for no session (fail
	// closed) until a read succeeds again.
	ErrUnavailable = errors.New("session state unavailable: the change feed could not be read")
)

// SessionOverError is returned when a credential's session is over, with
// the reason it ended (or, not yet swept, would end with), as go-oidc's
// TokenExpiredError carries its expiry. errors.Is(err, ErrSessionOver)
// holds for it.
type SessionOverError struct {
	Reason session.Reason
}

func (e *SessionOverError) Error() string { return ErrSessionOver.Error() }

// Is makes errors.Is(err, ErrSessionOver) true.
func (e *SessionOverError) Is(target error) bool { return target == ErrSessionOver }

// EndReasonOf returns the end reason err carries, or "" when it carries none.
func EndReasonOf(err error) session.Reason {
	var over *SessionOverError
	if errors.As(err, &over) {
		return over.Reason
	}
	return ""
}

// overError is the error for a credential refused with status st.
func overError(st Status) error { return &SessionOverError{Reason: st.EndReason} }

// ClientPolicy is what the tracker needs to know about one client.
type ClientPolicy struct {
	IdleTimeout          time.Duration // the app's tolerance for inactivity; 0: none of its own
	AppIdleTimeout       time.Duration // end this app alone after this long unused; 0: off
	Exempt               bool          // idle_exempt: does not pull the shared limit down
	Sources              Source        // activity sources that count for this client
	BackchannelLogoutURI string
	// SignalReceivers are the resource servers whose Shared Signals
	// streams hear of this app's session ends.
	SignalReceivers []string
}

// Store is the persistence the tracker needs.
type Store interface {
	CreateAuthSession(ctx context.Context, a *session.AuthSession) error
	Reauthenticate(ctx context.Context, a *session.AuthSession) error
	RaiseAssurance(ctx context.Context, a *session.AuthSession, at time.Time, detail string) error
	AuthSession(ctx context.Context, id string) (*session.AuthSession, []*session.AppSession, error)
	AuthSessions(ctx context.Context, ids []string) ([]*session.AuthSession, map[string][]*session.AppSession, error)
	JoinApp(ctx context.Context, app *session.AppSession, auth session.ActivityUpdate, userID string) error
	SetAppScopes(ctx context.Context, id string, scopes []string) error
	TightenDeadlines(ctx context.Context, l session.Limits) error
	AddRefreshChain(ctx context.Context, appSessionID, chainID string, gen uint64, at time.Time) error
	FlushActivity(ctx context.Context, updates []session.ActivityUpdate) error
	DueAuthSessions(ctx context.Context, now time.Time, limit int) ([]string, error)
	DueAppSessions(ctx context.Context, now time.Time, limit int) ([]string, error)
	EndSessions(ctx context.Context, e session.End) error
	EndMany(ctx context.Context, ends []session.End) error
	ReplicaStore
}

// DefaultSyncInterval is how often, with several replicas, each polls the
// change feed when the store does not notify it.
const DefaultSyncInterval = 250 * time.Millisecond

// Config configures a Tracker.
type Config struct {
	IdleTimeout   time.Duration // provider ceiling for every session's idle limit
	MaxLifetime   time.Duration // absolute limit from auth_time
	SweepInterval time.Duration
	FlushInterval time.Duration // how often coalesced activity is written; default 1s
	// Now is the clock every decision is made by. Tests freeze and advance it.
	Now func() time.Time
	// Client returns the policy of a client; ok is false for unknown clients.
	Client func(clientID string) (ClientPolicy, bool)
	// Clients lists every configured client id, so that Run can tighten
	// stored deadlines to a stricter configuration.
	Clients []string
	// OnEnd is called (without locks held) after ends were committed, for
	// example to wake the back-channel delivery worker.
	OnEnd func()
	// OnRevoke is called, with several replicas, for every access token id
	// that the change feed says was revoked (at any replica, this one
	// included), so that the provider refuses it from memory.
	OnRevoke func(tokenID string)
	Logger   *slog.Logger

	// Replicas above 1 turns on what several replicas on one database need
	// (see replica.go): the change feed, a re-read of the store before a
	// session is refused, activity written before the stored deadline comes
	// near, a sweeper lease, refresh rotation by compare-and-swap. With one
	// replica (the default) none of it runs.
	Replicas     int
	SyncInterval time.Duration // how often the change feed is polled; default 250ms
	// StaleAfter is how long a replica whose reads of the change feed fail
	// goes on vouching for sessions after its last successful read; then
	// every credential check answers ErrUnavailable. A read that hangs is
	// abandoned after StaleAfter too. Default 4 x SyncInterval (1s).
	StaleAfter time.Duration
	LeaseTime  time.Duration // the sweeper lease; default 3 x SweepInterval
	ReplicaID  string        // this replica's name as a lease holder; default random
}

// Tracker is the in-memory, authoritative view of session activity, backed by
// a Store. Activity is coalesced in memory and written at most every
// FlushInterval, and only once it has moved a session's deadline by more than
// the flush slack (see slack); every other state change (start, join, end) is
// written through before it is acknowledged.
//
// Invariant: a stored deadline is never later than the true one, so the
// sweeper's index scan never misses an expired session, and a crash that
// loses unflushed activity can only make a session end earlier, by at most
// slack + FlushInterval.
type Tracker struct {
	cfg    Config
	store  Store
	seed   maphash.Seed
	shards [64]shard

	// writeMu orders the writes that carry a session's limit and deadline
	// (Join, Reauthenticate, Flush): each takes its snapshot under it, so a
	// write computed from an older snapshot can never land after a newer one
	// and leave a stored deadline later than the true one.
	// It is a channel of one slot so that a request can give up waiting for
	// it when its context ends (lockWrites).
	writeMu chan struct{}

	stats stats

	syncMu    sync.Mutex // one Sync at a time
	cursor    int64      // last change feed row applied; under syncMu
	feed      feedHealth
	lastPurge time.Time // of the change feed; under the sweep loop

	closeOnce sync.Once
	stop      chan struct{}
	done      sync.WaitGroup
}

type shard struct {
	mu sync.Mutex
	m  map[string]*entry
}

type entry struct {
	auth           session.AuthSession
	apps           []*appState // live and ended, oldest first
	persistedLast  time.Time
	persistedLimit time.Duration
	lastUsed       time.Time
	forceFlush     bool
}

type appState struct {
	session.AppSession
	policy          ClientPolicy
	persistedLast   time.Time
	persistedChains map[string]uint64
}

// lockWrites takes writeMu, or gives up with ctx's error when ctx ends
// first: a request never waits for a write of the background loops (a
// flush stuck on a database that does not answer) beyond its deadline.
func (t *Tracker) lockWrites(ctx context.Context) (unlock func(), err error) {
	select {
	case t.writeMu <- struct{}{}:
		return func() { <-t.writeMu }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for the writer: %w", context.Cause(ctx))
	}
}

// Defaults of Config's intervals; the configuration file's defaults are
// these.
const (
	DefaultFlushInterval = time.Second
	DefaultSweepInterval = time.Second
)

// New returns a tracker. Call Run to start the flush and sweep loops.
func New(cfg Config, store Store) *Tracker {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = DefaultFlushInterval
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Client == nil {
		cfg.Client = func(string) (ClientPolicy, bool) { return ClientPolicy{}, false }
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = DefaultSyncInterval
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = 4 * cfg.SyncInterval
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = 3 * cfg.SweepInterval
	}
	if cfg.ReplicaID == "" {
		cfg.ReplicaID = session.NewID()
	}
	t := &Tracker{cfg: cfg, store: store, seed: maphash.MakeSeed(), stop: make(chan struct{}), writeMu: make(chan struct{}, 1)}
	for i := range t.shards {
		t.shards[i].m = make(map[string]*entry)
	}
	return t
}

// Now returns the tracker's clock reading.
func (t *Tracker) Now() time.Time { return t.cfg.Now() }

func (t *Tracker) shard(sid string) *shard {
	return &t.shards[maphash.String(t.seed, sid)%uint64(len(t.shards))]
}

// SessionID returns the authentication session an application session id
// belongs to (see session.SplitAppSessionID).
func SessionID(appSessionID string) string { return session.SplitAppSessionID(appSessionID) }

// --- policy ---

func (t *Tracker) limit(e *entry) time.Duration {
	if !e.auth.Live() && e.auth.IdleLimit > 0 {
		return e.auth.IdleLimit
	}
	l := t.cfg.IdleTimeout
	for _, a := range e.apps {
		if a.Live() {
			l = StricterLimit(l, a.policy)
		}
	}
	return l
}

// idleDeadline is last_active_at + effective limit.
func (t *Tracker) idleDeadline(e *entry) time.Time { return e.auth.LastActiveAt.Add(t.limit(e)) }

// deadline is min(idle deadline, absolute deadline).
func (t *Tracker) deadline(e *entry) time.Time {
	return Deadline(e.auth.LastActiveAt, t.limit(e), e.auth.AbsoluteDeadline)
}

func (t *Tracker) ownLimit(a *appState) time.Duration { return OwnLimit(a.policy, t.cfg.IdleTimeout) }

// appDeadline is the deadline application session a has of its own (see
// AppDeadline); zero for apps that end only with their session.
func (t *Tracker) appDeadline(e *entry, a *appState) time.Time {
	return AppDeadline(a.policy, t.cfg.IdleTimeout, a.LastActiveAt, e.auth.AbsoluteDeadline)
}

// authValid reports whether the authentication session may be used at now.
func (t *Tracker) authValid(e *entry, now time.Time) bool {
	return e.auth.Live() && now.Before(t.deadline(e))
}

// appValid reports whether a credential of application session a may be used
// at now. Exempt apps outlive an idle end of their authentication session.
func (t *Tracker) appValid(e *entry, a *appState, now time.Time) bool {
	if !a.Live() {
		return false
	}
	if d := t.appDeadline(e, a); !d.IsZero() && !now.Before(d) {
		return false
	}
	if a.policy.Exempt {
		return now.Before(e.auth.AbsoluteDeadline) && (e.auth.Live() || e.auth.EndReason == session.ReasonIdleTimeout)
	}
	return t.authValid(e, now)
}

// slack is how far in-memory activity may run ahead of the stored value
// before it is flushed: a tenth of the effective limit, at most 30s.
func (t *Tracker) slack(e *entry) time.Duration { return Slack(t.limit(e)) }

// --- loading ---

// get returns session sid from memory, loading it if needed. With several
// replicas, a session that memory shows over is re-read from the store
// first: another replica may have written activity that keeps it alive.
func (t *Tracker) get(ctx context.Context, sid string) (*shard, *entry, error) {
	sh, e, err := t.load(ctx, sid)
	if err != nil || !t.replicated() {
		return sh, e, err
	}
	sh.mu.Lock()
	stale := t.overByMemory(e, t.cfg.Now())
	sh.mu.Unlock()
	if stale {
		if e, err = t.reload(ctx, sid); err != nil {
			return nil, nil, err
		}
	}
	return sh, e, nil
}

// getApp is get for the session of application session appSessionID. With
// several replicas, an app joined at another replica since this one loaded
// the session (one flow's authorize and token requests may land on
// different replicas) is read from the store.
func (t *Tracker) getApp(ctx context.Context, appSessionID string) (*shard, *entry, error) {
	sid := SessionID(appSessionID)
	sh, e, err := t.get(ctx, sid)
	if err != nil || !t.replicated() {
		return sh, e, err
	}
	sh.mu.Lock()
	missing := e.app(appSessionID) == nil
	sh.mu.Unlock()
	if missing {
		if e, err = t.reload(ctx, sid); err != nil {
			return nil, nil, err
		}
	}
	return sh, e, nil
}

func (t *Tracker) load(ctx context.Context, sid string) (*shard, *entry, error) {
	sh := t.shard(sid)
	sh.mu.Lock()
	e, ok := sh.m[sid]
	if ok {
		// Marked used before the lock is released, so that Flush cannot
		// evict an entry that a caller is about to work on.
		e.lastUsed = t.cfg.Now()
	}
	sh.mu.Unlock()
	if ok {
		return sh, e, nil
	}
	auth, apps, err := t.store.AuthSession(ctx, sid)
	if err != nil {
		return nil, nil, err
	}
	return sh, t.install(auth, apps), nil
}

// install puts a session loaded from the store into memory, unless another
// request loaded it first, and returns the entry in memory.
func (t *Tracker) install(auth *session.AuthSession, apps []*session.AppSession) *entry {
	ne := &entry{auth: *auth, persistedLast: auth.LastActiveAt, persistedLimit: auth.IdleLimit, lastUsed: t.cfg.Now()}
	for _, a := range apps {
		ne.apps = append(ne.apps, t.loadedApp(a))
	}
	sh := t.shard(auth.ID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.m[auth.ID]; ok {
		return e
	}
	sh.m[auth.ID] = ne
	return ne
}

// loadedApp is the in-memory state of an application session read from the store.
func (t *Tracker) loadedApp(a *session.AppSession) *appState {
	pol, _ := t.cfg.Client(a.ClientID)
	pol.Exempt = a.IdleExempt // the flag the app joined with stays with its session
	if a.RefreshChains == nil {
		a.RefreshChains = map[string]uint64{}
	}
	return &appState{AppSession: *a, policy: pol, persistedLast: a.LastActiveAt, persistedChains: maps.Clone(a.RefreshChains)}
}

// preload loads the sessions among ids that are not in memory, in one read.
// With several replicas it re-reads those in memory too and merges what the
// store knows, so that the sweeper judges every candidate by the store's
// latest view without a read per session.
func (t *Tracker) preload(ctx context.Context, ids []string) error {
	var read []string
	for _, id := range ids {
		if t.replicated() || !t.held(id) {
			read = append(read, id)
		}
	}
	_, err := t.readMerged(ctx, read)
	return err
}

// held reports whether memory holds session sid.
func (t *Tracker) held(sid string) bool {
	sh := t.shard(sid)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	_, ok := sh.m[sid]
	return ok
}

// readMerged reads sessions ids from the store in one read and merges them
// into memory (see mergeLoaded); it returns how many the store had.
func (t *Tracker) readMerged(ctx context.Context, ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	auths, apps, err := t.store.AuthSessions(ctx, ids)
	if err != nil {
		return 0, err
	}
	for _, a := range auths {
		t.mergeLoaded(a, apps[a.ID])
	}
	return len(auths), nil
}

func (e *entry) app(id string) *appState {
	for _, a := range e.apps {
		if a.ID == id {
			return a
		}
	}
	return nil
}

func (e *entry) liveApp(clientID string) *appState {
	for _, a := range e.apps {
		if a.ClientID == clientID && a.Live() {
			return a
		}
	}
	return nil
}

// --- status ---

// Status describes one session as seen by one credential, at one instant.
type Status struct {
	Active       bool
	SID          string
	UserID       string
	ClientID     string
	AppSessionID string
	Scopes       []string
	AuthTime     time.Time
	AMR          []string
	Exempt       bool
	// IdleLimit is the idle limit that governs this credential: the session's
	// effective limit, or an exempt app's own.
	IdleLimit        time.Duration
	IdleDeadline     time.Time
	Deadline         time.Time
	AbsoluteDeadline time.Time
	EndReason        session.Reason
	Now              time.Time
}

func (t *Tracker) status(e *entry, a *appState, now time.Time) Status {
	s := Status{
		SID: e.auth.ID, UserID: e.auth.UserID, AuthTime: e.auth.AuthTime, AMR: e.auth.AMR,
		AbsoluteDeadline: e.auth.AbsoluteDeadline, Now: now,
		IdleLimit: t.limit(e), IdleDeadline: t.idleDeadline(e), Deadline: t.deadline(e),
		EndReason: e.auth.EndReason,
	}
	if a == nil {
		s.Active = t.authValid(e, now)
		return s
	}
	s.ClientID, s.AppSessionID, s.Scopes, s.Exempt = a.ClientID, a.ID, a.Scopes, a.policy.Exempt
	s.Active = t.appValid(e, a, now)
	if d := t.appDeadline(e, a); !d.IsZero() {
		if a.policy.Exempt {
			s.IdleLimit, s.IdleDeadline, s.Deadline = t.ownLimit(a), d, d
		} else {
			s.Deadline = minTime(s.Deadline, d)
		}
	}
	if !a.Live() {
		s.EndReason = a.EndReason
	}
	if !s.Active && s.EndReason == "" {
		appIdle := a.policy.AppIdleTimeout > 0 && !a.policy.Exempt && !now.Before(t.appDeadline(e, a))
		s.EndReason = ExpiryReason(now, e.auth.AbsoluteDeadline, appIdle)
	}
	return s
}

// Session returns the status of an authentication session without counting
// as activity.
func (t *Tracker) Session(ctx context.Context, sid string) (Status, error) {
	if err := t.vouch(t.cfg.Now()); err != nil {
		return Status{}, err
	}
	sh, e, err := t.get(ctx, sid)
	if err != nil {
		return Status{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e.lastUsed = now
	return t.sessionStatus(e, now), nil
}

// sessionStatus is the status of the authentication session itself, with
// the reason it is over when it is. Callers hold the lock.
func (t *Tracker) sessionStatus(e *entry, now time.Time) Status {
	s := t.status(e, nil, now)
	if !s.Active && s.EndReason == "" {
		s.EndReason = ExpiryReason(now, e.auth.AbsoluteDeadline, false)
	}
	return s
}

// Check returns the status of an application session's credentials at the
// clock's current time. It is never activity (GET /session, revocation).
func (t *Tracker) Check(ctx context.Context, appSessionID string) (Status, error) {
	return t.Touch(ctx, appSessionID, 0, time.Time{})
}

// Touch records activity from source for an application session, if the
// client counts that source and the session is still valid, and returns its
// status. at is the reported time of the last interaction (zero: now); it is
// clamped to [previous last_active_at, now], and activity that arrives after
// the deadline never revives a session.
//
// With several replicas, a status read (src 0: GET /session) reads the
// session from the store first, so that its remaining seconds include the
// activity written at other replicas: they lag the truth by at most the
// flush slack, and never run ahead of it.
func (t *Tracker) Touch(ctx context.Context, appSessionID string, src Source, at time.Time) (Status, error) {
	return t.TouchFor(ctx, appSessionID, src, at, nil)
}

// TouchFor is Touch for a credential that only some clients' tokens may
// use: an API behind a gateway, a resource server reporting for the apps
// it serves. Activity is recorded only when accept (nil: any) takes the
// application session's client; otherwise the status is returned with
// nothing recorded, and the caller refuses the credential.
func (t *Tracker) TouchFor(ctx context.Context, appSessionID string, src Source, at time.Time, accept func(clientID string) bool) (Status, error) {
	if err := t.vouch(t.cfg.Now()); err != nil {
		return Status{}, err
	}
	if src == 0 {
		if err := t.reloadHeldOne(ctx, SessionID(appSessionID)); err != nil {
			return Status{}, err
		}
	}
	sh, e, err := t.getApp(ctx, appSessionID)
	if err != nil {
		return Status{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	e.lastUsed = now
	a := e.app(appSessionID)
	if a == nil {
		sh.mu.Unlock()
		return Status{}, fmt.Errorf("app session %s: %w", appSessionID, session.ErrNotFound)
	}
	if src != 0 && a.policy.Sources&src != 0 && (accept == nil || accept(a.ClientID)) && t.appValid(e, a, now) {
		t.record(e, a, !a.policy.Exempt, src, at, now)
	}
	st, urgent := t.status(e, a, now), t.behindNearDeadline(e, now)
	sh.mu.Unlock()
	return st, t.writeIfUrgent(ctx, e.auth.ID, urgent)
}

// writeIfUrgent writes a session's activity through when recording it left
// the store behind near its deadline (several replicas only; see
// behindNearDeadline): the request is acknowledged only once every replica
// can see the activity.
func (t *Tracker) writeIfUrgent(ctx context.Context, sid string, urgent bool) error {
	if !urgent {
		return nil
	}
	if err := t.flushSession(ctx, sid); err != nil {
		return fmt.Errorf("write activity of %s: %w", sid, err)
	}
	return nil
}

func clamp(at, lo, hi time.Time) time.Time {
	if at.IsZero() || at.After(hi) {
		return hi
	}
	if at.Before(lo) {
		return lo
	}
	return at
}

// record moves the app's own timer and, for activity of a non-exempt app
// (shared), the session's shared one: an exempt app's traffic (a video
// fetching segments) keeps itself alive, never the other apps. Callers hold
// the lock and have checked validity.
func (t *Tracker) record(e *entry, a *appState, shared bool, src Source, at, now time.Time) {
	t.stats.activity(src)
	if shared && t.authValid(e, now) {
		e.auth.LastActiveAt = clamp(at, e.auth.LastActiveAt, now)
	}
	if a != nil {
		a.LastActiveAt = clamp(at, a.LastActiveAt, now)
	}
}

// TouchSession records activity on the authentication session itself on
// behalf of a client, typically sso (an authorize request answered from the
// existing session). It reports whether the session is valid.
func (t *Tracker) TouchSession(ctx context.Context, sid, clientID string, src Source) (Status, error) {
	if err := t.vouch(t.cfg.Now()); err != nil {
		return Status{}, err
	}
	sh, e, err := t.get(ctx, sid)
	if err != nil {
		return Status{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	e.lastUsed = now
	if t.authValid(e, now) {
		pol, _ := t.cfg.Client(clientID)
		if pol.Sources&src != 0 {
			a := e.liveApp(clientID)
			if a != nil && !t.appValid(e, a, now) {
				a = nil
			}
			t.record(e, a, !pol.Exempt, src, time.Time{}, now)
		}
	}
	st, urgent := t.status(e, nil, now), t.behindNearDeadline(e, now)
	sh.mu.Unlock()
	return st, t.writeIfUrgent(ctx, sid, urgent)
}

// --- lifecycle ---

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Start creates an authentication session for a person who just signed in.
func (t *Tracker) Start(ctx context.Context, userID string, amr []string) (Status, error) {
	now := t.cfg.Now()
	a := session.AuthSession{
		ID: session.NewID(), UserID: userID, AuthTime: now, AMR: amr, LastActiveAt: now,
		IdleLimit: t.cfg.IdleTimeout, AbsoluteDeadline: now.Add(t.cfg.MaxLifetime),
	}
	a.Deadline = Deadline(now, a.IdleLimit, a.AbsoluteDeadline)
	if err := t.store.CreateAuthSession(ctx, &a); err != nil {
		return Status{}, fmt.Errorf("start session: %w", err)
	}
	e := &entry{auth: a, persistedLast: now, persistedLimit: a.IdleLimit, lastUsed: now}
	sh := t.shard(a.ID)
	sh.mu.Lock()
	sh.m[a.ID] = e
	s := t.status(e, nil, now)
	sh.mu.Unlock()
	return s, nil
}

// lockValid returns authentication session sid locked, with the clock
// reading it was judged by, if it is valid then; otherwise ErrSessionOver
// (or the load error) and nothing locked.
func (t *Tracker) lockValid(ctx context.Context, sid string) (*shard, *entry, time.Time, error) {
	if err := t.reloadHeldOne(ctx, sid); err != nil { // joins and reauthentications see the apps joined elsewhere
		return nil, nil, time.Time{}, err
	}
	sh, e, err := t.get(ctx, sid)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	if !t.authValid(e, now) {
		st := t.sessionStatus(e, now)
		sh.mu.Unlock()
		return nil, nil, time.Time{}, overError(st)
	}
	return sh, e, now, nil
}

// Reauthenticate records a fresh sign-in into a valid session (prompt=login,
// max_age): it counts as login activity and sets a new auth_time.
func (t *Tracker) Reauthenticate(ctx context.Context, sid string, amr []string) (Status, error) {
	unlock, err := t.lockWrites(ctx)
	if err != nil {
		return Status{}, err
	}
	defer unlock()
	sh, e, now, err := t.lockValid(ctx, sid)
	if err != nil {
		return Status{}, err
	}
	upd := e.auth
	upd.AuthTime, upd.AMR, upd.LastActiveAt = now, amr, now
	upd.Deadline = Deadline(now, t.limit(e), upd.AbsoluteDeadline)
	sh.mu.Unlock()
	if err := t.store.Reauthenticate(ctx, &upd); err != nil {
		return Status{}, err
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e.auth.AuthTime, e.auth.AMR = now, amr
	e.auth.LastActiveAt = maxTime(e.auth.LastActiveAt, now)
	e.persistedLast = maxTime(e.persistedLast, now)
	return t.status(e, nil, now), nil
}

// RaiseAssurance records a step-up of a valid session: a second factor
// presented inside it, so that its amr becomes amr (a superset of the one
// it had). auth_time stays that of the sign-in, so max_age still counts
// from the password. Written through with a change feed row, so that every
// replica sees the raised assurance within one sync interval.
func (t *Tracker) RaiseAssurance(ctx context.Context, sid string, amr []string, detail string) (Status, error) {
	sh, e, now, err := t.lockValid(ctx, sid)
	if err != nil {
		return Status{}, err
	}
	upd := e.auth
	upd.AMR = slices.Clone(amr)
	sh.mu.Unlock()
	if err := t.store.RaiseAssurance(ctx, &upd, now, detail); err != nil {
		return Status{}, fmt.Errorf("raise assurance of %s: %w", sid, err)
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if len(upd.AMR) > len(e.auth.AMR) {
		e.auth.AMR = upd.AMR
	}
	return t.status(e, nil, now), nil
}

// Join returns the live application session of clientID in session sid,
// creating it if the client has none (the provider is about to issue it a
// code or tokens). Joining a stricter app tightens the effective limit at
// once, and that is written through.
func (t *Tracker) Join(ctx context.Context, sid, clientID string, scopes []string) (Status, error) {
	unlock, err := t.lockWrites(ctx)
	if err != nil {
		return Status{}, err
	}
	defer unlock()
	for attempt := 0; attempt < 3; attempt++ {
		sh, e, now, err := t.lockValid(ctx, sid)
		if err != nil {
			return Status{}, err
		}
		if a := e.liveApp(clientID); a != nil && t.appValid(e, a, now) {
			if slices.Equal(a.Scopes, scopes) {
				s := t.status(e, a, now)
				sh.mu.Unlock()
				return s, nil
			}
			sh.mu.Unlock()
			// The app asked for other scopes this time: its session now holds those.
			if err := t.store.SetAppScopes(ctx, a.ID, scopes); err != nil {
				return Status{}, err
			}
			sh.mu.Lock()
			a.Scopes = slices.Clone(scopes)
			s := t.status(e, a, now)
			sh.mu.Unlock()
			return s, nil
		}
		if a := e.liveApp(clientID); a != nil {
			// Past its own deadline but not swept yet: end it now, then join anew.
			end := t.expireApp(e, a, now)
			sh.mu.Unlock()
			if err := t.commit(ctx, []session.End{end}); err != nil {
				return Status{}, err
			}
			continue
		}
		pol, ok := t.cfg.Client(clientID)
		if !ok {
			sh.mu.Unlock()
			return Status{}, fmt.Errorf("join: unknown client %q", clientID)
		}
		a := &appState{AppSession: session.AppSession{
			ID: session.NewAppSessionID(sid), AuthSessionID: sid, ClientID: clientID, Scopes: scopes,
			IdleExempt: pol.Exempt, JoinedAt: now, LastActiveAt: now, RefreshChains: map[string]uint64{},
		}, policy: pol, persistedLast: now, persistedChains: map[string]uint64{}}
		trial := *e
		trial.apps = append(slices.Clip(e.apps), a)
		a.Deadline = t.appDeadline(&trial, a)
		upd := session.ActivityUpdate{AuthSessionID: sid, LastActiveAt: e.auth.LastActiveAt,
			IdleLimit: t.limit(&trial), Deadline: t.deadline(&trial)}
		userID := e.auth.UserID
		sh.mu.Unlock()

		err = t.store.JoinApp(ctx, &a.AppSession, upd, userID)
		if errors.Is(err, session.ErrConflict) {
			t.evict(sid) // another replica or request joined first: reload
			continue
		}
		if err != nil {
			return Status{}, err
		}
		sh.mu.Lock()
		// An ended app of the same client may still sit in apps; replace nothing, append.
		e.apps = append(e.apps, a)
		e.persistedLimit = upd.IdleLimit
		s := t.status(e, a, now)
		sh.mu.Unlock()
		return s, nil
	}
	return Status{}, fmt.Errorf("join %s to %s: %w", clientID, sid, session.ErrConflict)
}

func (t *Tracker) evict(sid string) {
	sh := t.shard(sid)
	sh.mu.Lock()
	delete(sh.m, sid)
	sh.mu.Unlock()
}

// NewRefreshChain starts a refresh-token chain in an application session
// (one per code exchange, so that two sign-ins of the same app do not
// invalidate each other's tokens) and returns its id and first generation.
// The chain is written through.
func (t *Tracker) NewRefreshChain(ctx context.Context, appSessionID string) (string, uint64, error) {
	sh, e, err := t.getApp(ctx, appSessionID)
	if err != nil {
		return "", 0, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	a := e.app(appSessionID)
	var st Status
	if a != nil {
		st = t.status(e, a, now)
	}
	sh.mu.Unlock()
	if a == nil {
		return "", 0, session.ErrNotFound
	}
	if !st.Active { // a code exchanged after the session ended gets nothing
		return "", 0, overError(st)
	}
	chain := randomSuffix()
	if err := t.store.AddRefreshChain(ctx, appSessionID, chain, 1, now); err != nil {
		return "", 0, err
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	a.RefreshChains[chain] = 1
	a.persistedChains[chain] = 1
	return chain, 1, nil
}

// CheckRefresh validates a refresh token's generation in its chain. A
// generation older than the current one is a replay of a rotated token: the
// application session is ended with reason refresh_reuse and ErrRefreshReuse
// returned. A newer one can only exist if a crash lost the flush of its
// rotation (tokens are MAC-protected), and is accepted.
func (t *Tracker) CheckRefresh(ctx context.Context, appSessionID, chain string, gen uint64) (Status, error) {
	if err := t.vouch(t.cfg.Now()); err != nil {
		return Status{}, err
	}
	sh, e, err := t.getApp(ctx, appSessionID)
	if err != nil {
		return Status{}, err
	}
	sh.mu.Lock()
	a := e.app(appSessionID)
	sh.mu.Unlock()
	if a == nil {
		return Status{}, session.ErrNotFound
	}
	if err := t.storedGeneration(ctx, sh, a, chain); err != nil {
		return Status{}, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	cur, ok := a.RefreshChains[chain]
	s := t.status(e, a, now)
	reuse := a.Live() && ok && gen < cur
	sh.mu.Unlock()
	if !ok {
		return Status{}, session.ErrNotFound
	}
	if reuse {
		if err := t.EndApp(ctx, appSessionID, session.ReasonRefreshReuse, "system"); err != nil {
			return Status{}, err
		}
		return Status{}, ErrRefreshReuse
	}
	if !s.Active {
		return s, overError(s)
	}
	return s, nil
}

// RotateRefresh moves a chain from gen to gen+1, counting refresh activity
// where the client opted in. It fails with ErrStaleRefresh when another
// request rotated gen first. With one replica the new generation is flushed
// with the next activity flush; with several it is written at once by a
// compare-and-swap, so that of two replicas exactly one rotates.
func (t *Tracker) RotateRefresh(ctx context.Context, appSessionID, chain string, gen uint64) (Status, uint64, error) {
	if err := t.vouch(t.cfg.Now()); err != nil {
		return Status{}, 0, err
	}
	sh, e, err := t.getApp(ctx, appSessionID)
	if err != nil {
		return Status{}, 0, err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	a := e.app(appSessionID)
	st, err := t.rotatable(e, a, chain, gen, now)
	sh.mu.Unlock()
	if err != nil {
		return st, 0, err
	}
	if t.replicated() {
		if err := t.casRefresh(ctx, chain, gen); err != nil {
			return Status{}, 0, err
		}
	}
	sh.mu.Lock()
	if a.RefreshChains[chain] > gen && !t.replicated() {
		sh.mu.Unlock()
		return Status{}, 0, ErrStaleRefresh // a concurrent rotation won meanwhile
	}
	a.RefreshChains[chain] = max(a.RefreshChains[chain], gen+1)
	if t.replicated() {
		a.persistedChains[chain] = max(a.persistedChains[chain], gen+1)
	}
	if a.policy.Sources&Refresh != 0 && t.appValid(e, a, now) {
		t.record(e, a, !a.policy.Exempt, Refresh, time.Time{}, now)
	}
	e.lastUsed = now
	st, urgent := t.status(e, a, now), t.behindNearDeadline(e, now)
	sh.mu.Unlock()
	return st, gen + 1, t.writeIfUrgent(ctx, e.auth.ID, urgent)
}

// rotatable checks that chain of app session a may rotate from gen at now.
// Callers hold the lock.
func (t *Tracker) rotatable(e *entry, a *appState, chain string, gen uint64, now time.Time) (Status, error) {
	if a == nil {
		return Status{}, session.ErrNotFound
	}
	if !t.appValid(e, a, now) {
		st := t.status(e, a, now)
		return st, overError(st)
	}
	cur, ok := a.RefreshChains[chain]
	if !ok {
		return Status{}, session.ErrNotFound
	}
	if gen < cur {
		return Status{}, ErrStaleRefresh
	}
	return Status{}, nil
}

// End ends an authentication session now with reason, by initiator. An idle
// end leaves exempt application sessions running; every other reason ends
// them all.
func (t *Tracker) End(ctx context.Context, sid string, reason session.Reason, initiator string) error {
	if err := t.reloadHeldOne(ctx, sid); err != nil { // every app, wherever it joined, ends and is told
		return err
	}
	sh, e, err := t.get(ctx, sid)
	if err != nil {
		return err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	end := t.planEnd(e, reason, initiator, now)
	sh.mu.Unlock()
	return t.commit(ctx, []session.End{end})
}

// EndApp ends one application session alone: back-channel logout goes to
// that app, the authentication session goes on and its effective limit is
// recomputed without it.
func (t *Tracker) EndApp(ctx context.Context, appSessionID string, reason session.Reason, initiator string) error {
	sh, e, err := t.getApp(ctx, appSessionID)
	if err != nil {
		return err
	}
	now := t.cfg.Now()
	sh.mu.Lock()
	a := e.app(appSessionID)
	if a == nil {
		sh.mu.Unlock()
		return session.ErrNotFound
	}
	end := session.End{At: now, Reason: reason, Initiator: initiator, UserID: e.auth.UserID}
	t.endApp(e, a, &end, now, reason)
	sh.mu.Unlock()
	return t.commit(ctx, []session.End{end})
}

// planEnd marks e (and the apps that go with it) ended in memory and returns
// the End to persist. Callers hold the lock.
func (t *Tracker) planEnd(e *entry, reason session.Reason, initiator string, now time.Time) session.End {
	end := session.End{At: now, Reason: reason, Initiator: initiator, UserID: e.auth.UserID}
	if e.auth.Live() {
		end.AuthSessionID = e.auth.ID
		end.IdleLimit = t.limit(e)
		e.auth.IdleLimit = end.IdleLimit // the limit that was in force stays on record
		e.auth.EndedAt, e.auth.EndReason, e.auth.EndedBy = now, reason, initiator
	}
	for _, a := range e.apps {
		if !a.Live() || (reason == session.ReasonIdleTimeout && a.policy.Exempt) {
			continue
		}
		t.endApp(e, a, &end, now, reason)
	}
	return end
}

func (t *Tracker) endApp(e *entry, a *appState, end *session.End, now time.Time, reason session.Reason) {
	if !a.Live() {
		return
	}
	a.EndedAt, a.EndReason = now, reason
	end.AppSessions = append(end.AppSessions, session.EndedApp{ID: a.ID, ClientID: a.ClientID})
	if a.policy.BackchannelLogoutURI != "" {
		end.Notices = append(end.Notices, session.LogoutNotice{ClientID: a.ClientID, URI: a.policy.BackchannelLogoutURI,
			SID: e.auth.ID, Subject: e.auth.UserID, Reason: reason})
	}
	if len(a.policy.SignalReceivers) > 0 {
		end.Signals = append(end.Signals, session.SignalNotice{ClientID: a.ClientID, SID: e.auth.ID, Subject: e.auth.UserID,
			Reason: reason, Receivers: a.policy.SignalReceivers})
	}
}

// commit persists ends. If that fails, the affected entries are dropped from
// memory so that the stored truth is reloaded and the sweeper retries.
func (t *Tracker) commit(ctx context.Context, ends []session.End) error {
	var err error
	if len(ends) == 1 {
		err = t.store.EndSessions(ctx, ends[0])
	} else {
		err = t.store.EndMany(ctx, ends)
	}
	if err != nil {
		for _, e := range ends {
			if e.AuthSessionID != "" {
				t.evict(e.AuthSessionID)
			}
			for _, a := range e.AppSessions {
				t.evict(SessionID(a.ID))
			}
		}
		return fmt.Errorf("end sessions: %w", err)
	}
	for _, e := range ends {
		t.stats.ended(e.Reason)
	}
	if t.cfg.OnEnd != nil {
		t.cfg.OnEnd()
	}
	return nil
}
