package session

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/idleguard/idleguard/migrations"
)

// SQLite stores everything in one SQLite file: WAL mode, one writer
// connection (SQLite serialises writers anyway; one connection avoids
// SQLITE_BUSY storms) and a pool of readers.
type SQLite struct {
	w *sql.DB
	r *sql.DB

	userByID *sql.Stmt // on every refresh and userinfo: prepared once
	signals  signalStmts
}

// OpenSQLite opens (creating if needed) and migrates the database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "busy_timeout(10000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	dsn := "file:" + path + "?" + q.Encode()
	// The one writer gets a larger page cache (32 MiB) and checkpoints the
	// WAL less often: ending a batch of sessions touches many index pages.
	w, err := sql.Open("sqlite", dsn+"&_txlock=immediate&_pragma=cache_size(-32768)&_pragma=wal_autocheckpoint(8000)")
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if err := migrations.Apply(ctx, w); err != nil {
		w.Close()
		return nil, fmt.Errorf("migrate %s: %w", path, err)
	}
	r, err := sql.Open("sqlite", dsn+"&mode=ro")
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	r.SetMaxOpenConns(8)
	r.SetMaxIdleConns(8)
	s := &SQLite{w: w, r: r}
	if s.userByID, err = r.PrepareContext(ctx, `SELECT `+userCols+` FROM users WHERE id = ?`); err != nil {
		s.Close()
		return nil, fmt.Errorf("prepare: %w", err)
	}
	if err := s.signals.prepare(ctx, r, w); err != nil {
		s.Close()
		return nil, fmt.Errorf("prepare: %w", err)
	}
	return s, nil
}

// Close closes both connection pools.
func (s *SQLite) Close() error {
	var err error
	if s.userByID != nil {
		err = s.userByID.Close()
	}
	return errors.Join(err, s.signals.close(), s.r.Close(), s.w.Close())
}

