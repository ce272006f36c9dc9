// Package storetest holds the behaviour tests every session store backend
// must pass, written once (as Dex's storage/conformance): a PostgreSQL
// backend runs the same Run with its own constructor.
package storetest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

// Store is the behaviour under test: what the activity tracker and the
// provider consume, together.
type Store interface {
	CreateUser(ctx context.Context, u *session.User) error
	UserByUsername(ctx context.Context, username string) (*session.User, error)
	UserByID(ctx context.Context, id string) (*session.User, error)
	SetPassword(ctx context.Context, username, hash string) error
	DeleteUser(ctx context.Context, username string) error
	ListUsers(ctx context.Context) ([]*session.User, error)

	CreateAuthSession(ctx context.Context, a *session.AuthSession) error
	Reauthenticate(ctx context.Context, a *session.AuthSession) error
	SetAppScopes(ctx context.Context, id string, scopes []string) error
	TightenDeadlines(ctx context.Context, l session.Limits) error
	EndMany(ctx context.Context, ends []session.End) error
	AuthSession(ctx context.Context, id string) (*session.AuthSession, []*session.AppSession, error)
	AuthSessions(ctx context.Context, ids []string) ([]*session.AuthSession, map[string][]*session.AppSession, error)
	JoinApp(ctx context.Context, app *session.AppSession, auth session.ActivityUpdate, userID string) error
	AddRefreshChain(ctx context.Context, appSessionID, chainID string, gen uint64, at time.Time) error
	FlushActivity(ctx context.Context, updates []session.ActivityUpdate) error
	DueAuthSessions(ctx context.Context, now time.Time, limit int) ([]string, error)
	DueAppSessions(ctx context.Context, now time.Time, limit int) ([]string, error)
	EndSessions(ctx context.Context, e session.End) error
	SessionsOfUser(ctx context.Context, userID string, withEnded bool) ([]*session.AuthSession, map[string][]*session.AppSession, error)

	ClaimDeliveries(ctx context.Context, c session.DeliveryClaim) ([]session.OutboxEntry, error)
	DeliveryDone(ctx context.Context, o session.OutboxEntry, at time.Time, ok bool, next time.Time, errText string) error
	PendingDeliveries(ctx context.Context) (int, error)
	Deliveries(ctx context.Context, sid string) ([]session.OutboxEntry, error)
	AddAudit(ctx context.Context, ev session.AuditEvent) error
	PurgeDeliveries(ctx context.Context, before time.Time) (int64, error)
	Audit(ctx context.Context, f session.AuditFilter) ([]session.AuditEvent, error)

	SaveAuthRequest(ctx context.Context, id string, data []byte, created, expires time.Time) error
	AuthRequestData(ctx context.Context, id string, now time.Time) ([]byte, error)
	SaveAuthCode(ctx context.Context, id, codeHash string) error
	AuthRequestByCode(ctx context.Context, codeHash string, now time.Time) (string, []byte, error)
	AuthRequestOfCode(ctx context.Context, codeHash string, now time.Time) ([]byte, error)
	PurgeAuthRequests(ctx context.Context, now time.Time) error

	RevokeToken(ctx context.Context, tokenID string, expires time.Time) error
	RevokedTokens(ctx context.Context, now time.Time) ([]string, error)
	PurgeRevokedTokens(ctx context.Context, now time.Time) (int64, error)
	Secret(ctx context.Context, name string, gen func() []byte) ([]byte, error)
	AddSigningKey(ctx context.Context, k session.SigningKey, retireOthers time.Time) error
	SigningKeys(ctx context.Context, now time.Time) ([]session.SigningKey, error)
	Ping(ctx context.Context) error

	ReserveLoginAttempt(ctx context.Context, keys []string, now time.Time, p session.LoginPolicy) (session.LoginAttempt, time.Duration, error)
	RefundLoginAttempt(ctx context.Context, a session.LoginAttempt) error
	ForgetLoginFailures(ctx context.Context, keys []string) error
	PurgeLoginFailures(ctx context.Context, now time.Time, p session.LoginPolicy) error

	SessionChanges(ctx context.Context, after int64, limit int) ([]session.Change, error)
	LastSessionChange(ctx context.Context) (int64, error)
	PurgeSessionChanges(ctx context.Context, before time.Time) error
	AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error)
	ReleaseLease(ctx context.Context, name, holder string) error
	RefreshGeneration(ctx context.Context, chainID string) (uint64, error)
	RotateRefreshChain(ctx context.Context, chainID string, from uint64) (bool, error)

	SetTOTP(ctx context.Context, f session.TOTPFactor, recoveryHashes []string, by string) error
	TOTP(ctx context.Context, userID string) (*session.TOTPFactor, error)
	UseTOTPStep(ctx context.Context, userID string, step int64) (bool, error)
	UseRecoveryCode(ctx context.Context, userID, hash string, at time.Time) (bool, error)
	AddWebAuthnCredential(ctx context.Context, c session.WebAuthnCredential, by string) error
	WebAuthnCredentials(ctx context.Context, userID string) ([]*session.WebAuthnCredential, error)
	WebAuthnCredential(ctx context.Context, id []byte) (*session.WebAuthnCredential, error)
	UseWebAuthnCredential(ctx context.Context, id []byte, signCount uint32, at time.Time) (bool, error)
	DeleteWebAuthnCredential(ctx context.Context, userID string, id []byte, at time.Time, by string) error
	ResetMFA(ctx context.Context, userID string, at time.Time, by string) error
	Factors(ctx context.Context, userID string) (session.Factors, error)
	PutCeremony(ctx context.Context, id, userID string, data []byte, expires time.Time) error
	TakeCeremony(ctx context.Context, id string, now time.Time) (string, []byte, error)
	PurgeCeremonies(ctx context.Context, now time.Time) error
	RaiseAssurance(ctx context.Context, a *session.AuthSession, at time.Time, detail string) error
	SignalStore
}

// Run runs every behaviour test against stores made by open (a fresh,
// empty store each time), in parallel.
func Run(t *testing.T, open func(t *testing.T) Store) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, s Store)
	}{
		{"Users", testUsers},
		{"SessionLifecycle", testSessionLifecycle},
		{"OneLiveAppSessionPerPair", testOneLiveAppPerPair},
		{"FlushNeverMovesBackward", testFlushMonotonic},
		{"DueSessionsAreLiveAndDue", testDue},
		{"EndIsAtomicAndFirstReasonStands", testEnd},
		{"Outbox", testOutbox},
		{"OutboxOnePendingRowPerPair", testOutboxPair},
		{"OutboxClaimsAreExclusiveAndLapse", testOutboxClaims},
		{"OutboxClaimPerDestination", testOutboxDestinations},
		{"OutboxRetention", testOutboxRetention},
		{"OutboxWorkersClaimDisjointRows", testOutboxClaimRace},
		{"OutboxNoticeNamedTwiceInABatch", testOutboxBatchPair},
		{"AuthRequestsAndCodes", testAuthRequests},
		{"OneCodePerAuthRequest", testOneCodePerRequest},
		{"ExpiredAuthRequestsArePurged", testPurgeAuthRequests},
		{"RevokedTokensExpire", testRevoked},
		{"SecretsAndKeys", testSecretsAndKeys},
		{"Reauthenticate", testReauthenticate},
		{"SetAppScopes", testSetAppScopes},
		{"TightenDeadlinesOnlyEarlier", testTighten},
		{"EndManyAndAppEnds", testEndMany},
		{"SessionsOfUserInForce", testSessionsOfUser},
		{"AuthSessionsReadsALongBatchWhole", testAuthSessionsLongBatch},
		{"PurgesRunPastOneBatch", testPurgeBatches},
		{"AuditFilterAndOrder", testAudit},
		{"CodeRedeemedOnceUnderRace", testCodeRace},
		{"ConcurrentEndsWriteOnce", testEndRace},
		{"HostileKeysFindNothing", testHostileKeys},
		{"LoginAttemptsAreCountedBeforeTheCheck", testLoginReserve},
		{"LoginAttemptsRaceForTheLastSlot", testLoginReserveRace},
		{"LoginRefundLiftsOnlyItsOwnLock", testLoginRefund},
		{"LoginFailuresAreForgottenAndPurged", testLoginForgetPurge},
		{"LoginAttemptsSharingKeysNeverDeadlock", testLoginReserveOrder},
		{"ChangeFeedRecordsEveryChangeOtherReplicasMustSee", testChangeFeed},
		{"RevocationsAreOnTheChangeFeed", testRevocationFeed},
		{"ConditionalEndLosesToNewerActivity", testConditionalEnd},
		{"LeaseHasOneHolderUntilItExpires", testLease},
		{"RefreshRotationIsCompareAndSwap", testRefreshCAS},
		{"TOTPStepIsUsedOnce", testTOTPStep},
		{"RecoveryCodesWorkOnce", testRecoveryCodes},
		{"PasskeysCounterAndRemoval", testPasskeys},
		{"FactorsResetAndCascade", testFactorsReset},
		{"CeremonyIsTakenOnceBeforeItExpires", testCeremonies},
		{"RaiseAssuranceIsOnTheChangeFeed", testRaiseAssurance},
		{"OlderActivityNeverPullsTheDeadlineBack", testOlderView},
		{"ConditionalAppEndWaitsForItsOwnDeadline", testConditionalAppEnd},
		{"ChangeFeedReaderMissesNothingUnderConcurrency", testChangeFeedRace},
		{"StreamsBelongToTheirReceiverAndAreBounded", testStreams},
		{"EndQueuesSignalsOnTheReceiversStreams", testSignalsOnEnd},
		{"SignalsStayUntilAcknowledged", testSignalAcks},
		{"SignalPushesAreClaimedRetriedAndDone", testSignalPushes},
		{"VerificationHasAMinimumInterval", testVerification},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel() // each case has a store of its own
			tc.fn(t, open(t))
		})
	}
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newSession(t *testing.T, s Store, userID string, deadline time.Time) *session.AuthSession {
	t.Helper()
	a := &session.AuthSession{ID: session.NewID(), UserID: userID, AuthTime: t0, AMR: []string{"pwd"}, LastActiveAt: t0,
		IdleLimit: 5 * time.Minute, AbsoluteDeadline: t0.Add(time.Hour), Deadline: deadline}
	require.NoError(t, s.CreateAuthSession(t.Context(), a))
	return a
}

