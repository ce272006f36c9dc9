package session_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
	"github.com/idleguard/idleguard/session/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestPostgresStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, _ := openPostgres(t)
		return s
	})
}

// TestPostgresEndSurvivesADeadlock: a replica holds an app session's row
// while this one ends its session (the session's row first, then the
// app's); the other then wants the session's row. PostgreSQL breaks the
// deadlock by aborting the end, which is run again and succeeds.
func TestPostgresEndSurvivesADeadlock(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	admin := pgtest.Conn(t, dsn)
	ctx := t.Context()
	// PostgreSQL checks for a deadlock once, deadlock_timeout after a wait
	// begins: long enough for the other transaction to start waiting too,
	// even on a loaded machine, or only its own one-minute check would see it.
	_, err := admin.Exec(ctx, `ALTER DATABASE `+admin.Config().Database+` SET deadlock_timeout = '1s'`)
	require.NoError(t, err)
	s, err := session.OpenPostgres(ctx, dsn)
	require.NoError(t, err)
	defer s.Close()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := &session.AuthSession{ID: session.NewID(), UserID: "u1", AuthTime: now, LastActiveAt: now, IdleLimit: time.Minute,
		AbsoluteDeadline: now.Add(time.Hour), Deadline: now.Add(time.Minute)}
	require.NoError(t, s.CreateAuthSession(ctx, a))
	app := &session.AppSession{ID: a.ID + ".mail", AuthSessionID: a.ID, ClientID: "mail", JoinedAt: now, LastActiveAt: now}
	require.NoError(t, s.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: now, IdleLimit: time.Minute,
		Deadline: now.Add(time.Minute)}, "u1"))

	other := pgtest.Conn(t, dsn)
	_, err = other.Exec(ctx, `SET deadlock_timeout = '1min'`) // the end's 1s detects the deadlock first
	require.NoError(t, err)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE app_sessions SET scopes = 'openid' WHERE id = $1`, app.ID)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- s.EndSessions(ctx, session.End{At: now, Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: a.ID,
			AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "mail"}}})
	}()
	waitForLock(t, admin, "UPDATE app_sessions") // the end holds the session's row and waits for the app's
	_, err = tx.Exec(ctx, `UPDATE auth_sessions SET amr = 'otp' WHERE id = $1`, a.ID)
	require.NoError(t, err, "the deadlock is broken by aborting the end, not this transaction")
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done, "the aborted end ran again")
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, session.ReasonLogout, got.EndReason)
	require.Equal(t, []string{"otp"}, got.AMR)
	require.False(t, apps[0].Live())
}

// openPostgres opens a store on a fresh database and returns its URL too.
func openPostgres(t *testing.T) (*session.Postgres, string) {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	s, err := session.OpenPostgres(t.Context(), dsn)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s, dsn
}

// waitForLock waits until a statement starting with prefix waits on a lock
// in the database of admin.
func waitForLock(t *testing.T, admin *pgx.Conn, prefix string) {
	t.Helper()
	require.Eventually(t, func() bool {
		var waiting int
		err := admin.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE $1`, prefix+"%").Scan(&waiting)
		return err == nil && waiting == 1
	}, 10*time.Second, 5*time.Millisecond)
}

// TestPostgresClaimSkipsRowsAnotherReplicaHolds: while another replica's
// claim holds a row, a claim here takes the other due rows at once instead
// of waiting for it, and the held row stays for whoever holds it.
func TestPostgresClaimSkipsRowsAnotherReplicaHolds(t *testing.T) {
	s, dsn := openPostgres(t)
	ctx := t.Context()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	a := &session.AuthSession{ID: session.NewID(), UserID: "u1", AuthTime: now, LastActiveAt: now, IdleLimit: time.Minute,
		AbsoluteDeadline: now.Add(time.Hour), Deadline: now.Add(time.Minute)}
	require.NoError(t, s.CreateAuthSession(ctx, a))
	end := session.End{At: now, Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: a.ID}
	for _, client := range []string{"mail", "wiki", "chat"} {
		app := &session.AppSession{ID: a.ID + "." + client, AuthSessionID: a.ID, ClientID: client, JoinedAt: now, LastActiveAt: now}
		require.NoError(t, s.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: now, IdleLimit: time.Minute,
			Deadline: now.Add(time.Minute)}, "u1"))
		end.AppSessions = append(end.AppSessions, session.EndedApp{ID: app.ID, ClientID: client})
		end.Notices = append(end.Notices, session.LogoutNotice{ClientID: client, URI: "https://" + client + "/bc", SID: a.ID, Subject: "u1",
			Reason: session.ReasonLogout})
	}
	require.NoError(t, s.EndSessions(ctx, end))

	other := pgtest.Conn(t, dsn)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	var held int64
	require.NoError(t, tx.QueryRow(ctx, `SELECT id FROM logout_outbox WHERE client_id = 'mail' FOR UPDATE`).Scan(&held))

	quick, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	claim := session.DeliveryClaim{Worker: "here", Now: now, Until: now.Add(time.Minute), Limit: 10}
	rows, err := s.ClaimDeliveries(quick, claim)
	require.NoError(t, err, "the claim does not wait for the row another replica holds")
	require.Len(t, rows, 2)
	for _, o := range rows {
		require.NotEqual(t, held, o.ID)
	}
	require.NoError(t, tx.Rollback(ctx))
	claim.Worker = "later"
	rows, err = s.ClaimDeliveries(ctx, claim)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, held, rows[0].ID, "released, and still unclaimed")
}