// Ping checks that the database answers.
func (s *SQLite) Ping(ctx context.Context) error { return s.r.PingContext(ctx) }

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func nullMS(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func fromNullMS(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromMS(v.Int64)
}

func isUnique(err error) bool {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// NewID returns a random 128-bit identifier in URL-safe base64 (22 chars).
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(...any) error }

// queryAll runs q on the read pool and scans every row.
func queryAll[T any](ctx context.Context, db *sql.DB, scan func(scanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return scanAll(rows, scan)
}

// scanAll scans every row of rows and closes them.
func scanAll[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func scanString(row scanner) (string, error) {
	var v string
	err := row.Scan(&v)
	return v, err
}

func (s *SQLite) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const insertAudit = `INSERT INTO audit_events (at, kind, user_id, sid, client_id, reason, initiator, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`

// auditWriter runs insertAudit: a statement prepared from it, or auditVia.
type auditWriter interface {
	ExecContext(ctx context.Context, args ...any) (sql.Result, error)
}

// auditVia runs insertAudit on a connection pool or transaction.
type auditVia struct{ e execer }

func (a auditVia) ExecContext(ctx context.Context, args ...any) (sql.Result, error) {
	return a.e.ExecContext(ctx, insertAudit, args...)
}

func addAudit(ctx context.Context, w auditWriter, ev AuditEvent) error {
	_, err := w.ExecContext(ctx, ms(ev.At), ev.Kind, ev.UserID, ev.SID, ev.ClientID, ev.Reason, ev.Initiator, ev.Detail)
	if err != nil {
		return fmt.Errorf("audit %s: %w", ev.Kind, err)
	}
	return nil
}

// --- users ---

// CreateUser adds a user; ErrConflict when the username is taken.
func (s *SQLite) CreateUser(ctx context.Context, u *User) error {
	if u.ID == "" {
		u.ID = NewID()
	}
	_, err := s.w.ExecContext(ctx, `INSERT INTO users (id, username, password_hash, name, email, email_verified, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?)`, u.ID, u.Username, u.PasswordHash, u.Name, u.Email, u.EmailVerified, ms(u.CreatedAt))
	if isUnique(err) {
		return fmt.Errorf("user %q: %w", u.Username, ErrConflict)
	}
	return err
}

const userCols = `id, username, password_hash, name, email, email_verified, created_at`

func scanUser(row scanner) (*User, error) {
	var u User
	var created int64
	if err := row.Scan(&u.ID, &u.Username, &u.PasswordHash, &u.Name, &u.Email, &u.EmailVerified, &created); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	u.CreatedAt = fromMS(created)
	return &u, nil
}

// UserByUsername looks a user up by the name they sign in with.
func (s *SQLite) UserByUsername(ctx context.Context, username string) (*User, error) {
	return scanUser(s.r.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE username = ?`, username))
}

// UserByID looks a user up by subject identifier.
func (s *SQLite) UserByID(ctx context.Context, id string) (*User, error) {
	return scanUser(s.userByID.QueryRowContext(ctx, id))
}

// ListUsers returns every user ordered by username.
func (s *SQLite) ListUsers(ctx context.Context) ([]*User, error) {
	return queryAll(ctx, s.r, scanUser, `SELECT `+userCols+` FROM users ORDER BY username`)
}

// SetPassword replaces a user's password hash.
func (s *SQLite) SetPassword(ctx context.Context, username, hash string) error {
	res, err := s.w.ExecContext(ctx, `UPDATE users SET password_hash = ? WHERE username = ?`, hash, username)
	return mustAffect(res, err, "user "+username)
}

// DeleteUser removes a user. Their sessions are left for the caller to end.
func (s *SQLite) DeleteUser(ctx context.Context, username string) error {
	res, err := s.w.ExecContext(ctx, `DELETE FROM users WHERE username = ?`, username)
	return mustAffect(res, err, "user "+username)
}

func mustAffect(res sql.Result, err error, what string) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// --- authentication and application sessions ---

// CreateAuthSession stores a new authentication session and its
// session_start audit event.
func (s *SQLite) CreateAuthSession(ctx context.Context, a *AuthSession) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, a.ID, a.UserID, ms(a.AuthTime), strings.Join(a.AMR, " "), ms(a.LastActiveAt),
			a.IdleLimit.Milliseconds(), ms(a.AbsoluteDeadline), ms(a.Deadline))
		if err != nil {
			return fmt.Errorf("create auth session: %w", err)
		}
		return addAudit(ctx, auditVia{tx}, sessionStartEvent(a))
	})
}

// Reauthenticate records a fresh sign-in into a live session (prompt=login,
// max_age): new auth_time and amr, and the activity of the sign-in.
func (s *SQLite) Reauthenticate(ctx context.Context, a *AuthSession) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE auth_sessions SET auth_time = ?, amr = ?, last_active_at = ?, deadline = ?
			WHERE id = ? AND ended_at IS NULL`, ms(a.AuthTime), strings.Join(a.AMR, " "), ms(a.LastActiveAt), ms(a.Deadline), a.ID)
		if err := mustAffect(res, err, "auth session "+a.ID); err != nil {
			return err
		}
		if err := addChange(ctx, tx, a.ID, a.AuthTime); err != nil {
			return err
		}
		return addAudit(ctx, auditVia{tx}, reauthenticatedEvent(a))
	})
}

const authCols = `id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline, ended_at, end_reason, ended_by`

func scanAuth(row scanner) (*AuthSession, error) {
	var a AuthSession
	var authTime, last, limit, abs, deadline int64
	var amr string
	var ended sql.NullInt64
	var reason, by sql.NullString
	if err := row.Scan(&a.ID, &a.UserID, &authTime, &amr, &last, &limit, &abs, &deadline, &ended, &reason, &by); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	a.AuthTime, a.LastActiveAt, a.AbsoluteDeadline, a.Deadline = fromMS(authTime), fromMS(last), fromMS(abs), fromMS(deadline)
	a.IdleLimit = time.Duration(limit) * time.Millisecond
	a.AMR = strings.Fields(amr)
	a.EndedAt = fromNullMS(ended)
	a.EndReason = Reason(reason.String)
	a.EndedBy = by.String
	return &a, nil
}

const appCols = `id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline, ended_at, end_reason`

func scanApp(row scanner) (*AppSession, error) {
	var a AppSession
	var scopes string
	var joined, last int64
	var deadline, ended sql.NullInt64
	var reason sql.NullString
	if err := row.Scan(&a.ID, &a.AuthSessionID, &a.ClientID, &scopes, &a.IdleExempt, &joined, &last, &deadline, &ended, &reason); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	a.Scopes = strings.Fields(scopes)
	a.JoinedAt, a.LastActiveAt = fromMS(joined), fromMS(last)
	a.Deadline = fromNullMS(deadline)
	a.EndedAt = fromNullMS(ended)
	a.EndReason = Reason(reason.String)
	return &a, nil
}

// AuthSession loads one authentication session with all of its application
// sessions, live and ended, oldest first.
func (s *SQLite) AuthSession(ctx context.Context, id string) (*AuthSession, []*AppSession, error) {
	a, err := scanAuth(s.r.QueryRowContext(ctx, `SELECT `+authCols+` FROM auth_sessions WHERE id = ?`, id))
	if err != nil {
		return nil, nil, fmt.Errorf("auth session %s: %w", id, err)
	}
	apps, err := s.appsOf(ctx, []string{id})
	if err != nil {
		return nil, nil, err
	}
	return a, apps[id], nil
}

// AuthSessions loads many authentication sessions with their application
// sessions in a few queries (the sweeper's batch). Missing ids are absent
// from the result.
func (s *SQLite) AuthSessions(ctx context.Context, ids []string) ([]*AuthSession, map[string][]*AppSession, error) {
	var out []*AuthSession
	for chunk := range slices.Chunk(ids, inChunk) {
		in, args := placeholders(chunk)
		auths, err := queryAll(ctx, s.r, scanAuth, `SELECT `+authCols+` FROM auth_sessions WHERE id IN (`+in+`)`, args...)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, auths...)
	}
	apps, err := s.appsOf(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	return out, apps, nil
}

// inChunk bounds the ids one IN (...) list carries.
const inChunk = 500

func placeholders(ids []string) (string, []any) {
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	return strings.Repeat("?,", len(ids)-1) + "?", args
}

func (s *SQLite) loadChains(ctx context.Context, q string, byID map[string]*AppSession, args ...any) error {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, app string
		var gen int64
		if err := rows.Scan(&id, &app, &gen); err != nil {
			return err
		}
		attachChain(byID, id, app, gen)
	}
	return rows.Err()
}

// appsOf loads the application sessions, with their refresh chains, of the
// authentication sessions sids, oldest first, in two queries per inChunk
// ids.
func (s *SQLite) appsOf(ctx context.Context, sids []string) (map[string][]*AppSession, error) {
	apps := make(map[string][]*AppSession, len(sids))
	for chunk := range slices.Chunk(sids, inChunk) {
		in, args := placeholders(chunk)
		list, err := queryAll(ctx, s.r, scanApp, `SELECT `+appCols+` FROM app_sessions WHERE auth_session_id IN (`+in+`) ORDER BY joined_at, id`, args...)
		if err != nil {
			return nil, err
		}
		byID := make(map[string]*AppSession, len(list))
		for _, a := range list {
			apps[a.AuthSessionID] = append(apps[a.AuthSessionID], a)
			byID[a.ID] = a
		}
		if len(byID) == 0 {
			continue
		}
		if err := s.loadChains(ctx, `SELECT c.id, c.app_session_id, c.gen FROM refresh_chains c
			JOIN app_sessions a ON a.id = c.app_session_id WHERE a.auth_session_id IN (`+in+`)`, byID, args...); err != nil {
			return nil, err
		}
	}
	return apps, nil
}

