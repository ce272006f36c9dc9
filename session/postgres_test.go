package session_test

import (
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
	"github.com/idleguard/idleguard/session/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestPostgresStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := session.OpenPostgres(t.Context(), pgtest.NewDatabase(t))
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// TestPostgresEndSurvivesADeadlock: a replica holds a session's row while
// this one ends that session (app row first, then the session's); the
// other then wants the app row. PostgreSQL breaks the deadlock by aborting
// the end, which is run again and succeeds.
func TestPostgresEndSurvivesADeadlock(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	admin := pgtest.Conn(t, dsn)
	ctx := t.Context()
	_, err := admin.Exec(ctx, `ALTER DATABASE `+admin.Config().Database+` SET deadlock_timeout = '20ms'`)
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
	_, err = other.Exec(ctx, `SET deadlock_timeout = '1min'`) // the end's 20ms detects the deadlock first
	require.NoError(t, err)
	tx, err := other.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `UPDATE auth_sessions SET amr = 'otp' WHERE id = $1`, a.ID)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		done <- s.EndSessions(ctx, session.End{At: now, Reason: session.ReasonLogout, UserID: "u1", AuthSessionID: a.ID,
			AppSessions: []session.EndedApp{{ID: app.ID, ClientID: "mail"}}})
	}()
	require.Eventually(t, func() bool { // the end holds the app row and waits for the session's
		var waiting int
		err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND wait_event_type = 'Lock' AND query LIKE 'UPDATE auth_sessions%'`).Scan(&waiting)
		return err == nil && waiting == 1
	}, 10*time.Second, 5*time.Millisecond)
	_, err = tx.Exec(ctx, `UPDATE app_sessions SET scopes = 'openid' WHERE id = $1`, app.ID)
	require.NoError(t, err, "the deadlock is broken by aborting the end, not this transaction")
	require.NoError(t, tx.Commit(ctx))
	require.NoError(t, <-done, "the aborted end ran again")
	got, apps, err := s.AuthSession(ctx, a.ID)
	require.NoError(t, err)
	require.Equal(t, session.ReasonLogout, got.EndReason)
	require.Equal(t, []string{"otp"}, got.AMR)
	require.False(t, apps[0].Live())
}
