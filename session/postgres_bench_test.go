package session_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

// seedBatchPostgres is seedBatch for PostgreSQL: n live sessions with one
// application session each, inserted in one batch, and their Ends.
func seedBatchPostgres(b testing.TB, conn *pgx.Conn, n int, now time.Time) []session.End {
	b.Helper()
	nowMS := now.UnixMilli()
	batch := &pgx.Batch{}
	ends := make([]session.End, n)
	for i := range ends {
		sid := session.NewID()
		app := sid + ".app"
		batch.Queue(`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			VALUES ($1, 'u', $2, 'pwd', $3, 1800000, $4, $5)`, sid, nowMS-3*3600000, nowMS-2*3600000, nowMS+9*3600000, nowMS-3600000)
		batch.Queue(`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, joined_at, last_active_at)
			VALUES ($1, $2, 'mail', 'openid', $3, $4)`, app, sid, nowMS-3*3600000, nowMS-2*3600000)
		ends[i] = session.End{At: now, Reason: session.ReasonIdleTimeout, IdleLimit: 30 * time.Minute, Initiator: "system", UserID: "u",
			AuthSessionID: sid, AppSessions: []session.EndedApp{{ID: app, ClientID: "mail"}},
			Notices: []session.LogoutNotice{{ClientID: "mail", URI: "http://127.0.0.1:1/bc", SID: sid, Subject: "u", Reason: session.ReasonIdleTimeout}}}
	}
	if err := conn.SendBatch(context.Background(), batch).Close(); err != nil {
		b.Fatal(err)
	}
	return ends
}

// BenchmarkPostgresEndBatch is BenchmarkEndBatch on PostgreSQL: 500 idle
// sessions ended by EndMany in one transaction; ns/session is the figure to
// multiply by 100,000.
func BenchmarkPostgresEndBatch(b *testing.B) {
	dsn := pgtest.NewDatabase(b)
	store, err := session.OpenPostgres(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	conn := pgtest.Conn(b, dsn)
	ctx := context.Background()
	var timed time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		ends := seedBatchPostgres(b, conn, endBatch, time.Now())
		b.StartTimer()
		start := time.Now()
		if err := store.EndMany(ctx, ends); err != nil {
			b.Fatal(err)
		}
		timed += time.Since(start)
	}
	b.ReportMetric(float64(timed.Nanoseconds())/float64(b.N*endBatch), "ns/session")
}