// AddRefreshChain starts a refresh chain for an application session.
func (s *SQLite) AddRefreshChain(ctx context.Context, appSessionID, chainID string, gen uint64, at time.Time) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO refresh_chains (id, app_session_id, gen, created_at) VALUES (?, ?, ?, ?)`,
		chainID, appSessionID, int64(gen), ms(at))
	return err
}

// JoinApp stores a new application session and, in the same transaction,
// the authentication session's new effective limit and deadline (joining a
// stricter app tightens it) and an app_join audit event. ErrConflict when a
// live application session already exists for the pair.
func (s *SQLite) JoinApp(ctx context.Context, app *AppSession, auth ActivityUpdate, userID string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, app.ID, app.AuthSessionID, app.ClientID, strings.Join(app.Scopes, " "), app.IdleExempt,
			ms(app.JoinedAt), ms(app.LastActiveAt), nullMS(app.Deadline))
		if isUnique(err) {
			return fmt.Errorf("join %s to %s: %w", app.ClientID, app.AuthSessionID, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("join %s to %s: %w", app.ClientID, app.AuthSessionID, err)
		}
		if err := updateAuthActivity(ctx, tx, auth); err != nil {
			return err
		}
		if err := addChange(ctx, tx, app.AuthSessionID, app.JoinedAt); err != nil {
			return err
		}
		return addAudit(ctx, auditVia{tx}, appJoinEvent(app, auth, userID))
	})
}

// updateAuthActivity writes an ActivityUpdate. The deadline is computed
// from the stored and the written last activity, whichever is later, so
// that a replica writing an older view than another's never moves the
// stored deadline before the activity the store already holds.
func updateAuthActivity(ctx context.Context, e execer, u ActivityUpdate) error {
	_, err := e.ExecContext(ctx, `UPDATE auth_sessions SET last_active_at = MAX(last_active_at, ?1), idle_limit_ms = ?2,
		deadline = MIN(MAX(last_active_at, ?1) + ?2, absolute_deadline, MAX(?3, last_active_at + ?2))
		WHERE id = ?4 AND ended_at IS NULL`, ms(u.LastActiveAt), u.IdleLimit.Milliseconds(), ms(u.Deadline), u.AuthSessionID)
	if err != nil {
		return fmt.Errorf("update auth session %s: %w", u.AuthSessionID, err)
	}
	for _, a := range u.Apps {
		_, err := e.ExecContext(ctx, `UPDATE app_sessions SET last_active_at = MAX(last_active_at, ?), deadline = ?
			WHERE id = ? AND ended_at IS NULL`, ms(a.LastActiveAt), nullMS(a.Deadline), a.ID)
		if err != nil {
			return fmt.Errorf("update app session %s: %w", a.ID, err)
		}
		for chain, gen := range a.RefreshChains {
			if _, err := e.ExecContext(ctx, `UPDATE refresh_chains SET gen = MAX(gen, ?) WHERE id = ?`, int64(gen), chain); err != nil {
				return fmt.Errorf("update refresh chain %s: %w", chain, err)
			}
		}
	}
	return nil
}

// SetAppScopes replaces the scopes granted to a live application session
// (a later authorization of the same app asked for different ones).
func (s *SQLite) SetAppScopes(ctx context.Context, id string, scopes []string) error {
	res, err := s.w.ExecContext(ctx, `UPDATE app_sessions SET scopes = ? WHERE id = ? AND ended_at IS NULL`, strings.Join(scopes, " "), id)
	return mustAffect(res, err, "app session "+id)
}

// FlushActivity writes coalesced activity for many sessions in one
// transaction. Rows that have ended meanwhile are left alone.
func (s *SQLite) FlushActivity(ctx context.Context, updates []ActivityUpdate) error {
	if len(updates) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, u := range updates {
			if err := updateAuthActivity(ctx, tx, u); err != nil {
				return err
			}
		}
		return nil
	})
}

// Limits are the idle policy in force, for TightenDeadlines.
type Limits struct {
	IdleTimeout time.Duration // provider ceiling
	MaxLifetime time.Duration
	Clients     map[string]ClientLimits
}

// ClientLimits are one client's limits.
type ClientLimits struct {
	IdleTimeout    time.Duration
	AppIdleTimeout time.Duration
	Exempt         bool
}

// TightenDeadlines lowers stored limits and deadlines that a stricter
// configuration has made too late (a restart with a smaller idle_timeout or
// max_lifetime, a client given a stricter idle_timeout or an
// app_idle_timeout), so that the sweeper's index finds those sessions in
// time. It only ever moves deadlines earlier: the in-memory policy, computed
// from the configuration, stays the judge.
//
// The policy is recorded, and a restart with the same one skips the scan.
func (s *SQLite) TightenDeadlines(ctx context.Context, l Limits) error {
	fingerprint, err := json.Marshal(l) // map keys are sorted: stable
	if err != nil {
		return err
	}
	var last string
	err = s.r.QueryRowContext(ctx, `SELECT value FROM meta WHERE name = 'tightened_to'`).Scan(&last)
	if err == nil && last == string(fingerprint) {
		return nil
	}
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		exec := func(q string, args ...any) error {
			_, err := tx.ExecContext(ctx, q, args...)
			return err
		}
		if err := exec(`INSERT INTO meta (name, value) VALUES ('tightened_to', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
			string(fingerprint)); err != nil {
			return err
		}
		if err := exec(`UPDATE auth_sessions SET absolute_deadline = MIN(absolute_deadline, auth_time + ?1),
			deadline = MIN(deadline, auth_time + ?1) WHERE ended_at IS NULL AND absolute_deadline > auth_time + ?1`, l.MaxLifetime.Milliseconds()); err != nil {
			return err
		}
		if err := exec(`UPDATE auth_sessions SET idle_limit_ms = ?1, deadline = MIN(deadline, last_active_at + ?1)
			WHERE ended_at IS NULL AND idle_limit_ms > ?1`, l.IdleTimeout.Milliseconds()); err != nil {
			return err
		}
		for id, c := range l.Clients {
			switch {
			case c.Exempt && c.IdleTimeout > 0:
				if err := exec(`UPDATE app_sessions SET deadline = MIN(COALESCE(deadline, last_active_at + ?1), last_active_at + ?1)
					WHERE client_id = ?2 AND ended_at IS NULL AND idle_exempt = 1`, c.IdleTimeout.Milliseconds(), id); err != nil {
					return err
				}
			case !c.Exempt && c.IdleTimeout > 0:
				if err := exec(`UPDATE auth_sessions SET idle_limit_ms = ?1, deadline = MIN(deadline, last_active_at + ?1)
					WHERE ended_at IS NULL AND idle_limit_ms > ?1 AND id IN
					(SELECT auth_session_id FROM app_sessions WHERE client_id = ?2 AND ended_at IS NULL AND idle_exempt = 0)`,
					c.IdleTimeout.Milliseconds(), id); err != nil {
					return err
				}
			}
			if !c.Exempt && c.AppIdleTimeout > 0 {
				if err := exec(`UPDATE app_sessions SET deadline = MIN(COALESCE(deadline, last_active_at + ?1), last_active_at + ?1)
					WHERE client_id = ?2 AND ended_at IS NULL AND idle_exempt = 0`, c.AppIdleTimeout.Milliseconds(), id); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// DueAuthSessions returns up to limit live authentication sessions whose
// stored deadline is at or before now. It reads only the partial deadline
// index, so it costs O(due), not O(sessions).
func (s *SQLite) DueAuthSessions(ctx context.Context, now time.Time, limit int) ([]string, error) {
	return s.ids(ctx, `SELECT id FROM auth_sessions WHERE ended_at IS NULL AND deadline <= ? ORDER BY deadline LIMIT ?`, ms(now), limit)
}

// DueAppSessions is DueAuthSessions for application sessions with a deadline
// of their own; it returns their authentication session ids.
func (s *SQLite) DueAppSessions(ctx context.Context, now time.Time, limit int) ([]string, error) {
	return s.ids(ctx, `SELECT DISTINCT auth_session_id FROM (SELECT auth_session_id FROM app_sessions
		WHERE ended_at IS NULL AND deadline IS NOT NULL AND deadline <= ? ORDER BY deadline LIMIT ?)`, ms(now), limit)
}

func (s *SQLite) ids(ctx context.Context, q string, args ...any) ([]string, error) {
	return queryAll(ctx, s.r, scanString, q, args...)
}

// EndSessions applies an End in one transaction: the authentication session
// (if named) and application sessions are marked ended with the reason, which
// revokes every refresh and access token they hold; one outbox row per notice
// and one audit event per ended session are written alongside. Rows already
// ended are left as they were (their first reason stands).
func (s *SQLite) EndSessions(ctx context.Context, e End) error {
	return s.EndMany(ctx, []End{e})
}

// EndMany applies several Ends in one transaction (the sweeper's batch),
// with each statement prepared once for the batch.
func (s *SQLite) EndMany(ctx context.Context, ends []End) error {
	if len(ends) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		st, err := prepareEnd(ctx, tx)
		if err != nil {
			return err
		}
		defer st.close()
		for _, e := range ends {
			if err := st.end(ctx, e); err != nil {
				return err
			}
		}
		return nil
	})
}

