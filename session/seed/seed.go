// Package seed fills an idleguard database with synthetic live sessions for
// benchmarks and load runs, straight with SQL in one transaction: far faster
// than signing N people in through argon2id, and never used by the provider
// itself.
package seed

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"time"

	_ "modernc.org/sqlite" // the database/sql driver
)

// Options shape the seeded sessions.
type Options struct {
	ClientID         string        // every session has one application session of this client
	Now              time.Time     // the clock the sessions are relative to
	LastActiveWithin time.Duration // last activity is spread over [Now-LastActiveWithin, Now]
	IdleLimit        time.Duration // the sessions' effective idle limit
	MaxLifetime      time.Duration // absolute deadline = auth_time + MaxLifetime
	Note             string        // audit detail, to tell seeded rows apart
}

// Sessions inserts n live authentication sessions into the (migrated)
// database at path: each with one application session, one refresh chain
// and its session_start and app_join audit events, as a sign-in leaves them.
// Deadlines are last activity + IdleLimit, so with LastActiveWithin <
// IdleLimit they are all in the future. No token exists for them.
func Sessions(ctx context.Context, path string, n int, o Options) error {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "synchronous(OFF)", "cache_size(-262144)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	nowMS, hour := o.Now.UnixMilli(), time.Hour.Milliseconds()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	for _, s := range []string{
		`CREATE TEMP TABLE seeded (n INTEGER PRIMARY KEY, sid TEXT NOT NULL, app TEXT NOT NULL, la INTEGER NOT NULL)`,
		fmt.Sprintf(`WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < %d)
			INSERT INTO temp.seeded SELECT n, lower(hex(randomblob(11))), lower(hex(randomblob(6))), %d - (n * 7919) %% %d FROM seq`,
			n, nowMS, max(o.LastActiveWithin.Milliseconds(), 1)),
		fmt.Sprintf(`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			SELECT sid, 'seed-user-' || n, la - %[1]d, 'pwd', la, %[2]d, la - %[1]d + %[3]d, la + %[2]d FROM temp.seeded`,
			hour, o.IdleLimit.Milliseconds(), o.MaxLifetime.Milliseconds()),
		fmt.Sprintf(`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at)
			SELECT sid || '.' || app, sid, '%s', 'openid profile email offline_access', 0, la - %d, la FROM temp.seeded`, o.ClientID, hour),
		fmt.Sprintf(`INSERT INTO refresh_chains (id, app_session_id, gen, created_at)
			SELECT lower(hex(randomblob(6))), sid || '.' || app, 1 + n %% 7, la - %d FROM temp.seeded`, hour),
		fmt.Sprintf(`INSERT INTO audit_events (at, kind, user_id, sid, client_id, detail)
			SELECT la - %[1]d, 'session_start', 'seed-user-' || n, sid, '', '%[3]s' FROM temp.seeded
			UNION ALL SELECT la - %[1]d, 'app_join', 'seed-user-' || n, sid, '%[2]s', '%[3]s' FROM temp.seeded`, hour, o.ClientID, o.Note),
		`DROP TABLE temp.seeded`,
	} {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("seed sessions: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
	return err
}