// TestPostgresLoginAttemptsLockInKeyOrder: a sign-in attempt locks its keys'
// rows in key order whatever order it names them in, so that it never holds
// one key while waiting for another that a concurrent attempt (at another
// replica) holds before wanting the first. Here another transaction holds
// "a" and, once the attempt for ["b", "a"] waits, asks for "b": it gets it
// at once, where locking in the named order would be a deadlock.
func TestPostgresLoginAttemptsLockInKeyOrder(t *testing.T) {
	s, dsn := openPostgres(t)
	ctx := t.Context()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	policy := session.LoginPolicy{}.WithDefaults()
	_, _, err := s.ReserveLoginAttempt(ctx, []string{"a", "b"}, now, policy) // both rows exist
	require.NoError(t, err)

	other := pgtest.Conn(t, dsn)
	_, err = other.Exec(ctx, `SET deadlock_timeout = '20ms'`) // a deadlock would abort this transaction, not the attempt
	require.NoError(t, err)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `SELECT 1 FROM login_failures WHERE key = 'a' FOR UPDATE`)
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() {
		_, _, err := s.ReserveLoginAttempt(ctx, []string{"b", "a"}, now, policy)
		done <- err
	}()
	waitForLock(t, pgtest.Conn(t, dsn), "SELECT key, failures")
	_, err = tx.Exec(ctx, `SELECT 1 FROM login_failures WHERE key = 'b' FOR UPDATE`)
	require.NoError(t, err, "the waiting attempt holds no key after a")
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done)
}

// TestPostgresChangesNotify: a replica listening for changes hears an end
// another replica commits, hears again after its listening connection is
// killed (it reconnects, and its first receive covers what it missed), and
// its channel closes with the store.
func TestPostgresChangesNotify(t *testing.T) {
	a, dsn := openPostgres(t)
	b, err := session.OpenPostgres(t.Context(), dsn)
	require.NoError(t, err)
	ctx := t.Context()
	changes := b.Changes(ctx)
	receive := func(why string) {
		t.Helper()
		select {
		case _, ok := <-changes:
			require.True(t, ok, why)
		case <-time.After(10 * time.Second):
			t.Fatal("no notification: " + why)
		}
	}
	receive("listening: the first receive covers what came before")
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	end := func() {
		s := &session.AuthSession{ID: session.NewID(), UserID: "u1", AuthTime: now, LastActiveAt: now, IdleLimit: time.Minute,
			AbsoluteDeadline: now.Add(time.Hour), Deadline: now.Add(time.Minute)}
		require.NoError(t, a.CreateAuthSession(ctx, s))
		require.NoError(t, a.EndSessions(ctx, session.End{At: now, Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: s.ID}))
	}
	end()
	receive("an end at the other replica")

	admin := pgtest.Conn(t, dsn)
	listener := func() (pid int) {
		_ = admin.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'
			AND state = 'idle'`).Scan(&pid)
		return pid
	}
	old := listener()
	require.NotZero(t, old)
	_, err = admin.Exec(ctx, `SELECT pg_terminate_backend($1)`, old)
	require.NoError(t, err)
	end() // while b may be reconnecting: lost as a notification, found by the poll the reconnection's receive triggers
	receive("reconnected")
	require.Eventually(t, func() bool { pid := listener(); return pid != 0 && pid != old }, 10*time.Second, 10*time.Millisecond,
		"listening again on a new connection")
	end()
	receive("an end after the reconnection")

	require.NoError(t, b.Close())
	for range changes { // drain a pending receive, then see it closed
	}
}