type endStmts struct {
	auth, authDue, app, appDue, outbox, audit, change, signals *sql.Stmt
}

func prepareEnd(ctx context.Context, tx *sql.Tx) (*endStmts, error) {
	var st endStmts
	var err error
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var s *sql.Stmt
		s, err = tx.PrepareContext(ctx, q)
		return s
	}
	st.auth = prep(`UPDATE auth_sessions SET ended_at = ?, end_reason = ?, ended_by = ?,
		idle_limit_ms = CASE WHEN ? > 0 THEN ? ELSE idle_limit_ms END WHERE id = ? AND ended_at IS NULL`)
	st.authDue = prep(`UPDATE auth_sessions SET ended_at = ?, end_reason = ?, ended_by = ?,
		idle_limit_ms = CASE WHEN ? > 0 THEN ? ELSE idle_limit_ms END WHERE id = ? AND ended_at IS NULL AND deadline <= ?`)
	st.app = prep(`UPDATE app_sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL`)
	st.appDue = prep(`UPDATE app_sessions SET ended_at = ?, end_reason = ? WHERE id = ? AND ended_at IS NULL AND deadline <= ?`)
	st.change = prep(insertChange)
	st.outbox = prep(insertOutbox)
	st.audit = prep(insertAudit)
	st.signals = prep(insertSignals)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("prepare end: %w", err)
	}
	return &st, nil
}

func (st *endStmts) close() {
	for _, s := range []*sql.Stmt{st.auth, st.authDue, st.app, st.appDue, st.outbox, st.audit, st.change, st.signals} {
		if s != nil {
			s.Close()
		}
	}
}

func (st *endStmts) end(ctx context.Context, e End) error { return applyEnd(ctx, st, e) }

func (st *endStmts) endApp(ctx context.Context, at int64, reason Reason, id string, due int64) (bool, error) {
	if due > 0 {
		return affected(st.appDue.ExecContext(ctx, at, string(reason), id, due))
	}
	return affected(st.app.ExecContext(ctx, at, string(reason), id))
}

func (st *endStmts) endAuth(ctx context.Context, at int64, e End, due int64) (bool, error) {
	limit := e.IdleLimit.Milliseconds()
	if due > 0 {
		return affected(st.authDue.ExecContext(ctx, at, string(e.Reason), e.Initiator, limit, limit, e.AuthSessionID, due))
	}
	return affected(st.auth.ExecContext(ctx, at, string(e.Reason), e.Initiator, limit, limit, e.AuthSessionID))
}

func (st *endStmts) addOutbox(ctx context.Context, at int64, n LogoutNotice) error {
	_, err := st.outbox.ExecContext(ctx, NewID(), n.ClientID, n.URI, n.SID, n.Subject, string(n.Reason), at, at)
	return err
}

