package activity_test

// Benchmarks of the sweeper and the tracker on a real SQLite file.
//
//	go test -run '^$' -bench SweepNothingDue -benchtime 2000x ./activity
//	go test -run '^$' -bench 'SweepNothingDue/(10k|1M)' -benchtime 2000x ./activity  # seeds 1,000,000 sessions (about a minute)
//	go test -run '^$' -bench 'SweepEndIdle/(10k|100k)' -benchtime 1x ./activity
//	go test -run '^$' -bench TrackerMemory -benchtime 1x ./activity
//
// IDLEGUARD_BENCH_PRAGMAS="cache_size=-65536;mmap_size=268435456" runs
// those PRAGMAs on every SQLite connection the benchmarks open (through the
// driver's connection hook), to measure a change of the store's settings
// without editing it.
//
// The 1,000,000-session cases are skipped unless the -bench pattern names
// them ("1M") or IDLEGUARD_BENCH_LARGE=1 is set. Rows are seeded with plain
// SQL in one transaction (INSERT ... SELECT over a recursive CTE), in the
// shape the store writes them, so that seeding a million sessions takes
// about a minute rather than the hours a million sign-ins would.

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"modernc.org/sqlite"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/session"
)

// benchIdle is the idle policy of the seeded sessions: a 1h provider
// ceiling and one app ("mail") with a 30m idle_timeout and a back-channel
// logout URI, so that every end writes one outbox row.
const (
	benchProviderIdle = time.Hour
	benchAppIdle      = 30 * time.Minute
	benchMaxLifetime  = 12 * time.Hour
	benchClient       = "mail"
	benchBackchannel  = "http://127.0.0.1:1/mail/backchannel-logout"
)

// largeBenchEnabled reports whether a benchmark that seeds a million rows
// may run: the -bench pattern names it (contains name) or
// IDLEGUARD_BENCH_LARGE=1.
func largeBenchEnabled(name string) bool {
	if os.Getenv("IDLEGUARD_BENCH_LARGE") == "1" {
		return true
	}
	f := flag.Lookup("test.bench")
	return f != nil && strings.Contains(f.Value.String(), name)
}

var pragmaHook sync.Once

// applyBenchPragmas registers IDLEGUARD_BENCH_PRAGMAS as a connection hook.
func applyBenchPragmas(tb testing.TB) {
	pragmas := os.Getenv("IDLEGUARD_BENCH_PRAGMAS")
	if pragmas == "" {
		return
	}
	pragmaHook.Do(func() {
		sqlite.RegisterConnectionHook(func(conn sqlite.ExecQuerierContext, _ string) error {
			for p := range strings.SplitSeq(pragmas, ";") {
				if p = strings.TrimSpace(p); p != "" {
					if _, err := conn.ExecContext(context.Background(), "PRAGMA "+p, nil); err != nil {
						return fmt.Errorf("PRAGMA %s: %w", p, err)
					}
				}
			}
			return nil
		})
	})
	tb.Logf("every connection runs PRAGMA %s", pragmas)
}

func benchTracker(store activity.Store, now func() time.Time) *activity.Tracker {
	return activity.New(benchConfig(now), store)
}

// benchConfig is the configuration of the benchmarks' tracker: one client,
// benchClient, stricter than the provider.
func benchConfig(now func() time.Time) activity.Config {
	return activity.Config{
		IdleTimeout: benchProviderIdle, MaxLifetime: benchMaxLifetime, SweepInterval: time.Second,
		Now:    now,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Client: func(id string) (activity.ClientPolicy, bool) {
			if id != benchClient {
				return activity.ClientPolicy{}, false
			}
			return activity.ClientPolicy{IdleTimeout: benchAppIdle, Sources: activity.DefaultSources, BackchannelLogoutURI: benchBackchannel}, true
		},
	}
}

// openRaw opens the database file for seeding, outside the store, with
// settings that favour bulk inserts.
func openRaw(tb testing.TB, path string) *sql.DB {
	tb.Helper()
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "synchronous(OFF)", "cache_size(-262144)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db
}