func join(t *testing.T, s Store, a *session.AuthSession, client string, limit time.Duration) *session.AppSession {
	t.Helper()
	app := &session.AppSession{ID: a.ID + "." + client, AuthSessionID: a.ID, ClientID: client, Scopes: []string{"openid"},
		JoinedAt: t0, LastActiveAt: t0}
	require.NoError(t, s.JoinApp(t.Context(), app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0,
		IdleLimit: limit, Deadline: t0.Add(limit)}, a.UserID))
	return app
}

func testUsers(t *testing.T, s Store) {
	ctx := t.Context()
	u := &session.User{Username: "alice", PasswordHash: "h", Name: "Alice", Email: "a@example.com", EmailVerified: true, CreatedAt: t0}
	require.NoError(t, s.CreateUser(ctx, u))
	require.NotEmpty(t, u.ID)
	require.ErrorIs(t, s.CreateUser(ctx, &session.User{Username: "alice", PasswordHash: "x", CreatedAt: t0}), session.ErrConflict)
	got, err := s.UserByUsername(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, u.ID, got.ID)
	require.True(t, got.EmailVerified)
	got, err = s.UserByID(ctx, u.ID)
	require.NoError(t, err)
	require.Equal(t, "Alice", got.Name)
	require.NoError(t, s.SetPassword(ctx, "alice", "h2"))
	got, _ = s.UserByUsername(ctx, "alice")
	require.Equal(t, "h2", got.PasswordHash)
	require.ErrorIs(t, s.SetPassword(ctx, "nobody", "h"), session.ErrNotFound)
	require.NoError(t, s.CreateUser(ctx, &session.User{Username: "aaron", PasswordHash: "h", CreatedAt: t0}))
	users, err := s.ListUsers(ctx)
	require.NoError(t, err)
	require.Len(t, users, 2)
	require.Equal(t, []string{"aaron", "alice"}, []string{users[0].Username, users[1].Username}, "ordered by username")
	require.Equal(t, t0, users[1].CreatedAt)
	require.NoError(t, s.Ping(ctx))
	require.NoError(t, s.DeleteUser(ctx, "alice"))
	_, err = s.UserByUsername(ctx, "alice")
	require.ErrorIs(t, err, session.ErrNotFound)
	require.ErrorIs(t, s.DeleteUser(ctx, "alice"), session.ErrNotFound)
}

func testSessionLifecycle(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "bank", 2*time.Minute)
	require.NoError(t, s.AddRefreshChain(ctx, app.ID, "c1", 1, t0))

	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, 2*time.Minute, got.IdleLimit, "joining updated the limit")
	require.Equal(t, t0.Add(2*time.Minute), got.Deadline)
	require.Equal(t, []string{"pwd"}, got.AMR)
	require.True(t, got.Live())
	require.Len(t, apps, 1)
	require.Equal(t, map[string]uint64{"c1": 1}, apps[0].RefreshChains)

	list, byID, err := s.SessionsOfUser(ctx, "u1", false)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Len(t, byID[a.ID], 1)

	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	require.Equal(t, session.AuditSessionStart, events[0].Kind)
	require.Equal(t, session.AuditAppJoin, events[1].Kind)

	_, _, err = s.AuthSession(ctx, "missing")
	require.ErrorIs(t, err, session.ErrNotFound)

	many, manyApps, err := s.AuthSessions(ctx, []string{a.ID, "missing"})
	require.NoError(t, err)
	require.Len(t, many, 1)
	require.Equal(t, a.ID, many[0].ID)
	require.Len(t, manyApps[a.ID], 1)
	require.Equal(t, map[string]uint64{"c1": 1}, manyApps[a.ID][0].RefreshChains)
}

// testAuthSessionsLongBatch reads more sessions at once than one IN list
// of a backend may carry (SQLite reads 500 ids a statement): every session,
// its apps and their refresh chains come back, wherever the chunks split.
func testAuthSessionsLongBatch(t *testing.T, s Store) {
	ctx := t.Context()
	const n = 1001
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newSession(t, s, "u1", t0.Add(5*time.Minute)).ID
	}
	last := &session.AuthSession{ID: ids[n-1], UserID: "u1"}
	app := join(t, s, last, "bank", 2*time.Minute)
	require.NoError(t, s.AddRefreshChain(ctx, app.ID, "c1", 1, t0))

	many, apps, err := s.AuthSessions(ctx, ids)
	require.NoError(t, err)
	require.Len(t, many, n)
	require.Len(t, apps[last.ID], 1)
	require.Equal(t, map[string]uint64{"c1": 1}, apps[last.ID][0].RefreshChains)
	require.Empty(t, apps[ids[0]])

	list, byID, err := s.SessionsOfUser(ctx, "u1", false)
	require.NoError(t, err)
	require.Len(t, list, n)
	require.Len(t, byID[last.ID], 1)
}

func testOneLiveAppPerPair(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "bank", time.Minute)
	dup := &session.AppSession{ID: a.ID + ".other", AuthSessionID: a.ID, ClientID: "bank", JoinedAt: t0, LastActiveAt: t0}
	require.ErrorIs(t, s.JoinApp(ctx, dup, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Minute, Deadline: t0}, "u1"), session.ErrConflict)
	// Once the first has ended, the app may join again.
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonAppIdleTimeout, AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "bank"}}}))
	require.NoError(t, s.JoinApp(ctx, dup, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Minute, Deadline: t0}, "u1"))
}

func testFlushMonotonic(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "mail", 5*time.Minute)
	require.NoError(t, s.AddRefreshChain(ctx, app.ID, "c1", 1, t0))
	later := t0.Add(time.Minute)
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: later, IdleLimit: 5 * time.Minute,
		Deadline: later.Add(5 * time.Minute), Apps: []session.AppActivity{{ID: app.ID, LastActiveAt: later, RefreshChains: map[string]uint64{"c1": 4}}}}}))
	// A stale write (older times, older generation) never moves them back.
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: 5 * time.Minute,
		Deadline: later.Add(5 * time.Minute), Apps: []session.AppActivity{{ID: app.ID, LastActiveAt: t0, RefreshChains: map[string]uint64{"c1": 2}}}}}))
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, later, got.LastActiveAt)
	require.Equal(t, later, apps[0].LastActiveAt)
	require.Equal(t, uint64(4), apps[0].RefreshChains["c1"])

	// Another replica writes its older view, with the deadline that follows
	// from it: the stored deadline still follows the latest stored activity.
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: t0.Add(30 * time.Second),
		IdleLimit: 5 * time.Minute, Deadline: t0.Add(30*time.Second + 5*time.Minute)}}))
	got, _, err = s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, later.Add(5*time.Minute), got.Deadline)
}

func testDue(t *testing.T, s Store) {
	ctx := t.Context()
	due := newSession(t, s, "u1", t0.Add(time.Minute))
	newSession(t, s, "u1", t0.Add(time.Hour))
	ended := newSession(t, s, "u1", t0.Add(time.Minute))
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonLogout, AuthSessionID: ended.ID}))
	ids, err := s.DueAuthSessions(ctx, t0.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Equal(t, []string{due.ID}, ids, "only live sessions at or past their deadline")

	a := newSession(t, s, "u2", t0.Add(time.Hour))
	app := &session.AppSession{ID: a.ID + ".video", AuthSessionID: a.ID, ClientID: "video", IdleExempt: true, JoinedAt: t0, LastActiveAt: t0,
		Deadline: t0.Add(2 * time.Minute)}
	require.NoError(t, s.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Hour, Deadline: t0.Add(time.Hour)}, "u2"))
	ids, err = s.DueAppSessions(ctx, t0.Add(time.Minute), 10)
	require.NoError(t, err)
	require.Empty(t, ids)
	ids, err = s.DueAppSessions(ctx, t0.Add(2*time.Minute), 10)
	require.NoError(t, err)
	require.Equal(t, []string{a.ID}, ids)
}