func (st *endStmts) writeAudit(ctx context.Context, ev AuditEvent) error {
	return addAudit(ctx, st.audit, ev)
}

func (st *endStmts) addChange(ctx context.Context, sid string, at int64) error {
	_, err := st.change.ExecContext(ctx, sid, at)
	return err
}

func affected(res sql.Result, err error) (bool, error) {
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// SessionsOfUser lists a user's authentication sessions, newest first, with
// their application sessions. Without withEnded it lists those still in
// force: live ones, and ended ones with a live application session (an
// exempt app that outlived an idle end).
func (s *SQLite) SessionsOfUser(ctx context.Context, userID string, withEnded bool) ([]*AuthSession, map[string][]*AppSession, error) {
	q := `SELECT ` + authCols + ` FROM auth_sessions WHERE user_id = ?`
	if !withEnded {
		q += ` AND (ended_at IS NULL OR EXISTS (SELECT 1 FROM app_sessions a WHERE a.auth_session_id = auth_sessions.id AND a.ended_at IS NULL))`
	}
	out, err := queryAll(ctx, s.r, scanAuth, q+` ORDER BY auth_time DESC`, userID)
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(out))
	for i, a := range out {
		ids[i] = a.ID
	}
	apps, err := s.appsOf(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	return out, apps, nil
}

// --- revoked access tokens ---

// RevokeToken records that one access token was revoked (RFC 7009), with a
// row of the change feed that names it (Change.TokenID), so that every
// replica refuses it. The row is dated at the token's expiry, so that the
// feed keeps it while the token could still be presented.
func (s *SQLite) RevokeToken(ctx context.Context, tokenID string, expires time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `INSERT INTO revoked_tokens (token_id, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING`, tokenID, ms(expires))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return err // revoked before: its change is on the feed already
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO session_changes (sid, at, token_id) VALUES ('', ?, ?)`, ms(expires), tokenID); err != nil {
			return fmt.Errorf("change feed: %w", err)
		}
		return nil
	})
}

// RevokedTokens returns the ids of revoked tokens that have not expired by
// now. It only reads: PurgeRevokedTokens deletes the rest.
func (s *SQLite) RevokedTokens(ctx context.Context, now time.Time) ([]string, error) {
	return s.ids(ctx, `SELECT token_id FROM revoked_tokens WHERE expires_at >= ?`, ms(now))
}

// PurgeRevokedTokens deletes the revocations of tokens that have expired by
// now (an expired token is refused anyway) and returns how many it deleted.
func (s *SQLite) PurgeRevokedTokens(ctx context.Context, now time.Time) (int64, error) {
	return s.purgeBatches(ctx, "revoked_tokens", "token_id", `expires_at < ?`, ms(now))
}

// --- authorization requests ---

// SaveAuthRequest stores an authorization request, or replaces the data of
// one that has no code yet: once a code is issued its request is frozen
// (ErrConflict).
func (s *SQLite) SaveAuthRequest(ctx context.Context, id string, data []byte, created, expires time.Time) error {
	res, err := s.w.ExecContext(ctx, `INSERT INTO auth_requests (id, data, created_at, expires_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE auth_requests.code_hash IS NULL`, id, string(data), ms(created), ms(expires))
	if err = mustAffect(res, err, "auth request"); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("auth request %s has a code: %w", id, ErrConflict)
	}
	return err
}

// AuthRequestData returns the data of an unexpired authorization request
// that has no code yet; a request whose code was issued is not found.
func (s *SQLite) AuthRequestData(ctx context.Context, id string, now time.Time) ([]byte, error) {
	var data string
	err := s.r.QueryRowContext(ctx, `SELECT data FROM auth_requests WHERE id = ? AND expires_at > ? AND code_hash IS NULL`, id, ms(now)).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("auth request: %w", ErrNotFound)
	}
	return []byte(data), err
}

// SaveAuthCode attaches the hash of an issued code to a request, at most
// once: a request that already has a code answers ErrConflict, so that two
// racing callbacks cannot both issue one.
func (s *SQLite) SaveAuthCode(ctx context.Context, id, codeHash string) error {
	res, err := s.w.ExecContext(ctx, `UPDATE auth_requests SET code_hash = ? WHERE id = ? AND code_hash IS NULL`, codeHash, id)
	if err = mustAffect(res, err, "auth request"); !errors.Is(err, ErrNotFound) {
		return err
	}
	var n int
	if e := s.w.QueryRowContext(ctx, `SELECT count(*) FROM auth_requests WHERE id = ?`, id).Scan(&n); e != nil {
		return e
	}
	if n > 0 {
		return fmt.Errorf("auth request %s already has a code: %w", id, ErrConflict)
	}
	return err
}

// AuthRequestOfCode returns the data of the unexpired request that a code
// was issued for, redeemed or not, without redeeming it: the token endpoint
// checks who presents the code before the code counts as used.
func (s *SQLite) AuthRequestOfCode(ctx context.Context, codeHash string, now time.Time) ([]byte, error) {
	var data string
	err := s.r.QueryRowContext(ctx, `SELECT data FROM auth_requests WHERE code_hash = ? AND expires_at > ?`, codeHash, ms(now)).Scan(&data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("auth code: %w", ErrNotFound)
	}
	return []byte(data), err
}

// AuthRequestByCode redeems a code: the first call returns the request it
// was issued for and marks it redeemed in the same statement, so that a code
// is redeemed once even when two exchanges race (RFC 6749 section 4.1.2).
// Until the request expires, every later call returns the same id and data
// with ErrCodeReused, so that the caller can revoke what the code gave.
func (s *SQLite) AuthRequestByCode(ctx context.Context, codeHash string, now time.Time) (string, []byte, error) {
	var id, data string
	err := s.w.QueryRowContext(ctx, `UPDATE auth_requests SET redeemed_at = ?
		WHERE code_hash = ? AND expires_at > ? AND redeemed_at IS NULL RETURNING id, data`, ms(now), codeHash, ms(now)).Scan(&id, &data)
	if !errors.Is(err, sql.ErrNoRows) {
		return id, []byte(data), err
	}
	err = s.w.QueryRowContext(ctx, `SELECT id, data FROM auth_requests WHERE code_hash = ? AND expires_at > ?`, codeHash, ms(now)).Scan(&id, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil, fmt.Errorf("auth code: %w", ErrNotFound)
	}
	if err != nil {
		return "", nil, err
	}
	return id, []byte(data), fmt.Errorf("auth code of request %s: %w", id, ErrCodeReused)
}

// PurgeAuthRequests deletes expired requests.
func (s *SQLite) PurgeAuthRequests(ctx context.Context, now time.Time) error {
	_, err := s.w.ExecContext(ctx, `DELETE FROM auth_requests WHERE expires_at <= ?`, ms(now))
	return err
}

// --- sign-in throttling ---

// ReserveLoginAttempt counts one sign-in attempt against every key before
// the password is checked, in one transaction, so that concurrent guesses
// (at this process or any other on the database) cannot all pass the limit.
// When a key is locked at now, nothing is counted and the longest remaining
// lock is returned instead.
func (s *SQLite) ReserveLoginAttempt(ctx context.Context, keys []string, now time.Time, p LoginPolicy) (LoginAttempt, time.Duration, error) {
	a := LoginAttempt{Keys: keys}
	var wait time.Duration
	err := s.tx(ctx, func(tx *sql.Tx) error {
		stored := make([]loginCount, len(keys))
		for i, k := range keys {
			var last, until int64
			err := tx.QueryRowContext(ctx, `SELECT failures, last_at, locked_until FROM login_failures WHERE key = ?`, k).Scan(&stored[i].failures, &last, &until)
			if err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			stored[i].last, stored[i].until = fromMS(last), fromMS(until)
		}
		var counts []int
		if counts, a.Locks, wait = p.reserve(stored, now); wait > 0 {
			return nil
		}
		for i, k := range keys {
			if _, err := tx.ExecContext(ctx, `INSERT INTO login_failures (key, failures, last_at, locked_until) VALUES (?, ?, ?, ?)
				ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, last_at = excluded.last_at, locked_until = excluded.locked_until`,
				k, counts[i], ms(now), ms(a.Locks[i])); err != nil {
				return err
			}
		}
		return nil
	})
	return reserved(a, wait, err)
}

// reserved is what ReserveLoginAttempt returns: the attempt, or the wait.
func reserved(a LoginAttempt, wait time.Duration, err error) (LoginAttempt, time.Duration, error) {
	switch {
	case err != nil:
		return LoginAttempt{}, 0, fmt.Errorf("reserve login attempt: %w", err)
	case wait > 0:
		return LoginAttempt{}, wait, nil
	}
	return a, 0, nil
}

// RefundLoginAttempt gives back an attempt that was not a wrong guess (the
// password was right, or it was never checked): one attempt less on each of
// its keys, and the lock it set lifted unless a later attempt replaced it.
func (s *SQLite) RefundLoginAttempt(ctx context.Context, a LoginAttempt) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for i, k := range a.Keys {
			if _, err := tx.ExecContext(ctx, `UPDATE login_failures SET failures = MAX(failures - 1, 0),
				locked_until = CASE WHEN locked_until = ? THEN 0 ELSE locked_until END WHERE key = ?`, ms(a.Locks[i]), k); err != nil {
				return fmt.Errorf("refund login attempt: %w", err)
			}
		}
		return nil
	})
}

// ForgetLoginFailures deletes the counts of keys (a successful sign-in's
// username or device).
func (s *SQLite) ForgetLoginFailures(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	in, args := placeholders(keys)
	if _, err := s.w.ExecContext(ctx, `DELETE FROM login_failures WHERE key IN (`+in+`)`, args...); err != nil {
		return fmt.Errorf("forget login failures: %w", err)
	}
	return nil
}

// PurgeLoginFailures deletes the counts that p forgets at now: their lock
// is over and their last attempt older than p.LockoutMax.
func (s *SQLite) PurgeLoginFailures(ctx context.Context, now time.Time, p LoginPolicy) error {
	_, err := s.w.ExecContext(ctx, `DELETE FROM login_failures WHERE locked_until <= ? AND last_at < ?`, ms(now), ms(now.Add(-p.LockoutMax)))
	if err != nil {
		return fmt.Errorf("purge login failures: %w", err)
	}
	return nil
}

// --- keys and secrets ---

// AddSigningKey stores a new current signing key and schedules every other
// unscheduled key to leave the key set at retireOthers.
func (s *SQLite) AddSigningKey(ctx context.Context, k SigningKey, retireOthers time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `UPDATE signing_keys SET retire_at = ? WHERE retire_at IS NULL`, ms(retireOthers)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO signing_keys (id, algorithm, private_key, created_at) VALUES (?, ?, ?, ?)`,
			k.ID, k.Algorithm, k.PrivateDER, ms(k.CreatedAt))
		return err
	})
}

