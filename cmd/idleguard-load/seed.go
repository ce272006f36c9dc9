package main

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"time"

	"github.com/idleguard/idleguard/session"
)

// loadPassword is every synthetic user's password.
const loadPassword = "load-test-password"

func userName(i int) string { return fmt.Sprintf("load-%07d", i) }

// seedUsers creates the database (migrating it) and n users with a cheap
// argon2id hash (t=1, 8 KiB), so that signing n people in through the
// login form costs little CPU. The hash records its parameters;
// verification honours them.
func seedUsers(ctx context.Context, dbPath string, n int) error {
	store, err := session.OpenSQLite(ctx, dbPath)
	if err != nil {
		return err
	}
	defer store.Close()
	now := time.Now()
	for i := range n {
		hash, err := session.HashPasswordWithParams(loadPassword, 1, 8, 1)
		if err != nil {
			return err
		}
		name := userName(i)
		if err := store.CreateUser(ctx, &session.User{Username: name, PasswordHash: hash, Name: name,
			Email: name + "@load.invalid", EmailVerified: true, CreatedAt: now}); err != nil {
			return fmt.Errorf("seed user %s: %w", name, err)
		}
	}
	return nil
}

// seedSessionsSQL inserts n live authentication sessions of clientID
// directly with SQL, in one transaction, before the provider starts: each
// with one application session, one refresh chain and its session_start
// and app_join audit events, as a sign-in would leave them. They were last
// active within the last 4 hours, so their deadlines (8h idle limit) are 4
// to 8 hours ahead: idle, but live, for the whole run. No token exists for
// them, so the run never touches them: they stay out of the provider's
// memory and only weigh on the database (indexes, file size, sweeps).
func seedSessionsSQL(ctx context.Context, dbPath string, n int, clientID string, now time.Time) error {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "synchronous(OFF)", "cache_size(-262144)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+dbPath+"?"+q.Encode())
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	nowMS, hour := now.UnixMilli(), time.Hour.Milliseconds()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for _, s := range []string{
		`CREATE TEMP TABLE seeded (n INTEGER PRIMARY KEY, sid TEXT NOT NULL, app TEXT NOT NULL, la INTEGER NOT NULL)`,
		fmt.Sprintf(`WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < %d)
			INSERT INTO temp.seeded SELECT n, lower(hex(randomblob(11))), lower(hex(randomblob(6))), %d - (n * 7919) %% %d FROM seq`,
			n, nowMS, 4*hour),
		fmt.Sprintf(`INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			SELECT sid, 'seed-user-' || n, la - %[1]d, 'pwd', la, %[2]d, la - %[1]d + %[3]d, la + %[2]d FROM temp.seeded`,
			hour, 8*hour, 24*hour),
		fmt.Sprintf(`INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at)
			SELECT sid || '.' || app, sid, '%s', 'openid profile email offline_access', 0, la - %d, la FROM temp.seeded`, clientID, hour),
		fmt.Sprintf(`INSERT INTO refresh_chains (id, app_session_id, gen, created_at)
			SELECT lower(hex(randomblob(6))), sid || '.' || app, 1 + n %% 7, la - %d FROM temp.seeded`, hour),
		fmt.Sprintf(`INSERT INTO audit_events (at, kind, user_id, sid, client_id, detail)
			SELECT la - %[1]d, 'session_start', 'seed-user-' || n, sid, '', 'seeded by idleguard-load' FROM temp.seeded
			UNION ALL SELECT la - %[1]d, 'app_join', 'seed-user-' || n, sid, '%[2]s', 'seeded by idleguard-load' FROM temp.seeded`, hour, clientID),
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
