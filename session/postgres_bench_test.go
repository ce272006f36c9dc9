package session_test

import (
	"context"
	"os"
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

// BenchmarkPostgresDueNothing is the no-op sweep's database work on
// PostgreSQL: both deadline queries when nothing is due, with 100,000 live
// sessions (each with an application session) in the database, 1,000,000
// with IDLEGUARD_BENCH_LARGE=1 (20 s of seeding). The partial indexes make
// it cost O(due), not O(sessions).
//
//	IDLEGUARD_BENCH_LARGE=1 go test -run '^$' -bench PostgresDueNothing ./session
func BenchmarkPostgresDueNothing(b *testing.B) {
	n := 100_000
	if os.Getenv("IDLEGUARD_BENCH_LARGE") == "1" {
		n = 1_000_000
	}
	dsn := pgtest.NewDatabase(b)
	store, err := session.OpenPostgres(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	conn := pgtest.Conn(b, dsn)
	ctx := context.Background()
	now := time.Now()
	nowMS := now.UnixMilli()
	for _, q := range []string{
		`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			SELECT 's' || i, 'u' || (i % 1000), $1::bigint, 'pwd', $1::bigint, 1800000, $1::bigint + 43200000, $1::bigint + 1800000 + i
			FROM generate_series(1, $2::int) AS i`,
		`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, joined_at, last_active_at, deadline)
			SELECT 's' || i || '.app', 's' || i, 'mail', 'openid', $1::bigint, $1::bigint, CASE WHEN i % 10 = 0 THEN $1::bigint + 600000 END
			FROM generate_series(1, $2::int) AS i`,
		`ANALYZE`,
	} {
		args := []any{nowMS, n}
		if q == `ANALYZE` {
			args = nil
		}
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for b.Loop() {
		auth, err := store.DueAuthSessions(ctx, now, 500)
		if err != nil || len(auth) > 0 {
			b.Fatal(err, len(auth))
		}
		apps, err := store.DueAppSessions(ctx, now, 500)
		if err != nil || len(apps) > 0 {
			b.Fatal(err, len(apps))
		}
	}
}