// SigningKeys returns the keys not yet retired at now, newest first. The
// first one is the current signing key.
func (s *SQLite) SigningKeys(ctx context.Context, now time.Time) ([]SigningKey, error) {
	return queryAll(ctx, s.r, scanSigningKey, `SELECT id, algorithm, private_key, created_at, retire_at FROM signing_keys
		WHERE retire_at IS NULL OR retire_at > ? ORDER BY created_at DESC, rowid DESC`, ms(now))
}

func scanSigningKey(row scanner) (SigningKey, error) {
	var k SigningKey
	var created int64
	var retire sql.NullInt64
	err := row.Scan(&k.ID, &k.Algorithm, &k.PrivateDER, &created, &retire)
	k.CreatedAt, k.RetireAt = fromMS(created), fromNullMS(retire)
	return k, err
}

// Secret returns the named secret, creating it with gen on first use.
func (s *SQLite) Secret(ctx context.Context, name string, gen func() []byte) ([]byte, error) {
	var v []byte
	err := s.r.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	if _, err := s.w.ExecContext(ctx, `INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING`, name, gen()); err != nil {
		return nil, err
	}
	err = s.w.QueryRowContext(ctx, `SELECT value FROM secrets WHERE name = ?`, name).Scan(&v)
	return v, err
}