func testEnd(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Minute))
	mail := join(t, s, a, "mail", 5*time.Minute)
	end := session.End{At: t0.Add(time.Minute), Reason: session.ReasonIdleTimeout, Initiator: "system", UserID: "u1", AuthSessionID: a.ID,
		IdleLimit: 5 * time.Minute, AppSessions: []session.EndedApp{{ID: mail.ID, ClientID: "mail"}},
		Notices: []session.LogoutNotice{{ClientID: "mail", URI: "https://mail.example/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonIdleTimeout}}}
	require.NoError(t, s.EndSessions(ctx, end))
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.False(t, got.Live())
	require.Equal(t, session.ReasonIdleTimeout, got.EndReason)
	require.Equal(t, "system", got.EndedBy)
	require.False(t, apps[0].Live())
	rows := claim(t, s, "w", t0.Add(time.Minute), "")
	require.Len(t, rows, 1)

	// A second end does not overwrite the first reason.
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(2 * time.Minute), Reason: session.ReasonAdmin, AuthSessionID: a.ID}))
	got, _, _ = s.AuthSession(ctx, a.ID)
	require.Equal(t, session.ReasonIdleTimeout, got.EndReason)
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditSessionEnd))
}

// claim claims every due row (of uri, or of any destination) for worker.
func claim(t *testing.T, s Store, worker string, now time.Time, uri string) []session.OutboxEntry {
	t.Helper()
	rows, err := s.ClaimDeliveries(t.Context(), session.DeliveryClaim{Worker: worker, Now: now, Until: now.Add(time.Minute), URI: uri, Limit: 10})
	require.NoError(t, err)
	return rows
}

// endApps ends the named apps of a and writes one logout notice per app.
func endApps(t *testing.T, s Store, a *session.AuthSession, at time.Time, reason session.Reason, apps ...*session.AppSession) {
	t.Helper()
	end := session.End{At: at, Reason: reason, UserID: a.UserID}
	for _, app := range apps {
		end.AppSessions = append(end.AppSessions, session.EndedApp{ID: app.ID, ClientID: app.ClientID})
		end.Notices = append(end.Notices, session.LogoutNotice{ClientID: app.ClientID, URI: "https://" + app.ClientID + "/bc",
			SID: a.ID, Subject: a.UserID, Reason: reason})
	}
	require.NoError(t, s.EndSessions(t.Context(), end))
}

func testOutbox(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Minute))
	appA, appB := join(t, s, a, "a", time.Minute), join(t, s, a, "b", time.Minute)
	end := session.End{At: t0, Reason: session.ReasonLogout, AuthSessionID: a.ID,
		AppSessions: []session.EndedApp{{ID: appA.ID, ClientID: "a"}, {ID: appB.ID, ClientID: "b"}},
		Notices: []session.LogoutNotice{{ClientID: "a", URI: "https://a/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonLogout},
			{ClientID: "b", URI: "https://b/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonLogout}}}
	require.NoError(t, s.EndSessions(ctx, end))
	require.NoError(t, s.EndSessions(ctx, end), "ending twice")
	n, err := s.PendingDeliveries(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, n, "one logout per app, however often its end is written")
	rows := claim(t, s, "w", t0, "")
	require.Len(t, rows, 2)
	require.NotEqual(t, rows[0].JTI, rows[1].JTI)
	require.Equal(t, "w", rows[0].ClaimedBy)
	require.Equal(t, t0.Add(time.Minute), rows[0].ClaimedUntil)
	require.NoError(t, s.DeliveryDone(ctx, rows[0], t0, true, time.Time{}, ""))
	require.NoError(t, s.DeliveryDone(ctx, rows[1], t0, false, t0.Add(time.Minute), "503"))
	require.Empty(t, claim(t, s, "w", t0.Add(30*time.Second), ""), "the retry is not due yet")
	rows = claim(t, s, "w", t0.Add(time.Minute), "")
	require.Len(t, rows, 1)
	require.Equal(t, 1, rows[0].Attempts)
	require.Equal(t, "503", rows[0].LastError)
	pending, err := s.PendingDeliveries(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, pending, "the delivered row is no longer pending")
	all, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Equal(t, "a", all[0].ClientID, "oldest first")
	require.False(t, all[0].DeliveredAt.IsZero())
	require.Equal(t, session.ReasonLogout, all[1].Reason)
	require.Equal(t, t0.Add(time.Minute), all[1].NextAttemptAt)
	other, err := s.Deliveries(ctx, "other-sid")
	require.NoError(t, err)
	require.Empty(t, other)
	every, err := s.Deliveries(ctx, "")
	require.NoError(t, err)
	require.Len(t, every, 2, "an empty sid lists every delivery")
	require.NoError(t, s.DeliveryDone(ctx, rows[0], t0.Add(time.Minute), false, time.Time{}, "gone"))
	require.Empty(t, claim(t, s, "w", t0.Add(time.Hour), ""), "abandoned")
	n, err = s.PendingDeliveries(ctx)
	require.NoError(t, err)
	require.Zero(t, n)
	all, err = s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, all, 2)
	require.Empty(t, all[0].ClaimedBy, "a finished row holds no claim")
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	var kinds []string
	for _, e := range events {
		kinds = append(kinds, e.Kind)
	}
	require.Contains(t, kinds, session.AuditLogoutDelivered)
	require.Contains(t, kinds, session.AuditLogoutRetrying)
	require.Contains(t, kinds, session.AuditLogoutAbandoned)
}

// testOutboxPair: ending and rejoining an app again and again leaves one
// pending row for the pair; a later end replaces the notice with a fresh jti,
// and an attempt of the replaced notice no longer finishes the row.
func testOutboxPair(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	var jtis []string
	for i := range 5 {
		app := &session.AppSession{ID: a.ID + ".m" + string(rune('a'+i)), AuthSessionID: a.ID, ClientID: "mail", JoinedAt: t0, LastActiveAt: t0}
		require.NoError(t, s.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Hour, Deadline: t0.Add(time.Hour)}, "u1"))
		endApps(t, s, a, t0.Add(time.Duration(i)*time.Second), session.ReasonLogout, app)
		rows, err := s.Deliveries(ctx, a.ID)
		require.NoError(t, err)
		require.Len(t, rows, 1, "one pending row per (client, sid)")
		jtis = append(jtis, rows[0].JTI)
		if i == 2 {
			claimed := claim(t, s, "w", t0.Add(10*time.Second), "")
			require.Len(t, claimed, 1)
			// While that attempt is in flight, the pair ends again.
			app2 := &session.AppSession{ID: a.ID + ".again", AuthSessionID: a.ID, ClientID: "mail", JoinedAt: t0, LastActiveAt: t0}
			require.NoError(t, s.JoinApp(ctx, app2, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Hour, Deadline: t0.Add(time.Hour)}, "u1"))
			endApps(t, s, a, t0.Add(11*time.Second), session.ReasonAdmin, app2)
			require.NoError(t, s.DeliveryDone(ctx, claimed[0], t0.Add(12*time.Second), true, time.Time{}, ""))
			rows, err := s.Deliveries(ctx, a.ID)
			require.NoError(t, err)
			require.Len(t, rows, 1)
			require.True(t, rows[0].DeliveredAt.IsZero(), "the later end is still to be told")
			require.NotEqual(t, claimed[0].JTI, rows[0].JTI)
			require.Equal(t, session.ReasonAdmin, rows[0].Reason)
			require.Empty(t, rows[0].ClaimedBy, "claimable at once")
		}
	}
	require.Len(t, jtis, 5)
	n, err := s.PendingDeliveries(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(events, func(e session.AuditEvent) bool {
		return e.Kind == session.AuditLogoutDelivered && strings.Contains(e.Detail, "stale=true")
	}), "the superseded attempt is audited")
}

// testOutboxClaims: a claimed row is invisible to other workers until its
// claim lapses; then another worker takes it, with the same jti; only the
// holder of the claim records a failure, and a late success of the first
// worker is still recorded once.
func testOutboxClaims(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	endApps(t, s, a, t0, session.ReasonLogout, join(t, s, a, "mail", time.Hour))
	first := claim(t, s, "dead", t0, "")
	require.Len(t, first, 1)
	require.Empty(t, claim(t, s, "other", t0.Add(59*time.Second), ""), "claimed")
	second := claim(t, s, "other", t0.Add(time.Minute), "")
	require.Len(t, second, 1, "the claim lapsed")
	require.Equal(t, first[0].JTI, second[0].JTI, "delivered again with the same jti")
	require.Equal(t, "other", second[0].ClaimedBy)
	require.Contains(t, second[0].LastError, "claim lapsed: dead may have delivered it")

	// The first worker's failure comes too late to reschedule the row.
	require.NoError(t, s.DeliveryDone(ctx, first[0], t0.Add(time.Minute), false, t0.Add(time.Hour), "timeout"))
	rows, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, "other", rows[0].ClaimedBy)
	require.Zero(t, rows[0].Attempts)

	require.NoError(t, s.DeliveryDone(ctx, second[0], t0.Add(time.Minute), true, time.Time{}, ""))
	require.NoError(t, s.DeliveryDone(ctx, first[0], t0.Add(time.Minute), true, time.Time{}, ""), "a duplicate")
	rows, err = s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, 1, rows[0].Attempts, "delivered once")
	require.Equal(t, 2, countEvents(t, s, a.ID, session.AuditLogoutDelivered), "the duplicate is counted in the audit")
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(events, func(e session.AuditEvent) bool {
		return e.Kind == session.AuditLogoutDelivered && strings.Contains(e.Detail, "lapsed_claim=true") && !strings.Contains(e.Detail, "stale=true")
	}), "the attempt after a lapsed claim says so: the dead worker may have delivered too")
}

