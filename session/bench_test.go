package session_test

// Benchmarks of the SQLite store's hot statements on a real file, and of two
// alternatives measured side by side so that a change to the store can be
// judged by numbers:
//
//   - UserByID (read on every refresh grant, for the ID token's claims) as
//     the store runs it, which prepares the statement on every call, and
//     through a statement prepared once;
//   - ending a sweep batch of 500 sessions with EndMany (five statements per
//     session, each prepared anew), and with a set-based sketch that writes
//     the same rows with five statements per batch over json_each.
//
//	go test -run '^$' -bench . -benchtime 2s ./session

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/idleguard/idleguard/session"
)

func openBenchStore(b *testing.B) (*session.SQLite, string) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "idleguard.db")
	store, err := session.OpenSQLite(context.Background(), path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	return store, path
}

// rawDB opens a second connection to the store's file, as the store opens
// its writer (WAL, busy timeout, foreign keys, synchronous NORMAL).
func rawDB(b *testing.B, path string) *sql.DB {
	b.Helper()
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode()+"&_txlock=immediate")
	if err != nil {
		b.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	b.Cleanup(func() { db.Close() })
	return db
}

func seedUsers(b *testing.B, store *session.SQLite, n int) []string {
	b.Helper()
	ids := make([]string, n)
	for i := range n {
		u := &session.User{Username: fmt.Sprintf("user-%d", i), PasswordHash: "x", Name: "User", Email: "u@example.com", CreatedAt: time.Now()}
		if err := store.CreateUser(context.Background(), u); err != nil {
			b.Fatal(err)
		}
		ids[i] = u.ID
	}
	return ids
}