// --- outbox ---

// insertOutbox writes one logout notice. There is at most one pending row per
// (client, sid): a later end of the same pair supersedes a pending row, with a
// fresh jti (the app may already have seen, and remembered, the old one for a
// session it has since rejoined) and the first due time of the two. The pair
// can therefore hold one pending row however often it ends and rejoins.
const insertOutbox = `INSERT INTO logout_outbox (jti, client_id, uri, sid, subject, reason, created_at, next_attempt_at)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?)
	ON CONFLICT (client_id, sid) WHERE delivered_at IS NULL AND abandoned_at IS NULL DO UPDATE SET
	jti = excluded.jti, uri = excluded.uri, subject = excluded.subject, reason = excluded.reason, created_at = excluded.created_at,
	next_attempt_at = min(next_attempt_at, excluded.next_attempt_at), attempts = 0, last_error = '', claimed_by = NULL, claimed_until = NULL`

const outboxCols = `id, jti, client_id, uri, sid, subject, reason, created_at, next_attempt_at, attempts, last_error, delivered_at, abandoned_at, claimed_by, claimed_until`

const outboxPending = `delivered_at IS NULL AND abandoned_at IS NULL`

func scanOutbox(row scanner) (OutboxEntry, error) {
	var o OutboxEntry
	var created, next int64
	var delivered, abandoned, claimedUntil sql.NullInt64
	var reason string
	var claimedBy sql.NullString
	err := row.Scan(&o.ID, &o.JTI, &o.ClientID, &o.URI, &o.SID, &o.Subject, &reason, &created, &next, &o.Attempts, &o.LastError,
		&delivered, &abandoned, &claimedBy, &claimedUntil)
	o.Reason = Reason(reason)
	o.CreatedAt, o.NextAttemptAt = fromMS(created), fromMS(next)
	o.DeliveredAt, o.AbandonedAt = fromNullMS(delivered), fromNullMS(abandoned)
	o.ClaimedBy, o.ClaimedUntil = claimedBy.String, fromNullMS(claimedUntil)
	return o, err
}

// ClaimDeliveries claims up to c.Limit due rows of one destination for
// c.Worker in a single UPDATE ... RETURNING, so that two workers (two
// processes on one database) never hold the same row; rows whose claim has
// lapsed are claimable again. The rows come back oldest due first.
func (s *SQLite) ClaimDeliveries(ctx context.Context, c DeliveryClaim) ([]OutboxEntry, error) {
	where, args := `uri = ?`, []any{c.Worker, ms(c.Until), c.URI}
	switch {
	case c.URI != "":
	case len(c.Except) > 0:
		in, except := placeholders(c.Except)
		where, args = `uri NOT IN (`+in+`)`, append(args[:2], except...)
	default:
		where, args = `true`, args[:2]
	}
	args = append(args, ms(c.Now), ms(c.Now), c.Limit)
	out, err := queryAll(ctx, s.w, scanOutbox, `UPDATE logout_outbox SET claimed_by = ?, claimed_until = ?, `+claimNoteSQL+`
		WHERE id IN (SELECT id FROM logout_outbox WHERE `+where+` AND `+outboxPending+` AND next_attempt_at <= ?
			AND (claimed_until IS NULL OR claimed_until <= ?) ORDER BY next_attempt_at, id LIMIT ?)
		RETURNING `+outboxCols, args...)
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	sortDue(out)
	return out, nil
}

// PendingDeliveries counts deliveries neither delivered nor abandoned.
func (s *SQLite) PendingDeliveries(ctx context.Context) (int, error) {
	var n int
	err := s.r.QueryRowContext(ctx, `SELECT COUNT(*) FROM logout_outbox WHERE `+outboxPending).Scan(&n)
	return n, err
}

// Deliveries lists every delivery for an authentication session (all when sid
// is empty), oldest first.
func (s *SQLite) Deliveries(ctx context.Context, sid string) ([]OutboxEntry, error) {
	return queryAll(ctx, s.r, scanOutbox, `SELECT `+outboxCols+` FROM logout_outbox WHERE ? = '' OR sid = ? ORDER BY id`, sid, sid)
}

// DeliveryDone records one attempt with its audit event: delivered (ok), a
// retry at next, or abandoned (next zero and not ok). A delivered row is
// marked so whoever delivered it; a failure is recorded only by the worker
// that still holds the row's claim. Either way the row must still carry o's
// jti: a later end of the same pair has replaced the notice, which stays
// pending. An attempt that no longer owns its row is audited all the same
// (a duplicate delivery, with the same jti, is allowed and counted there).
func (s *SQLite) DeliveryDone(ctx context.Context, o OutboxEntry, at time.Time, ok bool, next time.Time, errText string) error {
	ev := deliveryOutcome(o, at, ok, next, errText)
	return s.tx(ctx, func(tx *sql.Tx) error {
		var res sql.Result
		var err error
		const mine = ` WHERE id = ? AND jti = ? AND ` + outboxPending
		const claim = ` AND claimed_by = ?`
		const unclaim = `, claimed_by = NULL, claimed_until = NULL`
		switch ev.Kind {
		case AuditLogoutDelivered:
			res, err = tx.ExecContext(ctx, `UPDATE logout_outbox SET delivered_at = ?, attempts = attempts + 1, last_error = ''`+unclaim+mine,
				ms(at), o.ID, o.JTI)
		case AuditLogoutAbandoned:
			res, err = tx.ExecContext(ctx, `UPDATE logout_outbox SET abandoned_at = ?, attempts = attempts + 1, last_error = ?`+unclaim+mine+claim,
				ms(at), errText, o.ID, o.JTI, o.ClaimedBy)
		default:
			res, err = tx.ExecContext(ctx, `UPDATE logout_outbox SET next_attempt_at = ?, attempts = attempts + 1, last_error = ?`+unclaim+mine+claim,
				ms(next), errText, o.ID, o.JTI, o.ClaimedBy)
		}
		if err != nil {
			return fmt.Errorf("outbox %d: %w", o.ID, err)
		}
		n, _ := res.RowsAffected()
		return addAudit(ctx, auditVia{tx}, staleDelivery(ev, n))
	})
}