// countEvents counts the audit events of one kind for sid.
func countEvents(t *testing.T, s Store, sid, kind string) int {
	t.Helper()
	events, err := s.Audit(t.Context(), session.AuditFilter{SID: sid})
	require.NoError(t, err)
	return countKind(events, kind)
}

// testOutboxDestinations: a claim takes rows of one destination, up to its
// limit, or of every destination but the excepted ones.
func testOutboxDestinations(t *testing.T, s Store) {
	for i := range 3 {
		a := newSession(t, s, "u1", t0.Add(time.Hour))
		endApps(t, s, a, t0.Add(time.Duration(i)*time.Second), session.ReasonLogout, join(t, s, a, "a", time.Hour), join(t, s, a, "b", time.Hour))
	}
	now := t0.Add(time.Minute)
	rows, err := s.ClaimDeliveries(t.Context(), session.DeliveryClaim{Worker: "w", Now: now, Until: now.Add(time.Minute), URI: "https://a/bc", Limit: 2})
	require.NoError(t, err)
	require.Len(t, rows, 2)
	require.True(t, rows[0].CreatedAt.Before(rows[1].CreatedAt), "oldest first")
	for _, o := range rows {
		require.Equal(t, "https://a/bc", o.URI)
	}
	rows, err = s.ClaimDeliveries(t.Context(), session.DeliveryClaim{Worker: "w", Now: now, Until: now.Add(time.Minute), Except: []string{"https://a/bc"}, Limit: 10})
	require.NoError(t, err)
	require.Len(t, rows, 3)
	for _, o := range rows {
		require.Equal(t, "https://b/bc", o.URI)
	}
	require.Len(t, claim(t, s, "w", now, ""), 1, "the last row of a")
}

// testOutboxRetention: finished rows go once older than the retention;
// pending rows stay whatever their age.
func testOutboxRetention(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	endApps(t, s, a, t0, session.ReasonLogout, join(t, s, a, "a", time.Hour), join(t, s, a, "b", time.Hour), join(t, s, a, "c", time.Hour))
	rows := claim(t, s, "w", t0, "")
	require.Len(t, rows, 3)
	require.NoError(t, s.DeliveryDone(ctx, rows[0], t0, true, time.Time{}, ""))
	require.NoError(t, s.DeliveryDone(ctx, rows[1], t0.Add(time.Hour), false, time.Time{}, "gone"))
	n, err := s.PurgeDeliveries(ctx, t0)
	require.NoError(t, err)
	require.Zero(t, n, "not older than the retention yet")
	n, err = s.PurgeDeliveries(ctx, t0.Add(time.Minute))
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the delivered row")
	n, err = s.PurgeDeliveries(ctx, t0.Add(100*time.Hour))
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the abandoned row; the pending one stays")
	left, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, left, 1)
	require.Equal(t, rows[2].JTI, left[0].JTI)
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	require.True(t, slices.ContainsFunc(events, func(e session.AuditEvent) bool { return e.Kind == session.AuditLogoutDelivered }),
		"the audit keeps the record")
}

// testOutboxClaimRace: workers (at several processes) claiming at once
// each take rows no other worker holds, and between them every due row,
// without waiting for one another's claims to end.
func testOutboxClaimRace(t *testing.T, s Store) {
	const sessions, workers = 10, 4 // two rows a session: 20 rows, 5 a worker
	for range sessions {
		a := newSession(t, s, "u1", t0.Add(time.Hour))
		endApps(t, s, a, t0, session.ReasonLogout, join(t, s, a, "a", time.Hour), join(t, s, a, "b", time.Hour))
	}
	got := make([][]session.OutboxEntry, workers)
	errs := make([]error, workers)
	race(workers, func(i int) {
		got[i], errs[i] = s.ClaimDeliveries(context.Background(), session.DeliveryClaim{Worker: "w" + string(rune('0'+i)),
			Now: t0, Until: t0.Add(time.Minute), Limit: 2 * sessions / workers})
	})
	seen := map[int64]string{}
	for i, rows := range got {
		require.NoError(t, errs[i])
		require.Len(t, rows, 2*sessions/workers, "worker %d got a full batch", i)
		for _, o := range rows {
			require.NotContains(t, seen, o.ID, "row %d claimed by two workers", o.ID)
			seen[o.ID] = o.ClaimedBy
		}
	}
	require.Len(t, seen, 2*sessions)
}

// testOutboxBatchPair: a batch of ends that names one (client, sid) twice
// queues one pending row, carrying the later notice.
func testOutboxBatchPair(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	mail := join(t, s, a, "mail", time.Hour)
	notice := session.LogoutNotice{ClientID: "mail", URI: "https://mail/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonLogout}
	later := notice
	later.Reason = session.ReasonAdmin
	require.NoError(t, s.EndMany(ctx, []session.End{{At: t0, Reason: session.ReasonLogout, UserID: "u1",
		AppSessions: []session.EndedApp{{ID: mail.ID, ClientID: "mail"}}, Notices: []session.LogoutNotice{notice, later}}}))
	rows, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, rows, 1, "one pending row per (client, sid)")
	require.Equal(t, session.ReasonAdmin, rows[0].Reason, "the later notice wins")
	require.Equal(t, t0, rows[0].NextAttemptAt)
}

func testAuthRequests(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.SaveAuthRequest(ctx, "r1", []byte(`{"a":1}`), t0, t0.Add(10*time.Minute)))
	require.NoError(t, s.SaveAuthRequest(ctx, "r1", []byte(`{"a":2}`), t0, t0.Add(10*time.Minute)))
	data, err := s.AuthRequestData(ctx, "r1", t0)
	require.NoError(t, err)
	require.JSONEq(t, `{"a":2}`, string(data))
	_, err = s.AuthRequestData(ctx, "r1", t0.Add(10*time.Minute))
	require.ErrorIs(t, err, session.ErrNotFound, "expired")
	require.NoError(t, s.SaveAuthCode(ctx, "r1", "hash"))
	_, err = s.AuthRequestData(ctx, "r1", t0)
	require.ErrorIs(t, err, session.ErrNotFound, "a request with a code is no longer pending")
	require.ErrorIs(t, s.SaveAuthRequest(ctx, "r1", []byte(`{"a":3}`), t0, t0.Add(10*time.Minute)), session.ErrConflict,
		"a request with a code is frozen")

	data, err = s.AuthRequestOfCode(ctx, "hash", t0.Add(time.Minute))
	require.NoError(t, err)
	require.JSONEq(t, `{"a":2}`, string(data), "a code's request can be read before it is redeemed")
	id, data, err := s.AuthRequestByCode(ctx, "hash", t0.Add(time.Minute))
	require.NoError(t, err, "reading it redeemed nothing")
	require.Equal(t, "r1", id)
	require.JSONEq(t, `{"a":2}`, string(data))
	id, data, err = s.AuthRequestByCode(ctx, "hash", t0.Add(2*time.Minute))
	require.ErrorIs(t, err, session.ErrCodeReused, "a code works once; a replay is recognised")
	require.Equal(t, "r1", id)
	require.JSONEq(t, `{"a":2}`, string(data), "a replay names what the code gave")
	data, err = s.AuthRequestOfCode(ctx, "hash", t0.Add(2*time.Minute))
	require.NoError(t, err)
	require.JSONEq(t, `{"a":2}`, string(data), "and after")
	_, _, err = s.AuthRequestByCode(ctx, "hash", t0.Add(10*time.Minute))
	require.ErrorIs(t, err, session.ErrNotFound, "expired")
	_, err = s.AuthRequestOfCode(ctx, "hash", t0.Add(10*time.Minute))
	require.ErrorIs(t, err, session.ErrNotFound, "expired")
	_, _, err = s.AuthRequestByCode(ctx, "other", t0)
	require.ErrorIs(t, err, session.ErrNotFound)
	_, err = s.AuthRequestOfCode(ctx, "other", t0)
	require.ErrorIs(t, err, session.ErrNotFound)

	require.NoError(t, s.SaveAuthRequest(ctx, "r2", []byte(`{}`), t0, t0.Add(10*time.Minute)))
	require.NoError(t, s.SaveAuthCode(ctx, "r2", "hash2"))
	_, _, err = s.AuthRequestByCode(ctx, "hash2", t0.Add(10*time.Minute))
	require.ErrorIs(t, err, session.ErrNotFound, "an expired code is not redeemed")
}

func testOneCodePerRequest(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.SaveAuthRequest(ctx, "r1", []byte(`{}`), t0, t0.Add(10*time.Minute)))
	errs := make(chan error, 8)
	for i := range 8 {
		go func() { errs <- s.SaveAuthCode(ctx, "r1", "hash"+string(rune('a'+i))) }()
	}
	ok := 0
	for range 8 {
		if err := <-errs; err == nil {
			ok++
		} else {
			require.ErrorIs(t, err, session.ErrConflict)
		}
	}
	require.Equal(t, 1, ok, "exactly one code per request")
	require.ErrorIs(t, s.SaveAuthCode(ctx, "nobody", "h"), session.ErrNotFound)
}