// seedSessions inserts n authentication sessions, each with one live
// application session of benchClient and one refresh chain, in a single
// transaction. live sessions were last active within the last 25 minutes
// (deadlines 5 to 30 minutes ahead of now); idle ones were last active two
// hours ago (deadlines an hour and a half in the past). One live application
// session in ten has a deadline of its own (as clients with
// app_idle_timeout do), so that the application-session deadline index is
// not empty either.
func seedSessions(tb testing.TB, path string, n int, now time.Time, idle bool) {
	tb.Helper()
	ctx := context.Background()
	db := openRaw(tb, path)
	defer db.Close()
	nowMS := now.UnixMilli()
	// last_active_at: spread deterministically over the window (random()
	// must not be used twice for one row).
	lastActive := fmt.Sprintf("(%d - (n * 7919) %% %d)", nowMS, (25 * time.Minute).Milliseconds())
	if idle {
		lastActive = fmt.Sprintf("(%d - %d - (n * 7919) %% 60000)", nowMS, (2 * time.Hour).Milliseconds())
	}
	limit := benchAppIdle.Milliseconds()
	hour := time.Hour.Milliseconds()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	stmts := []string{
		`CREATE TEMP TABLE seeded (n INTEGER PRIMARY KEY, sid TEXT NOT NULL, la INTEGER NOT NULL)`,
		fmt.Sprintf(`WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < %d)
			INSERT INTO temp.seeded (n, sid, la) SELECT n, lower(hex(randomblob(11))), %s FROM seq`, n, lastActive),
		fmt.Sprintf(`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			SELECT sid, 'seed-user-' || n, la - %[1]d, 'pwd', la, %[2]d, la - %[1]d + %[3]d, la + %[2]d FROM temp.seeded`,
			hour, limit, benchMaxLifetime.Milliseconds()),
		fmt.Sprintf(`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline)
			SELECT sid || '.' || lower(hex(randomblob(6))), sid, '%s', 'openid profile email offline_access', 0, la - %d, la,
				CASE WHEN %t AND n %% 10 = 0 THEN la + %d END FROM temp.seeded`,
			benchClient, hour, !idle, (3 * time.Hour).Milliseconds()),
		fmt.Sprintf(`INSERT INTO refresh_chains (id, app_session_id, gen, created_at)
			SELECT lower(hex(randomblob(6))), a.id, 1 + n %% 7, la - %d FROM temp.seeded s JOIN app_sessions a ON a.auth_session_id = s.sid`, hour),
		`DROP TABLE temp.seeded`,
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			_ = tx.Rollback()
			tb.Fatalf("seed: %v\n%s", err, s)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		tb.Fatal(err)
	}
}

// newSeededDB creates a migrated database at dir/name with n sessions.
func newSeededDB(tb testing.TB, dir string, n int, now time.Time, idle bool) string {
	tb.Helper()
	path := filepath.Join(dir, "idleguard.db")
	store, err := session.OpenSQLite(context.Background(), path)
	if err != nil {
		tb.Fatal(err)
	}
	store.Close()
	start := time.Now()
	seedSessions(tb, path, n, now, idle)
	tb.Logf("seeded %d sessions (idle=%t) in %s", n, idle, time.Since(start).Round(time.Millisecond))
	return path
}

var sweepSizes = []struct {
	name  string
	n     int
	large bool
}{
	{"10k", 10_000, false},
	{"100k", 100_000, false},
	{"1M", 1_000_000, true},
}