// PurgeDeliveries deletes delivered and abandoned rows that finished before
// before (the audit keeps their record), in batches so that the writer is
// never held long, and returns how many it deleted.
func (s *SQLite) PurgeDeliveries(ctx context.Context, before time.Time) (int64, error) {
	return s.purgeBatches(ctx, "logout_outbox", "id",
		`(delivered_at IS NOT NULL OR abandoned_at IS NOT NULL) AND COALESCE(delivered_at, abandoned_at) < ?`, ms(before))
}

// purgeBatches deletes the rows of table that match where, purgeBatch at
// a time (see purgeQuery), until a batch deletes fewer.
func (s *SQLite) purgeBatches(ctx context.Context, table, key, where string, args ...any) (int64, error) {
	q := purgeQuery(table, key, where)
	return purgeLoop(func() (int64, error) {
		res, err := s.w.ExecContext(ctx, q, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	})
}

// --- audit ---

// AddAudit appends one audit event.
func (s *SQLite) AddAudit(ctx context.Context, ev AuditEvent) error {
	return addAudit(ctx, auditVia{s.w}, ev)
}

// Audit returns matching events, oldest first.
func (s *SQLite) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	return queryAll(ctx, s.r, scanAudit, `SELECT id, at, kind, user_id, sid, client_id, reason, initiator, detail FROM audit_events
		WHERE (? = '' OR user_id = ?) AND (? = '' OR sid = ?) ORDER BY at, id LIMIT ?`, f.UserID, f.UserID, f.SID, f.SID, auditLimit(f))
}

// auditLimit is the filter's limit, 1000 when unset.
func auditLimit(f AuditFilter) int {
	if f.Limit <= 0 {
		return 1000
	}
	return f.Limit
}

func scanAudit(row scanner) (AuditEvent, error) {
	var e AuditEvent
	var at int64
	err := row.Scan(&e.ID, &at, &e.Kind, &e.UserID, &e.SID, &e.ClientID, &e.Reason, &e.Initiator, &e.Detail)
	e.At = fromMS(at)
	return e, err
}

// ReaderForTest exposes the read pool for tests that inspect raw rows.
func (s *SQLite) ReaderForTest() *sql.DB { return s.r }

// --- several replicas: change feed, leases, refresh compare-and-swap ---

const insertChange = `INSERT INTO session_changes (sid, at) VALUES (?, ?)`

func addChange(ctx context.Context, e execer, sid string, at time.Time) error {
	if _, err := e.ExecContext(ctx, insertChange, sid, ms(at)); err != nil {
		return fmt.Errorf("change feed: %w", err)
	}
	return nil
}

// SessionChanges returns up to limit rows of the change feed after id
// after, oldest first.
func (s *SQLite) SessionChanges(ctx context.Context, after int64, limit int) ([]Change, error) {
	return queryAll(ctx, s.r, func(row scanner) (Change, error) {
		var c Change
		err := row.Scan(&c.ID, &c.SID, &c.TokenID)
		return c, err
	}, `SELECT id, sid, COALESCE(token_id, '') FROM session_changes WHERE id > ? ORDER BY id LIMIT ?`, after, limit)
}

// LastSessionChange returns the id of the newest row of the change feed (0
// when empty): where a replica that starts begins to read.
func (s *SQLite) LastSessionChange(ctx context.Context) (int64, error) {
	var id int64
	err := s.r.QueryRowContext(ctx, `SELECT COALESCE(MAX(id), 0) FROM session_changes`).Scan(&id)
	return id, err
}

// PurgeSessionChanges deletes change feed rows written before before, in
// batches, as the PostgreSQL store does, so that the writer is never held
// long.
func (s *SQLite) PurgeSessionChanges(ctx context.Context, before time.Time) error {
	_, err := s.purgeBatches(ctx, "session_changes", "id", `at < ?`, ms(before))
	return err
}

// AcquireLease takes or renews lease name for holder until now+ttl, and
// reports whether holder has it: it succeeds when the lease is free,
// expired at now, or already holder's.
func (s *SQLite) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	res, err := s.w.ExecContext(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE leases.holder = excluded.holder OR leases.expires_at <= ?4`, name, holder, ms(now.Add(ttl)), ms(now))
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// ReleaseLease gives lease name up if holder has it (a graceful stop), so
// that another replica takes over at its next attempt.
func (s *SQLite) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := s.w.ExecContext(ctx, `DELETE FROM leases WHERE name = ? AND holder = ?`, name, holder)
	return err
}

// RefreshGeneration returns the stored current generation of a refresh chain.
func (s *SQLite) RefreshGeneration(ctx context.Context, chainID string) (uint64, error) {
	var gen int64
	err := s.r.QueryRowContext(ctx, `SELECT gen FROM refresh_chains WHERE id = ?`, chainID).Scan(&gen)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("refresh chain: %w", ErrNotFound)
	}
	return uint64(gen), err
}

// RotateRefreshChain moves a refresh chain from generation from to from+1
// if it is still at from, and reports whether it did: of two replicas that
// rotate the same token at once, exactly one succeeds.
func (s *SQLite) RotateRefreshChain(ctx context.Context, chainID string, from uint64) (bool, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE refresh_chains SET gen = ?1 + 1 WHERE id = ?2 AND gen = ?1`, int64(from), chainID)
	if err != nil {
		return false, fmt.Errorf("rotate refresh chain %s: %w", chainID, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}