func testPurgeAuthRequests(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.SaveAuthRequest(ctx, "old", []byte(`{}`), t0, t0.Add(10*time.Minute)))
	require.NoError(t, s.SaveAuthRequest(ctx, "redeemed", []byte(`{}`), t0, t0.Add(10*time.Minute)))
	require.NoError(t, s.SaveAuthCode(ctx, "redeemed", "h"))
	_, _, err := s.AuthRequestByCode(ctx, "h", t0)
	require.NoError(t, err)
	require.NoError(t, s.SaveAuthRequest(ctx, "young", []byte(`{}`), t0.Add(5*time.Minute), t0.Add(15*time.Minute)))

	require.NoError(t, s.PurgeAuthRequests(ctx, t0.Add(10*time.Minute)))
	_, err = s.AuthRequestData(ctx, "old", t0)
	require.ErrorIs(t, err, session.ErrNotFound, "purged: not found even at a time it was valid")
	_, _, err = s.AuthRequestByCode(ctx, "h", t0)
	require.ErrorIs(t, err, session.ErrNotFound, "a redeemed request is purged when it expires")
	_, err = s.AuthRequestData(ctx, "young", t0.Add(10*time.Minute))
	require.NoError(t, err, "an unexpired request stays")
}

func testRevoked(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.RevokeToken(ctx, "t1", t0.Add(time.Minute)))
	require.NoError(t, s.RevokeToken(ctx, "t1", t0.Add(time.Minute)))
	require.NoError(t, s.RevokeToken(ctx, "t2", t0.Add(time.Hour)))
	ids, err := s.RevokedTokens(ctx, t0)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"t1", "t2"}, ids)
	n, err := s.PurgeRevokedTokens(ctx, t0.Add(time.Minute))
	require.NoError(t, err)
	require.Zero(t, n, "t1 is valid up to its expiry")
	n, err = s.PurgeRevokedTokens(ctx, t0.Add(2*time.Minute))
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "t1 has expired anyway")
	ids, err = s.RevokedTokens(ctx, t0.Add(2*time.Minute))
	require.NoError(t, err)
	require.Equal(t, []string{"t2"}, ids)
	ids, err = s.RevokedTokens(ctx, t0.Add(2*time.Hour))
	require.NoError(t, err)
	require.Empty(t, ids)
}

func testSecretsAndKeys(t *testing.T, s Store) {
	ctx := t.Context()
	a, err := s.Secret(ctx, "k", func() []byte { return []byte("first") })
	require.NoError(t, err)
	b, err := s.Secret(ctx, "k", func() []byte { return []byte("second") })
	require.NoError(t, err)
	require.Equal(t, a, b, "generated once")

	require.NoError(t, s.AddSigningKey(ctx, session.SigningKey{ID: "k1", Algorithm: "RS256", PrivateDER: []byte{1}, CreatedAt: t0}, t0))
	require.NoError(t, s.AddSigningKey(ctx, session.SigningKey{ID: "k2", Algorithm: "ES256", PrivateDER: []byte{2}, CreatedAt: t0.Add(time.Second)}, t0.Add(time.Hour)))
	keys, err := s.SigningKeys(ctx, t0.Add(time.Minute))
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, "k2", keys[0].ID, "the newest signs")
	keys, err = s.SigningKeys(ctx, t0.Add(2*time.Hour))
	require.NoError(t, err)
	require.Len(t, keys, 1, "the old key has left the key set")
}

func testReauthenticate(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	later := t0.Add(3 * time.Minute)
	re := *a
	re.AuthTime, re.AMR, re.LastActiveAt, re.Deadline = later, []string{"pwd", "otp"}, later, later.Add(5*time.Minute)
	require.NoError(t, s.Reauthenticate(ctx, &re))
	got, _, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, later, got.AuthTime)
	require.Equal(t, []string{"pwd", "otp"}, got.AMR)
	require.Equal(t, later, got.LastActiveAt)
	require.Equal(t, later.Add(5*time.Minute), got.Deadline)
	require.Equal(t, t0.Add(time.Hour), got.AbsoluteDeadline, "the absolute deadline stays")
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	require.Equal(t, session.AuditSessionReauthented, events[len(events)-1].Kind)

	require.NoError(t, s.EndSessions(ctx, session.End{At: later, Reason: session.ReasonLogout, AuthSessionID: a.ID}))
	require.ErrorIs(t, s.Reauthenticate(ctx, &re), session.ErrNotFound, "an ended session is not revived")
}

func testSetAppScopes(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "mail", 5*time.Minute)
	require.NoError(t, s.SetAppScopes(ctx, app.ID, []string{"openid", "email"}))
	_, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, []string{"openid", "email"}, apps[0].Scopes)
	require.ErrorIs(t, s.SetAppScopes(ctx, "missing", []string{"openid"}), session.ErrNotFound)
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonLogout, AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "mail"}}}))
	require.ErrorIs(t, s.SetAppScopes(ctx, app.ID, []string{"openid"}), session.ErrNotFound, "ended")
}

func testTighten(t *testing.T, s Store) {
	ctx := t.Context()
	get := func(id string) (*session.AuthSession, []*session.AppSession) {
		t.Helper()
		a, apps, err := s.AuthSession(ctx, id)
		require.NoError(t, err)
		return a, apps
	}
	plain := newSession(t, s, "u1", t0.Add(5*time.Minute))
	banking := newSession(t, s, "u1", t0.Add(5*time.Minute))
	join(t, s, banking, "bank", 5*time.Minute)
	mailing := newSession(t, s, "u1", t0.Add(5*time.Minute))
	join(t, s, mailing, "mail", 5*time.Minute)
	watching := newSession(t, s, "u1", t0.Add(5*time.Minute))
	video := &session.AppSession{ID: watching.ID + ".video", AuthSessionID: watching.ID, ClientID: "video", IdleExempt: true, JoinedAt: t0, LastActiveAt: t0}
	require.NoError(t, s.JoinApp(ctx, video, session.ActivityUpdate{AuthSessionID: watching.ID, LastActiveAt: t0, IdleLimit: 5 * time.Minute,
		Deadline: t0.Add(5 * time.Minute)}, "u1"))

	// A looser policy changes nothing.
	loose := session.Limits{IdleTimeout: time.Hour, MaxLifetime: 2 * time.Hour}
	require.NoError(t, s.TightenDeadlines(ctx, loose))
	got, _ := get(plain.ID)
	require.Equal(t, 5*time.Minute, got.IdleLimit)
	require.Equal(t, t0.Add(5*time.Minute), got.Deadline)
	require.Equal(t, t0.Add(time.Hour), got.AbsoluteDeadline)

	strict := session.Limits{IdleTimeout: 4 * time.Minute, MaxLifetime: 30 * time.Minute, Clients: map[string]session.ClientLimits{
		"bank":  {IdleTimeout: time.Minute},
		"mail":  {IdleTimeout: 10 * time.Minute, AppIdleTimeout: 3 * time.Minute},
		"video": {IdleTimeout: 2 * time.Minute, Exempt: true},
	}}
	require.NoError(t, s.TightenDeadlines(ctx, strict))
	got, _ = get(plain.ID)
	require.Equal(t, 4*time.Minute, got.IdleLimit)
	require.Equal(t, t0.Add(4*time.Minute), got.Deadline)
	require.Equal(t, t0.Add(30*time.Minute), got.AbsoluteDeadline)
	got, _ = get(banking.ID)
	require.Equal(t, time.Minute, got.IdleLimit, "the stricter app pulls the session down")
	require.Equal(t, t0.Add(time.Minute), got.Deadline)
	got, apps := get(mailing.ID)
	require.Equal(t, 4*time.Minute, got.IdleLimit)
	require.Equal(t, t0.Add(3*time.Minute), apps[0].Deadline, "app_idle_timeout gives the app a deadline of its own")
	got, apps = get(watching.ID)
	require.Equal(t, 4*time.Minute, got.IdleLimit, "an exempt app does not pull the session down")
	require.Equal(t, t0.Add(2*time.Minute), apps[0].Deadline)

	// The same policy again is recorded as applied and skips the scan.
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: plain.ID, LastActiveAt: t0, IdleLimit: 5 * time.Minute,
		Deadline: t0.Add(5 * time.Minute)}}))
	require.NoError(t, s.TightenDeadlines(ctx, strict))
	got, _ = get(plain.ID)
	require.Equal(t, 5*time.Minute, got.IdleLimit, "unchanged policy: no scan")
	strict.IdleTimeout = 3 * time.Minute
	require.NoError(t, s.TightenDeadlines(ctx, strict))
	got, _ = get(plain.ID)
	require.Equal(t, 3*time.Minute, got.IdleLimit)
}

