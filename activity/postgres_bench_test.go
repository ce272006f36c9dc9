package activity_test

// The sweeper's benchmarks on PostgreSQL (a throwaway server from pgtest, or
// IDLEGUARD_TEST_POSTGRES), as a replica of two sees it: the sweeper lease
// and conditional ends included.
//
//	go test -run '^$' -bench 'PostgresSweepEndIdle/100k' -benchtime 1x ./activity
//	go test -run '^$' -bench 'PostgresSweepNothingDue/1M' -benchtime 2000x ./activity  # seeds 1,000,000 sessions

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// replicaBenchTracker is benchTracker as one of two replicas: it takes the
// sweeper lease and ends sessions only while their stored deadline is due.
func replicaBenchTracker(store activity.Store) *activity.Tracker {
	cfg := benchConfig(time.Now)
	cfg.Replicas = 2
	return activity.New(cfg, store)
}

// seedPostgres inserts n sessions in the shape seedSessions gives SQLite:
// one application session of benchClient and one refresh chain each; idle
// ones were last active two hours ago, live ones within 25 minutes (one
// application session in ten with a deadline of its own).
func seedPostgres(tb testing.TB, conn *pgx.Conn, n int, now time.Time, idle bool) {
	tb.Helper()
	ctx := context.Background()
	nowMS := now.UnixMilli()
	lastActive := fmt.Sprintf("(%d - (i * 7919) %% %d)", nowMS, (25 * time.Minute).Milliseconds())
	if idle {
		lastActive = fmt.Sprintf("(%d - %d - (i * 7919) %% 60000)", nowMS, (2 * time.Hour).Milliseconds())
	}
	hour, limit := time.Hour.Milliseconds(), benchAppIdle.Milliseconds()
	start := time.Now()
	for _, q := range []string{
		fmt.Sprintf(`CREATE TEMP TABLE seeded AS SELECT i, 's' || i || '-' || md5(random()::text) AS sid, %s::bigint AS la
			FROM generate_series(1::bigint, %d::bigint) AS i`, lastActive, n),
		fmt.Sprintf(`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			SELECT sid, 'seed-user-' || i, la - %[1]d, 'pwd', la, %[2]d, la - %[1]d + %[3]d, la + %[2]d FROM seeded`,
			hour, limit, benchMaxLifetime.Milliseconds()),
		fmt.Sprintf(`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline)
			SELECT sid || '.app', sid, '%s', 'openid profile email offline_access', false, la - %d, la,
				CASE WHEN %t AND i %% 10 = 0 THEN la + %d END FROM seeded`,
			benchClient, hour, !idle, (3 * time.Hour).Milliseconds()),
		fmt.Sprintf(`INSERT INTO refresh_chains (id, app_session_id, gen, created_at)
			SELECT 'c' || i, sid || '.app', 1 + i %% 7, la - %d FROM seeded`, hour),
		`DROP TABLE seeded`,
		`VACUUM ANALYZE`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			tb.Fatalf("seed: %v\n%s", err, q)
		}
	}
	tb.Logf("seeded %d sessions (idle=%t) in PostgreSQL in %s", n, idle, time.Since(start).Round(time.Millisecond))
}

// openSeededPostgres creates a database with n seeded sessions and opens a
// store on it.
func openSeededPostgres(b *testing.B, n int, now time.Time, idle bool) (*session.Postgres, *pgx.Conn) {
	b.Helper()
	dsn := pgtest.NewDatabase(b)
	store, err := session.OpenPostgres(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	conn := pgtest.Conn(b, dsn)
	seedPostgres(b, conn, n, now, idle)
	return store, conn
}

// BenchmarkPostgresSweepNothingDue is BenchmarkSweepNothingDue on
// PostgreSQL, lease renewal included: one Sweep that finds nothing due.
func BenchmarkPostgresSweepNothingDue(b *testing.B) {
	for _, size := range sweepSizes {
		b.Run(size.name, func(b *testing.B) {
			if size.large && !largeBenchEnabled(size.name) {
				b.Skipf("seeds %d sessions: run with -bench 'PostgresSweepNothingDue/%s' or IDLEGUARD_BENCH_LARGE=1", size.n, size.name)
			}
			store, _ := openSeededPostgres(b, size.n, time.Now(), false)
			tr := replicaBenchTracker(store)
			ctx := context.Background()
			if n, err := tr.Sweep(ctx); err != nil || n != 0 {
				b.Fatalf("warm-up sweep ended %d sessions (want 0): %v", n, err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if n, err := tr.Sweep(ctx); err != nil || n != 0 {
					b.Fatalf("sweep ended %d sessions (want 0): %v", n, err)
				}
			}
		})
	}
}

// BenchmarkPostgresSweepEndIdle is BenchmarkSweepEndIdle on PostgreSQL:
// one sweep ends n idle sessions, each with its application session, an
// audit event and an outbox row. Every iteration seeds a fresh database;
// only Sweep is timed.
func BenchmarkPostgresSweepEndIdle(b *testing.B) {
	for _, size := range sweepSizes {
		b.Run(size.name, func(b *testing.B) {
			if size.large && !largeBenchEnabled(size.name) {
				b.Skipf("seeds %d sessions: run with -bench 'PostgresSweepEndIdle/%s' or IDLEGUARD_BENCH_LARGE=1", size.n, size.name)
			}
			ctx := context.Background()
			var swept, cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				store, conn := openSeededPostgres(b, size.n, time.Now(), true)
				tr := replicaBenchTracker(store)
				b.StartTimer()
				start, cpu0 := time.Now(), processCPU()
				n, err := tr.Sweep(ctx)
				swept += time.Since(start)
				cpu += processCPU() - cpu0
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if n != 2*size.n {
					b.Fatalf("sweep ended %d sessions, want %d", n, 2*size.n)
				}
				checkEndedPostgres(b, conn, size.n)
				b.StartTimer()
			}
			b.ReportMetric(float64(size.n*b.N)/swept.Seconds(), "sessions/s")
			b.ReportMetric(float64(swept.Nanoseconds())/float64(size.n*b.N), "ns/session")
			if cpu > 0 { // the provider's CPU alone: PostgreSQL's is in its own processes
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(size.n*b.N), "provider-cpu-ns/session")
			}
		})
	}
}

// checkEndedPostgres is checkEnded on PostgreSQL.
func checkEndedPostgres(b *testing.B, conn *pgx.Conn, n int) {
	b.Helper()
	for _, q := range []string{
		`SELECT COUNT(*) FROM auth_sessions WHERE ended_at IS NOT NULL AND end_reason = 'idle_timeout'`,
		`SELECT COUNT(*) FROM app_sessions WHERE ended_at IS NOT NULL AND end_reason = 'idle_timeout'`,
		`SELECT COUNT(*) FROM logout_outbox WHERE reason = 'idle_timeout'`,
		`SELECT COUNT(*) FROM audit_events WHERE kind = 'session_end' AND detail LIKE 'apps=%'`,
	} {
		var got int
		if err := conn.QueryRow(context.Background(), q).Scan(&got); err != nil {
			b.Fatal(err)
		}
		if got != n {
			b.Fatalf("%s: got %d, want %d", q, got, n)
		}
	}
}