// BenchmarkSweepNothingDue times one Sweep that finds nothing to end, with
// 10k, 100k and 1M live sessions (each with one application session and a
// refresh chain) in the database. Its cost must not grow with the number of
// sessions: the sweeper reads only the head of the partial deadline indexes.
func BenchmarkSweepNothingDue(b *testing.B) {
	applyBenchPragmas(b)
	defer removeSeeds()
	for _, size := range sweepSizes {
		b.Run(size.name, func(b *testing.B) {
			if size.large && !largeBenchEnabled(size.name) {
				b.Skipf("seeds %d sessions: run with -bench 'SweepNothingDue/%s' or IDLEGUARD_BENCH_LARGE=1", size.n, size.name)
			}
			now := time.Now()
			path := cachedSeed(b, "live", size.n, now)
			store, err := session.OpenSQLite(context.Background(), path)
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			tr := benchTracker(store, time.Now)
			ctx := context.Background()
			if n, err := tr.Sweep(ctx); err != nil || n != 0 {
				b.Fatalf("warm-up sweep ended %d sessions (want 0): %v", n, err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				n, err := tr.Sweep(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if n != 0 {
					b.Fatalf("sweep ended %d sessions; the seeded deadlines should all be ahead", n)
				}
			}
		})
	}
}

// seedCache keeps seeded files across the repeated calls the testing
// package makes of one benchmark function (one per b.N it tries), so that
// a million rows are seeded once per run. The files live in a directory
// removed when the benchmark's parent finishes (see cachedSeed).
var seedCache = map[string]string{}

func cachedSeed(b *testing.B, kind string, n int, now time.Time) string {
	key := fmt.Sprintf("%s/%d", kind, n)
	if p, ok := seedCache[key]; ok {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	dir, err := os.MkdirTemp("", "idleguard-bench-")
	if err != nil {
		b.Fatal(err)
	}
	cleanupAtExit = append(cleanupAtExit, dir)
	p := newSeededDB(b, dir, n, now, kind == "idle")
	seedCache[key] = p
	return p
}

// cleanupAtExit lists seeded directories; TestMain is not ours to define,
// so each benchmark family removes them when it is done.
var cleanupAtExit []string

func removeSeeds() {
	for _, d := range cleanupAtExit {
		os.RemoveAll(d)
	}
	cleanupAtExit = nil
	clear(seedCache)
}

// BenchmarkSweepEndIdle times the sweep that ends n idle sessions at once,
// each with one application session whose client has a back-channel logout
// URI: per session, the authentication and application sessions are marked
// ended (which revokes every token they hold), one audit event (session_end, naming the apps) and one
// outbox row are written. Every iteration works on a fresh copy of a
// seeded file; only Sweep is timed. Reported: sessions/s and ns/session.
func BenchmarkSweepEndIdle(b *testing.B) {
	applyBenchPragmas(b)
	defer removeSeeds()
	for _, size := range sweepSizes {
		b.Run(size.name, func(b *testing.B) {
			if size.large && !largeBenchEnabled(size.name) {
				b.Skipf("seeds %d sessions: run with -bench 'SweepEndIdle/%s' or IDLEGUARD_BENCH_LARGE=1", size.n, size.name)
			}
			now := time.Now()
			template := cachedSeed(b, "idle", size.n, now)
			ctx := context.Background()
			var swept, cpu time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				path := filepath.Join(b.TempDir(), "idleguard.db")
				copyFile(b, template, path)
				store, err := session.OpenSQLite(ctx, path)
				if err != nil {
					b.Fatal(err)
				}
				tr := benchTracker(store, time.Now)
				b.StartTimer()
				start, cpu0 := time.Now(), processCPU()
				n, err := tr.Sweep(ctx)
				swept += time.Since(start)
				cpu += processCPU() - cpu0
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if n != 2*size.n { // each authentication session and its one application session
					b.Fatalf("sweep ended %d sessions, want %d", n, 2*size.n)
				}
				checkEnded(b, store, size.n)
				store.Close()
				os.RemoveAll(filepath.Dir(path))
				b.StartTimer()
			}
			b.ReportMetric(float64(size.n*b.N)/swept.Seconds(), "sessions/s")
			b.ReportMetric(float64(swept.Nanoseconds())/float64(size.n*b.N), "ns/session")
			if cpu > 0 { // CPU time is steadier than wall time on a shared machine
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(size.n*b.N), "cpu-ns/session")
			}
		})
	}
}

// checkEnded verifies what one sweep of n idle sessions must have written.
func checkEnded(b *testing.B, store *session.SQLite, n int) {
	b.Helper()
	r := store.ReaderForTest()
	for _, c := range []struct {
		q    string
		want int
	}{
		{`SELECT COUNT(*) FROM auth_sessions WHERE ended_at IS NOT NULL AND end_reason = 'idle_timeout'`, n},
		{`SELECT COUNT(*) FROM app_sessions WHERE ended_at IS NOT NULL AND end_reason = 'idle_timeout'`, n},
		{`SELECT COUNT(*) FROM logout_outbox WHERE reason = 'idle_timeout'`, n},
		{`SELECT COUNT(*) FROM audit_events WHERE kind = 'session_end' AND detail LIKE 'apps=%'`, n},
	} {
		var got int
		if err := r.QueryRow(c.q).Scan(&got); err != nil {
			b.Fatal(err)
		}
		if got != c.want {
			b.Fatalf("%s: got %d, want %d", c.q, got, c.want)
		}
	}
}

// processCPU is this process's user+system CPU time from /proc/self/stat
// (Linux; 0 elsewhere), in 10ms ticks.
func processCPU() time.Duration {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func copyFile(b *testing.B, from, to string) {
	b.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkTrackerMemory loads 10,000 sessions into the tracker (one Touch
// each, as the first heartbeat or introspection after a restart does) and
// reports the live heap each one holds, to size the provider's memory when
// many sessions are in use at once (clean entries are evicted after 10
// minutes unused). ns/op is the cost of that first, loading Touch.
func BenchmarkTrackerMemory(b *testing.B) {
	applyBenchPragmas(b)
	defer removeSeeds()
	const n = 10_000
	path := cachedSeed(b, "live", n, time.Now())
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		store, err := session.OpenSQLite(ctx, path)
		if err != nil {
			b.Fatal(err)
		}
		var apps []string
		rows, err := store.ReaderForTest().QueryContext(ctx, `SELECT id FROM app_sessions`)
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				b.Fatal(err)
			}
			apps = append(apps, id)
		}
		rows.Close()
		tr := benchTracker(store, time.Now)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		for _, id := range apps {
			if st, err := tr.Touch(ctx, id, activity.Heartbeat, time.Time{}); err != nil || !st.Active {
				b.Fatalf("touch %s: %v (active %t)", id, err, st.Active)
			}
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		runtime.KeepAlive(tr)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(len(apps)), "heap-bytes/session")
		store.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/session")
}