func testEndMany(t *testing.T, s Store) {
	ctx := t.Context()
	a, b := newSession(t, s, "u1", t0.Add(time.Minute)), newSession(t, s, "u2", t0.Add(time.Minute))
	mail := join(t, s, a, "mail", 5*time.Minute)
	video := join(t, s, b, "video", 5*time.Minute)
	require.NoError(t, s.EndMany(ctx, nil))
	require.NoError(t, s.EndMany(ctx, []session.End{
		{At: t0.Add(time.Minute), Reason: session.ReasonIdleTimeout, Initiator: "system", UserID: "u1", AuthSessionID: a.ID, IdleLimit: 2 * time.Minute,
			AppSessions: []session.EndedApp{{ID: mail.ID, ClientID: "mail"}}},
		{At: t0.Add(time.Minute), Reason: session.ReasonIdleTimeout, Initiator: "system", UserID: "u2", AuthSessionID: b.ID},
	}))
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, session.ReasonIdleTimeout, got.EndReason)
	require.Equal(t, t0.Add(time.Minute), got.EndedAt)
	require.Equal(t, 2*time.Minute, got.IdleLimit, "the limit in force at the end is recorded")
	require.Equal(t, session.ReasonIdleTimeout, apps[0].EndReason)
	got, apps, err = s.AuthSession(ctx, b.ID)
	require.NoError(t, err)
	require.False(t, got.Live())
	require.Equal(t, 5*time.Minute, got.IdleLimit, "no limit given: the stored one stays")
	require.True(t, apps[0].Live(), "an app left out of the end (exempt) outlives its session")

	// The surviving app ends on its own later: an app_end event in the
	// session's trail, and its logout.
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(time.Hour), Reason: session.ReasonMaxLifetime, Initiator: "system", UserID: "u2",
		AuthSessionID: b.ID, AppSessions: []session.EndedApp{{ID: video.ID, ClientID: "video"}},
		Notices: []session.LogoutNotice{{ClientID: "video", URI: "https://video/bc", SID: b.ID, Subject: "u2", Reason: session.ReasonMaxLifetime}}}))
	got, apps, err = s.AuthSession(ctx, b.ID)
	require.NoError(t, err)
	require.Equal(t, session.ReasonIdleTimeout, got.EndReason, "the session's first reason stands")
	require.Equal(t, session.ReasonMaxLifetime, apps[0].EndReason)
	events, err := s.Audit(ctx, session.AuditFilter{SID: b.ID})
	require.NoError(t, err)
	last := events[len(events)-1]
	require.Equal(t, session.AuditAppEnd, last.Kind)
	require.Equal(t, "apps=video", last.Detail)
	rows, err := s.Deliveries(ctx, b.ID)
	require.NoError(t, err)
	require.Len(t, rows, 1)

	// An app ending alone is audited under its session's id.
	c := newSession(t, s, "u3", t0.Add(time.Hour))
	bank := join(t, s, c, "bank", 5*time.Minute)
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonAppIdleTimeout, Initiator: "system", UserID: "u3",
		AppSessions: []session.EndedApp{{ID: bank.ID, ClientID: "bank"}}}))
	events, err = s.Audit(ctx, session.AuditFilter{SID: c.ID})
	require.NoError(t, err)
	last = events[len(events)-1]
	require.Equal(t, session.AuditAppEnd, last.Kind)
	require.Equal(t, "bank", last.ClientID)
	require.Equal(t, string(session.ReasonAppIdleTimeout), last.Reason)
	got, _, err = s.AuthSession(ctx, c.ID)
	require.NoError(t, err)
	require.True(t, got.Live(), "the authentication session goes on")
}

func testSessionsOfUser(t *testing.T, s Store) {
	ctx := t.Context()
	older := newSession(t, s, "u1", t0.Add(time.Hour))
	newer := &session.AuthSession{ID: session.NewID(), UserID: "u1", AuthTime: t0.Add(time.Minute), LastActiveAt: t0.Add(time.Minute),
		IdleLimit: 5 * time.Minute, AbsoluteDeadline: t0.Add(time.Hour), Deadline: t0.Add(6 * time.Minute)}
	require.NoError(t, s.CreateAuthSession(ctx, newer))
	gone := newSession(t, s, "u1", t0.Add(time.Hour))
	exempt := newSession(t, s, "u1", t0.Add(time.Hour))
	video := join(t, s, exempt, "video", time.Hour)
	newSession(t, s, "u2", t0.Add(time.Hour))
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonLogout, AuthSessionID: gone.ID}))
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonIdleTimeout, AuthSessionID: exempt.ID}))

	list, apps, err := s.SessionsOfUser(ctx, "u1", false)
	require.NoError(t, err)
	var ids []string
	for _, a := range list {
		ids = append(ids, a.ID)
	}
	require.Equal(t, newer.ID, ids[0], "newest first")
	require.ElementsMatch(t, []string{newer.ID, older.ID, exempt.ID}, ids, "live sessions, and the ended one an exempt app outlives")
	require.Equal(t, video.ID, apps[exempt.ID][0].ID)
	list, _, err = s.SessionsOfUser(ctx, "u1", true)
	require.NoError(t, err)
	require.Len(t, list, 4)
	list, _, err = s.SessionsOfUser(ctx, "nobody", true)
	require.NoError(t, err)
	require.Empty(t, list)
}

func testAudit(t *testing.T, s Store) {
	ctx := t.Context()
	for i, ev := range []session.AuditEvent{
		{At: t0.Add(2 * time.Second), Kind: session.AuditLoginFailed, UserID: "u1", Detail: "second"},
		{At: t0.Add(time.Second), Kind: session.AuditLoginFailed, UserID: "u1", Initiator: "203.0.113.9", Detail: "first"},
		{At: t0.Add(3 * time.Second), Kind: session.AuditLoginFailed, UserID: "u2", SID: "s2", ClientID: "mail", Reason: "r", Detail: "third"},
	} {
		require.NoError(t, s.AddAudit(ctx, ev), i)
	}
	events, err := s.Audit(ctx, session.AuditFilter{UserID: "u1"})
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, "first", events[0].Detail, "oldest first")
	require.Equal(t, "203.0.113.9", events[0].Initiator)
	require.Equal(t, t0.Add(time.Second), events[0].At)
	require.NotZero(t, events[0].ID)
	events, err = s.Audit(ctx, session.AuditFilter{SID: "s2"})
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, session.AuditEvent{ID: events[0].ID, At: t0.Add(3 * time.Second), Kind: session.AuditLoginFailed, UserID: "u2", SID: "s2",
		ClientID: "mail", Reason: "r", Detail: "third"}, events[0])
	events, err = s.Audit(ctx, session.AuditFilter{Limit: 2})
	require.NoError(t, err)
	require.Len(t, events, 2)
	events, err = s.Audit(ctx, session.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, events, 3)
}

// race runs fn from n goroutines released together.
func race(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			fn(i)
		})
	}
	close(start)
	wg.Wait()
}

func testCodeRace(t *testing.T, s Store) {
	ctx := t.Context()
	require.NoError(t, s.SaveAuthRequest(ctx, "r1", []byte(`{}`), t0, t0.Add(time.Minute)))
	require.NoError(t, s.SaveAuthCode(ctx, "r1", "code-hash"))
	errs := make([]error, 8)
	race(len(errs), func(i int) { _, _, errs[i] = s.AuthRequestByCode(ctx, "code-hash", t0) })
	won := 0
	for _, err := range errs {
		if err == nil {
			won++
			continue
		}
		require.ErrorIs(t, err, session.ErrCodeReused, "every other exchange is a replay")
	}
	require.Equal(t, 1, won, "exactly one exchange redeems the code")
}

func testEndRace(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Minute))
	mail := join(t, s, a, "mail", 5*time.Minute)
	errs := make([]error, 6)
	race(len(errs), func(i int) {
		reason := []session.Reason{session.ReasonLogout, session.ReasonAdmin, session.ReasonIdleTimeout}[i%3]
		errs[i] = s.EndSessions(ctx, session.End{At: t0, Reason: reason, UserID: "u1", AuthSessionID: a.ID,
			AppSessions: []session.EndedApp{{ID: mail.ID, ClientID: "mail"}},
			Notices:     []session.LogoutNotice{{ClientID: "mail", URI: "https://mail/bc", SID: a.ID, Subject: "u1", Reason: reason}}})
	})
	for _, err := range errs {
		require.NoError(t, err)
	}
	events, err := s.Audit(ctx, session.AuditFilter{SID: a.ID})
	require.NoError(t, err)
	ends := 0
	for _, e := range events {
		if e.Kind == session.AuditSessionEnd || e.Kind == session.AuditAppEnd {
			ends++
		}
	}
	require.Equal(t, 1, ends, "one end is recorded")
	rows, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, rows, 1, "one logout is queued")
	got, _, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, got.EndReason, rows[0].Reason, "the logout tells the reason that won")
}