// BenchmarkUserByID reads one user, as every refresh grant does to fill the
// ID token's claims.
func BenchmarkUserByID(b *testing.B) {
	store, _ := openBenchStore(b)
	ids := seedUsers(b, store, 10_000)
	ctx := context.Background()
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, err := store.UserByID(ctx, ids[i%len(ids)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("prepared", func(b *testing.B) {
		stmt, err := store.ReaderForTest().PrepareContext(ctx,
			`SELECT id, username, password_hash, name, email, email_verified, created_at FROM users WHERE id = ?`)
		if err != nil {
			b.Fatal(err)
		}
		defer stmt.Close()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			var u session.User
			var created int64
			if err := stmt.QueryRowContext(ctx, ids[i%len(ids)]).Scan(&u.ID, &u.Username, &u.PasswordHash, &u.Name, &u.Email, &u.EmailVerified, &created); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkAuthSession loads authentication sessions with their
// application sessions and refresh chains, as the tracker does on first use
// and the sweeper does for every candidate: one at a time through the store
// (three queries each), and, as a sketch of a batched load for the sweeper,
// 500 at a time with three queries per batch (ns/session compares them).
func BenchmarkAuthSession(b *testing.B) {
	store, _ := openBenchStore(b)
	ctx := context.Background()
	sids := seedLive(b, store, 10_000, time.Now())
	b.Run("one", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if _, _, err := store.AuthSession(ctx, sids[i%len(sids)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/session")
	})
	b.Run("batch-500", func(b *testing.B) {
		r := store.ReaderForTest()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			batch := make([]string, 0, endBatch)
			for range endBatch {
				batch = append(batch, sids[i%len(sids)])
				i++
			}
			ids, _ := json.Marshal(batch)
			n := 0
			for _, q := range []string{
				`SELECT id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline, ended_at, end_reason, ended_by
					FROM auth_sessions WHERE id IN (SELECT value FROM json_each(?))`,
				`SELECT id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline, ended_at, end_reason
					FROM app_sessions WHERE auth_session_id IN (SELECT value FROM json_each(?)) ORDER BY auth_session_id, joined_at, id`,
				`SELECT c.id, c.app_session_id, c.gen FROM refresh_chains c JOIN app_sessions a ON a.id = c.app_session_id
					WHERE a.auth_session_id IN (SELECT value FROM json_each(?))`,
			} {
				rows, err := r.QueryContext(ctx, q, string(ids))
				if err != nil {
					b.Fatal(err)
				}
				cols, _ := rows.Columns()
				vals := make([]any, len(cols))
				ptrs := make([]any, len(cols))
				for k := range vals {
					ptrs[k] = &vals[k]
				}
				for rows.Next() {
					if err := rows.Scan(ptrs...); err != nil {
						b.Fatal(err)
					}
					n++
				}
				rows.Close()
			}
			if n != 3*endBatch {
				b.Fatalf("batch load read %d rows, want %d", n, 3*endBatch)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*endBatch), "ns/session")
	})
}

// seedLive creates n live sessions through the store, each with one
// application session and one refresh chain, and returns their ids.
func seedLive(b *testing.B, store *session.SQLite, n int, now time.Time) []string {
	b.Helper()
	ctx := context.Background()
	sids := make([]string, n)
	for i := range n {
		a := &session.AuthSession{ID: session.NewID(), UserID: "u", AuthTime: now, AMR: []string{"pwd"}, LastActiveAt: now,
			IdleLimit: time.Hour, AbsoluteDeadline: now.Add(12 * time.Hour), Deadline: now.Add(time.Hour)}
		if err := store.CreateAuthSession(ctx, a); err != nil {
			b.Fatal(err)
		}
		app := &session.AppSession{ID: a.ID + ".app", AuthSessionID: a.ID, ClientID: "mail", Scopes: []string{"openid"}, JoinedAt: now, LastActiveAt: now}
		if err := store.JoinApp(ctx, app, session.ActivityUpdate{AuthSessionID: a.ID, LastActiveAt: now, IdleLimit: time.Hour, Deadline: now.Add(time.Hour)}, "u"); err != nil {
			b.Fatal(err)
		}
		if err := store.AddRefreshChain(ctx, app.ID, session.NewID()[:8], 1, now); err != nil {
			b.Fatal(err)
		}
		sids[i] = a.ID
	}
	return sids
}

// seedBatch inserts n live sessions (one app session each) with plain SQL
// and returns the Ends that the sweeper would plan for them.
func seedBatch(b *testing.B, db *sql.DB, n int, now time.Time) []session.End {
	b.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	ends := make([]session.End, n)
	nowMS := now.UnixMilli()
	for i := range ends {
		sid := session.NewID()
		app := sid + ".app"
		if _, err := tx.ExecContext(ctx, `INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			VALUES (?, 'u', ?, 'pwd', ?, 1800000, ?, ?)`, sid, nowMS-3*3600000, nowMS-2*3600000, nowMS+9*3600000, nowMS-3600000); err != nil {
			b.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, joined_at, last_active_at)
			VALUES (?, ?, 'mail', 'openid', ?, ?)`, app, sid, nowMS-3*3600000, nowMS-2*3600000); err != nil {
			b.Fatal(err)
		}
		ends[i] = session.End{At: now, Reason: session.ReasonIdleTimeout, IdleLimit: 30 * time.Minute, Initiator: "system", UserID: "u",
			AuthSessionID: sid, AppSessions: []session.EndedApp{{ID: app, ClientID: "mail"}},
			Notices: []session.LogoutNotice{{ClientID: "mail", URI: "http://127.0.0.1:1/bc", SID: sid, Subject: "u", Reason: session.ReasonIdleTimeout}}}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return ends
}

const endBatch = 500 // the sweeper's batch (activity.sweepBatch)

// BenchmarkEndBatch ends 500 idle sessions (each with one application
// session and one back-channel notice) in one transaction; ns/session is
// the figure to multiply by 100,000.
func BenchmarkEndBatch(b *testing.B) {
	for _, v := range []struct {
		name string
		end  func(ctx context.Context, store *session.SQLite, db *sql.DB, ends []session.End) error
	}{
		{"EndMany", func(ctx context.Context, store *session.SQLite, _ *sql.DB, ends []session.End) error {
			return store.EndMany(ctx, ends)
		}},
		{"prepared", func(ctx context.Context, _ *session.SQLite, db *sql.DB, ends []session.End) error {
			return endPrepared(ctx, db, ends)
		}},
		{"set-based", func(ctx context.Context, _ *session.SQLite, db *sql.DB, ends []session.End) error {
			return endSetBased(ctx, db, ends)
		}},
	} {
		b.Run(v.name, func(b *testing.B) {
			store, path := openBenchStore(b)
			db := rawDB(b, path)
			ctx := context.Background()
			var timed time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				ends := seedBatch(b, db, endBatch, time.Now())
				b.StartTimer()
				start := time.Now()
				if err := v.end(ctx, store, db, ends); err != nil {
					b.Fatal(err)
				}
				timed += time.Since(start)
			}
			b.ReportMetric(float64(timed.Nanoseconds())/float64(b.N*endBatch), "ns/session")
		})
	}
}

// endPrepared is EndMany with its five statements prepared once per batch
// (tx.PrepareContext) instead of once per execution: the same statements,
// the same rows, in the same order.
func endPrepared(ctx context.Context, db *sql.DB, ends []session.End) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var st *sql.Stmt
		st, err = tx.PrepareContext(ctx, q)
		return st
	}
	endAuth := prep(`UPDATE auth_sessions SET ended_at = ?, end_reason = ?, ended_by = ?,
		idle_limit_ms = CASE WHEN ? > 0 THEN ? ELSE idle_limit_ms END WHERE id = ? AND ended_at IS NULL`)
	endApp := prep(`UPDATE app_sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL`)
	audit := prep(`INSERT INTO audit_events (at, kind, user_id, sid, client_id, reason, initiator, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	outbox := prep(`INSERT INTO logout_outbox (jti, client_id, uri, sid, subject, reason, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	for _, e := range ends {
		at := e.At.UnixMilli()
		res, err := endAuth.ExecContext(ctx, at, string(e.Reason), e.Initiator, e.IdleLimit.Milliseconds(), e.IdleLimit.Milliseconds(), e.AuthSessionID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			if _, err := audit.ExecContext(ctx, at, session.AuditSessionEnd, e.UserID, e.AuthSessionID, "", string(e.Reason), e.Initiator, ""); err != nil {
				return err
			}
		}
		for _, a := range e.AppSessions {
			res, err := endApp.ExecContext(ctx, at, string(e.Reason), a.ID)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n > 0 {
				if _, err := audit.ExecContext(ctx, at, session.AuditAppEnd, e.UserID, e.AuthSessionID, a.ClientID, string(e.Reason), e.Initiator, "app_session="+a.ID); err != nil {
					return err
				}
			}
		}
		for _, n := range e.Notices {
			if _, err := outbox.ExecContext(ctx, session.NewID(), n.ClientID, n.URI, n.SID, n.Subject, string(n.Reason), at, at); err != nil {
				return err
			}
		}
	}
	return tx.Commit()
}

// endSetBased is a sketch of EndMany written set-wise: one JSON array of
// the batch, and five statements per batch instead of five per session. It
// writes the same rows as EndMany (ended_at, end_reason, ended_by, the
// limit in force, one audit event per ended row, one outbox row per notice,
// each with a fresh jti), and like it leaves rows that had already ended
// alone. It assumes one reason and one time per batch, as a sweep has.
func endSetBased(ctx context.Context, db *sql.DB, ends []session.End) error {
	type authRow struct {
		ID     string `json:"id"`
		User   string `json:"user"`
		Limit  int64  `json:"limit"`
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	type appRow struct {
		ID     string `json:"id"`
		SID    string `json:"sid"`
		Client string `json:"client"`
		User   string `json:"user"`
		Reason string `json:"reason"`
		By     string `json:"by"`
	}
	type noticeRow struct {
		Client  string `json:"client"`
		URI     string `json:"uri"`
		SID     string `json:"sid"`
		Subject string `json:"subject"`
		Reason  string `json:"reason"`
	}
	var auths []authRow
	var apps []appRow
	var notices []noticeRow
	at := ends[0].At.UnixMilli()
	for _, e := range ends {
		if e.AuthSessionID != "" {
			auths = append(auths, authRow{e.AuthSessionID, e.UserID, e.IdleLimit.Milliseconds(), string(e.Reason), e.Initiator})
		}
		for _, a := range e.AppSessions {
			apps = append(apps, appRow{a.ID, e.AuthSessionID, a.ClientID, e.UserID, string(e.Reason), e.Initiator})
		}
		for _, n := range e.Notices {
			notices = append(notices, noticeRow{n.ClientID, n.URI, n.SID, n.Subject, string(n.Reason)})
		}
	}
	authJSON, _ := json.Marshal(auths)
	appJSON, _ := json.Marshal(apps)
	noticeJSON, _ := json.Marshal(notices)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	stmts := []struct {
		q    string
		args []any
	}{
		// Audit first, for the rows this batch is about to end.
		{`INSERT INTO audit_events (at, kind, user_id, sid, reason, initiator)
			SELECT ?, 'session_end', j.value ->> 'user', j.value ->> 'id', j.value ->> 'reason', j.value ->> 'by'
			FROM json_each(?) j JOIN auth_sessions s ON s.id = j.value ->> 'id' WHERE s.ended_at IS NULL`, []any{at, string(authJSON)}},
		{`UPDATE auth_sessions SET ended_at = ?, end_reason = j.value ->> 'reason', ended_by = j.value ->> 'by',
			idle_limit_ms = CASE WHEN j.value ->> 'limit' > 0 THEN j.value ->> 'limit' ELSE idle_limit_ms END
			FROM json_each(?) j WHERE auth_sessions.id = j.value ->> 'id' AND auth_sessions.ended_at IS NULL`, []any{at, string(authJSON)}},
		{`INSERT INTO audit_events (at, kind, user_id, sid, client_id, reason, initiator, detail)
			SELECT ?, 'app_end', j.value ->> 'user', j.value ->> 'sid', j.value ->> 'client', j.value ->> 'reason', j.value ->> 'by', 'app_session=' || (j.value ->> 'id')
			FROM json_each(?) j JOIN app_sessions a ON a.id = j.value ->> 'id' WHERE a.ended_at IS NULL`, []any{at, string(appJSON)}},
		{`UPDATE app_sessions SET ended_at = ?, end_reason = j.value ->> 'reason'
			FROM json_each(?) j WHERE app_sessions.id = j.value ->> 'id' AND app_sessions.ended_at IS NULL`, []any{at, string(appJSON)}},
		{`INSERT INTO logout_outbox (jti, client_id, uri, sid, subject, reason, created_at, next_attempt_at)
			SELECT lower(hex(randomblob(16))), j.value ->> 'client', j.value ->> 'uri', j.value ->> 'sid', j.value ->> 'subject', j.value ->> 'reason', ?, ?
			FROM json_each(?) j`, []any{at, at, string(noticeJSON)}},
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s.q, s.args...); err != nil {
			return fmt.Errorf("%w\n%s", err, s.q)
		}
	}
	return tx.Commit()
}

// BenchmarkFlushActivity writes the coalesced activity of 1,000 sessions in
// one transaction, as the tracker's flush does once a second at most.
func BenchmarkFlushActivity(b *testing.B) {
	store, _ := openBenchStore(b)
	now := time.Now()
	sids := seedLive(b, store, 1000, now)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		at := now.Add(time.Duration(i+1) * time.Second)
		updates := make([]session.ActivityUpdate, len(sids))
		for j, sid := range sids {
			updates[j] = session.ActivityUpdate{AuthSessionID: sid, LastActiveAt: at, IdleLimit: time.Hour, Deadline: at.Add(time.Hour),
				Apps: []session.AppActivity{{ID: sid + ".app", LastActiveAt: at}}}
		}
		if err := store.FlushActivity(ctx, updates); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(sids)), "ns/session")
}