// testHostileKeys: keys and text only an attacker sends (NUL, bytes that
// are not UTF-8) find nothing and are recorded, never an internal error.
func testHostileKeys(t *testing.T, s Store) {
	ctx := t.Context()
	for _, k := range []string{"a\x00b", "\xff\xfe", "\x00"} {
		_, err := s.UserByUsername(ctx, k)
		require.ErrorIs(t, err, session.ErrNotFound, "%q", k)
		_, err = s.UserByID(ctx, k)
		require.ErrorIs(t, err, session.ErrNotFound, "%q", k)
		_, _, err = s.AuthSession(ctx, k)
		require.ErrorIs(t, err, session.ErrNotFound, "%q", k)
		many, _, err := s.AuthSessions(ctx, []string{k})
		require.NoError(t, err)
		require.Empty(t, many)
		_, err = s.AuthRequestData(ctx, k, t0)
		require.ErrorIs(t, err, session.ErrNotFound, "%q", k)
		require.ErrorIs(t, s.SaveAuthCode(ctx, k, "h"), session.ErrNotFound, "%q", k)
		_, _, err = s.AuthRequestByCode(ctx, k, t0)
		require.ErrorIs(t, err, session.ErrNotFound, "%q", k)
		require.ErrorIs(t, s.SetPassword(ctx, k, "h"), session.ErrNotFound, "%q", k)
		list, _, err := s.SessionsOfUser(ctx, k, true)
		require.NoError(t, err)
		require.Empty(t, list)
		_, err = s.Audit(ctx, session.AuditFilter{UserID: k, SID: k})
		require.NoError(t, err)
		_, err = s.Deliveries(ctx, k)
		require.NoError(t, err)
	}
	require.NoError(t, s.AddAudit(ctx, session.AuditEvent{At: t0, Kind: session.AuditLoginFailed, UserID: "eve\x00\xff", Detail: "x\x00y\u202e"}))
	events, err := s.Audit(ctx, session.AuditFilter{})
	require.NoError(t, err)
	require.Len(t, events, 1, "a failed sign-in with any username is recorded")
	require.Contains(t, events[0].Detail, "x")

	a := newSession(t, s, "u1", t0.Add(time.Hour))
	app := &session.AppSession{ID: a.ID + ".mail", AuthSessionID: a.ID, ClientID: "mail", Scopes: []string{"openid", "x\x00\xff"}, JoinedAt: t0, LastActiveAt: t0}
	require.NoError(t, s.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: t0, IdleLimit: time.Minute, Deadline: t0.Add(time.Minute)}, "u1"))
	require.NoError(t, s.SetAppScopes(ctx, app.ID, []string{"\x00"}))
}

var loginPolicy = session.LoginPolicy{MaxFailures: 3, LockoutBase: time.Second, LockoutMax: time.Minute}

func reserve(t *testing.T, s Store, at time.Time, keys ...string) (session.LoginAttempt, time.Duration) {
	t.Helper()
	a, wait, err := s.ReserveLoginAttempt(t.Context(), keys, at, loginPolicy)
	require.NoError(t, err)
	return a, wait
}

func testLoginReserve(t *testing.T, s Store) {
	for i := range 3 {
		a, wait := reserve(t, s, t0, "u:alice", "a:1")
		require.Zero(t, wait, "attempt %d is free", i+1)
		require.Equal(t, []string{"u:alice", "a:1"}, a.Keys)
	}
	_, wait := reserve(t, s, t0, "u:alice", "a:2")
	require.Equal(t, time.Second, wait, "the third attempt locked the username")
	a, wait := reserve(t, s, t0, "u:bob", "a:2")
	require.Zero(t, wait, "a refused attempt counted nothing on its other keys")
	require.Equal(t, []time.Time{{}, {}}, a.Locks)
	_, wait = reserve(t, s, t0.Add(time.Second), "u:alice")
	require.Zero(t, wait, "the lock is over")
	_, wait = reserve(t, s, t0.Add(time.Second), "u:alice")
	require.Equal(t, 2*time.Second, wait, "and the next one doubled")
	_, wait = reserve(t, s, t0.Add(10*time.Minute), "u:alice")
	require.Zero(t, wait, "counts older than lockout_max are forgotten")
	_, wait = reserve(t, s, t0.Add(10*time.Minute), "u:alice")
	require.Zero(t, wait, "from zero again")
}

func testLoginReserveRace(t *testing.T, s Store) {
	const n = 20
	var wg sync.WaitGroup
	var passed atomic.Int32
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, wait, err := s.ReserveLoginAttempt(context.Background(), []string{"u:carol"}, t0, loginPolicy)
			if err == nil && wait == 0 {
				passed.Add(1)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, int32(loginPolicy.MaxFailures), passed.Load(), "exactly max_failures of %d simultaneous attempts pass", n)
}

func testLoginRefund(t *testing.T, s Store) {
	ctx := t.Context()
	reserve(t, s, t0, "a:1")
	reserve(t, s, t0, "a:1")
	last, _ := reserve(t, s, t0, "a:1")
	require.Equal(t, []time.Time{t0.Add(time.Second)}, last.Locks)
	require.NoError(t, s.RefundLoginAttempt(ctx, last))
	_, wait := reserve(t, s, t0, "a:1")
	require.Zero(t, wait, "the refunded attempt's lock is lifted and its count given back")

	// A lock set by a later attempt stays when an earlier one is refunded.
	first, _ := reserve(t, s, t0, "a:9")
	reserve(t, s, t0, "a:9")
	reserve(t, s, t0, "a:9")
	require.NoError(t, s.RefundLoginAttempt(ctx, first))
	_, wait = reserve(t, s, t0, "a:9")
	require.Equal(t, time.Second, wait)
}

func testLoginForgetPurge(t *testing.T, s Store) {
	ctx := t.Context()
	for range 3 {
		reserve(t, s, t0, "u:dave", "a:3")
	}
	require.NoError(t, s.ForgetLoginFailures(ctx, []string{"u:dave"}))
	_, wait := reserve(t, s, t0, "u:dave")
	require.Zero(t, wait, "forgotten")
	_, wait = reserve(t, s, t0, "a:3")
	require.Equal(t, time.Second, wait, "other keys keep their counts")

	require.NoError(t, s.PurgeLoginFailures(ctx, t0.Add(30*time.Second), loginPolicy))
	_, wait = reserve(t, s, t0.Add(30*time.Second), "a:3", "u:erin")
	require.Zero(t, wait)
	_, wait = reserve(t, s, t0.Add(30*time.Second), "a:3")
	require.Equal(t, 2*time.Second, wait, "not purged before lockout_max: its count went on")
	require.NoError(t, s.PurgeLoginFailures(ctx, t0.Add(2*time.Minute), loginPolicy))
	_, wait = reserve(t, s, t0.Add(2*time.Minute), "a:3")
	require.Zero(t, wait)
	_, wait = reserve(t, s, t0.Add(2*time.Minute), "a:3")
	require.Zero(t, wait, "purged: counting from zero")
}

// testLoginReserveOrder: attempts naming the same keys in opposite orders,
// at once, all complete (no deadlock, no error), and together pass the
// limit exactly max_failures times.
func testLoginReserveOrder(t *testing.T, s Store) {
	const n = 20
	errs := make([]error, n)
	waits := make([]time.Duration, n)
	race(n, func(i int) {
		keys := []string{"u:frank", "a:7"}
		if i%2 == 1 {
			keys = []string{"a:7", "u:frank"}
		}
		_, waits[i], errs[i] = s.ReserveLoginAttempt(context.Background(), keys, t0, loginPolicy)
	})
	passed := 0
	for i := range n {
		require.NoError(t, errs[i])
		if waits[i] == 0 {
			passed++
		}
	}
	require.Equal(t, loginPolicy.MaxFailures, passed)
}

func changedSIDs(t *testing.T, s Store, after int64) ([]string, int64) {
	t.Helper()
	changes, err := s.SessionChanges(t.Context(), after, 100)
	require.NoError(t, err)
	var sids []string
	last := after
	for _, c := range changes {
		require.Greater(t, c.ID, last, "ids increase")
		sids, last = append(sids, c.SID), c.ID
	}
	return sids, last
}

func testChangeFeed(t *testing.T, s Store) {
	ctx := t.Context()
	start, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	sids, cur := changedSIDs(t, s, start)
	require.Empty(t, sids, "a new session is nobody else's business yet")

	app := join(t, s, a, "bank", 2*time.Minute)
	re := *a
	re.AuthTime, re.LastActiveAt, re.Deadline = t0.Add(time.Minute), t0.Add(time.Minute), t0.Add(3*time.Minute)
	require.NoError(t, s.Reauthenticate(ctx, &re))
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(2 * time.Minute), Reason: session.ReasonLogout, Initiator: "bank",
		UserID: "u1", AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "bank"}}}))
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(2 * time.Minute), Reason: session.ReasonAdmin, Initiator: "admin",
		UserID: "u1", AuthSessionID: a.ID}))
	sids, last := changedSIDs(t, s, cur)
	require.Equal(t, []string{a.ID, a.ID, a.ID, a.ID}, sids, "join, reauthentication, app end, session end")
	got, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	require.Equal(t, last, got)

	// An end that changes nothing (already ended) writes no row.
	require.NoError(t, s.EndSessions(ctx, session.End{At: t0.Add(3 * time.Minute), Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: a.ID}))
	sids, _ = changedSIDs(t, s, last)
	require.Empty(t, sids)

	require.NoError(t, s.PurgeSessionChanges(ctx, t0.Add(2*time.Minute)))
	sids, _ = changedSIDs(t, s, start)
	require.Equal(t, []string{a.ID, a.ID}, sids, "rows before the cut are gone")
}

// testRevocationFeed: a revoked access token is named on the change feed
// once, however often it is revoked, so that every replica refuses it.
func testRevocationFeed(t *testing.T, s Store) {
	ctx := t.Context()
	start, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	require.NoError(t, s.RevokeToken(ctx, "t1", t0.Add(time.Minute)))
	require.NoError(t, s.RevokeToken(ctx, "t1", t0.Add(time.Minute)))
	require.NoError(t, s.RevokeToken(ctx, "t2", t0.Add(time.Hour)))
	changes, err := s.SessionChanges(ctx, start, 100)
	require.NoError(t, err)
	var revoked []string
	for _, c := range changes {
		require.Empty(t, c.SID, "a revocation names no session to reload")
		revoked = append(revoked, c.TokenID)
	}
	require.Equal(t, []string{"t1", "t2"}, revoked)

	require.NoError(t, s.PurgeSessionChanges(ctx, t0.Add(30*time.Minute)))
	changes, err = s.SessionChanges(ctx, start, 100)
	require.NoError(t, err)
	require.Len(t, changes, 1, "kept while the token could be presented: t2 expires later")
	require.Equal(t, "t2", changes[0].TokenID)
}

// testPurgeBatches purges more rows than one purge statement deletes (a
// thousand): the purge goes on until every row is gone, in both the
// revocations and the change feed.
func testPurgeBatches(t *testing.T, s Store) {
	ctx := t.Context()
	const n = 2001
	for i := range n {
		require.NoError(t, s.RevokeToken(ctx, fmt.Sprintf("t%d", i), t0))
	}
	purged, err := s.PurgeRevokedTokens(ctx, t0.Add(time.Millisecond))
	require.NoError(t, err)
	require.EqualValues(t, n, purged)
	require.NoError(t, s.PurgeSessionChanges(ctx, t0.Add(time.Millisecond)))
	changes, err := s.SessionChanges(ctx, 0, 3*n)
	require.NoError(t, err)
	require.Empty(t, changes)
}

func testConditionalEnd(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "bank", 5*time.Minute)
	// Another replica wrote activity: the stored deadline moved past the sweep.
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: t0.Add(time.Minute),
		IdleLimit: 5 * time.Minute, Deadline: t0.Add(6 * time.Minute)}}))
	end := session.End{At: t0.Add(5 * time.Minute), Reason: session.ReasonIdleTimeout, Initiator: "system", UserID: "u1",
		AuthSessionID: a.ID, AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "bank"}},
		Notices: []session.LogoutNotice{{ClientID: "bank", URI: "https://bank.example/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonIdleTimeout}},
		IfDue:   t0.Add(5 * time.Minute)}
	require.NoError(t, s.EndMany(ctx, []session.End{end}))
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.True(t, got.Live(), "the newer activity wins")
	require.True(t, apps[0].Live())
	require.Zero(t, countEvents(t, s, a.ID, session.AuditSessionEnd), "no end on record for an end that did not happen")

	end.At, end.IfDue = t0.Add(6*time.Minute), t0.Add(6*time.Minute)
	require.NoError(t, s.EndMany(ctx, []session.End{end, end}), "the same end twice in one batch")
	got, apps, err = s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.False(t, got.Live())
	require.False(t, apps[0].Live())
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditSessionEnd), "one end on record, however often it is tried")
}

func testLease(t *testing.T, s Store) {
	ctx := t.Context()
	for _, step := range []struct {
		holder  string
		at      time.Duration
		release bool // else acquire, expecting want
		want    bool
		why     string
	}{
		{"a", 0, false, true, "free: a takes it until 3s"},
		{"b", time.Second, false, false, "held by a"},
		{"a", 2 * time.Second, false, true, "a renews until 5s"},
		{"b", 4 * time.Second, false, false, "renewed"},
		{"b", 5 * time.Second, false, true, "expired: b takes over"},
		{"a", 6 * time.Second, true, false, "a releases a lease it does not hold"},
		{"a", 6 * time.Second, false, false, "which changed nothing"},
		{"b", 6 * time.Second, true, false, "b releases it"},
		{"a", 6 * time.Second, false, true, "free at once"},
	} {
		if step.release {
			require.NoError(t, s.ReleaseLease(ctx, "sweeper", step.holder), step.why)
			continue
		}
		ok, err := s.AcquireLease(ctx, "sweeper", step.holder, t0.Add(step.at), 3*time.Second)
		require.NoError(t, err)
		require.Equal(t, step.want, ok, step.why)
	}
}

func testRefreshCAS(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	app := join(t, s, a, "bank", 5*time.Minute)
	require.NoError(t, s.AddRefreshChain(ctx, app.ID, "c1", 1, t0))
	ok, err := s.RotateRefreshChain(ctx, "c1", 1)
	require.NoError(t, err)
	require.True(t, ok)
	ok, err = s.RotateRefreshChain(ctx, "c1", 1)
	require.NoError(t, err)
	require.False(t, ok, "generation 1 was rotated already")
	gen, err := s.RefreshGeneration(ctx, "c1")
	require.NoError(t, err)
	require.EqualValues(t, 2, gen)
	_, err = s.RefreshGeneration(ctx, "nope")
	require.ErrorIs(t, err, session.ErrNotFound)
}

// testOlderView: a replica whose memory lags another's writes an older
// view; the stored deadline never moves before the activity already
// stored, while a stricter limit still applies.
func testOlderView(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(5*time.Minute))
	flush := func(last time.Duration, limit time.Duration) {
		require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: t0.Add(last),
			IdleLimit: limit, Deadline: t0.Add(last + limit)}}))
	}
	deadline := func() time.Time {
		got, _, err := s.AuthSession(ctx, a.ID)
		require.NoError(t, err)
		return got.Deadline
	}
	flush(3*time.Minute, 5*time.Minute)
	require.Equal(t, t0.Add(8*time.Minute), deadline())
	flush(time.Minute, 5*time.Minute)
	require.Equal(t, t0.Add(8*time.Minute), deadline(), "the older view keeps the stored activity's deadline")
	flush(time.Minute, 2*time.Minute)
	require.Equal(t, t0.Add(5*time.Minute), deadline(), "a stricter limit counts from the stored activity")
}

// testConditionalAppEnd: a sweeper's end of an application session alone
// happens only if that session's own deadline is still due.
func testConditionalAppEnd(t *testing.T, s Store) {
	ctx := t.Context()
	a := newSession(t, s, "u1", t0.Add(time.Hour))
	app := join(t, s, a, "bank", time.Hour)
	start, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	require.NoError(t, s.FlushActivity(ctx, []session.ActivityUpdate{{AuthSessionID: a.ID, LastActiveAt: t0.Add(time.Minute),
		IdleLimit: time.Hour, Deadline: t0.Add(time.Hour),
		Apps: []session.AppActivity{{ID: app.ID, LastActiveAt: t0.Add(time.Minute), Deadline: t0.Add(3 * time.Minute)}}}}))
	end := session.End{At: t0.Add(2 * time.Minute), Reason: session.ReasonAppIdleTimeout, Initiator: "system", UserID: "u1",
		AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "bank"}},
		Notices:     []session.LogoutNotice{{ClientID: "bank", URI: "https://bank.example/bc", SID: a.ID, Subject: "u1", Reason: session.ReasonAppIdleTimeout}},
		IfDue:       t0.Add(2 * time.Minute)}
	require.NoError(t, s.EndMany(ctx, []session.End{end}))
	_, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.True(t, apps[0].Live(), "its deadline moved past the sweep")
	sids, _ := changedSIDs(t, s, start)
	require.Empty(t, sids)
	require.Zero(t, countEvents(t, s, a.ID, session.AuditAppEnd))

	end.At, end.IfDue = t0.Add(3*time.Minute), t0.Add(3*time.Minute)
	require.NoError(t, s.EndMany(ctx, []session.End{end}))
	_, apps, err = s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.False(t, apps[0].Live())
	sids, _ = changedSIDs(t, s, start)
	require.Equal(t, []string{a.ID}, sids)
	require.Equal(t, 1, countEvents(t, s, a.ID, session.AuditAppEnd))
	out, err := s.Deliveries(ctx, a.ID)
	require.NoError(t, err)
	require.Len(t, out, 1)
}

// testChangeFeedRace: while many transactions write change rows at once, a
// reader that follows the feed by its last id sees every row: ids become
// visible in the order they were taken.
func testChangeFeedRace(t *testing.T, s Store) {
	ctx := t.Context()
	const n = 40
	sessions := make([]*session.AuthSession, n)
	for i := range sessions {
		sessions[i] = newSession(t, s, "u1", t0.Add(time.Hour))
	}
	cursor, err := s.LastSessionChange(ctx)
	require.NoError(t, err)
	start := cursor
	seen := 0
	follow := func() {
		changes, err := s.SessionChanges(ctx, cursor, 1000)
		require.NoError(t, err)
		if len(changes) > 0 {
			seen, cursor = seen+len(changes), changes[len(changes)-1].ID
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		race(n, func(i int) {
			if i%2 == 0 {
				join(t, s, sessions[i], "bank", time.Hour)
				return
			}
			require.NoError(t, s.EndSessions(ctx, session.End{At: t0, Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: sessions[i].ID}))
		})
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		follow()
	}
	follow()
	all, _ := changedSIDs(t, s, start)
	require.Len(t, all, n)
	require.Equal(t, n, seen, "the follower missed no row")
}
