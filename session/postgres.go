package session

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idleguard/idleguard/migrations"
)

// Postgres stores everything in a PostgreSQL database, through a pgx
// connection pool, so that several replicas can share it. It behaves as
// SQLite does, method for method: session/storetest runs on both.
//
// Times are Unix milliseconds, as in SQLite. Writes that must be seen
// together run in one transaction (READ COMMITTED): an end guards on
// "ended_at IS NULL", which PostgreSQL re-checks after waiting for a
// concurrent end, so two replicas ending one session write one end, one set
// of logouts and one audit event.
type Postgres struct {
	pool       *pgxpool.Pool
	connConfig *pgx.ConnConfig // for connections outside the pool (Changes)
	closing    context.Context // done once Close is called
	close      context.CancelFunc
	listeners  sync.WaitGroup
}

// IsPostgresURL reports whether a database setting names a PostgreSQL
// server (postgres:// or postgresql://) rather than a SQLite file.
func IsPostgresURL(database string) bool {
	l := strings.ToLower(database)
	return strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://")
}

// Pool defaults, when the URL sets none (pool_max_conns=N and the like in
// its query override them). A replica's database work is short statements;
// ten connections keep a 2-core replica busy and let several replicas share
// a server's default max_connections (100).
const (
	pgMaxConns       = 10
	pgMinConns       = 1
	pgMaxConnIdle    = 5 * time.Minute
	pgConnectTimeout = 5 * time.Second
)

// PostgresConfig parses a postgres:// URL into a pool configuration with
// idleguard's defaults. Its errors never repeat the password.
func PostgresConfig(dsn string) (*pgxpool.Config, error) {
	if !IsPostgresURL(dsn) {
		return nil, errors.New("not a postgres:// or postgresql:// URL")
	}
	u, err := url.Parse(dsn)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which holds the password
		}
		return nil, fmt.Errorf("cannot parse it: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			err = inner // pgconn's message repeats the URL (redacted)
		}
		return nil, fmt.Errorf("%s: %w", u.Redacted(), err)
	}
	q := u.Query()
	if !q.Has("pool_max_conns") {
		cfg.MaxConns = pgMaxConns
	}
	if !q.Has("pool_min_conns") {
		cfg.MinConns = pgMinConns
	}
	if !q.Has("pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = pgMaxConnIdle
	}
	if !q.Has("connect_timeout") {
		cfg.ConnConfig.ConnectTimeout = pgConnectTimeout
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "idleguard"
	}
	return cfg, nil
}

// RedactURL returns a database setting fit for a log line: a PostgreSQL
// URL without its password; a file path as it is.
func RedactURL(database string) string {
	if !IsPostgresURL(database) {
		return database
	}
	u, err := url.Parse(database)
	if err != nil {
		return "postgres://(unparsable URL)"
	}
	return u.Redacted()
}

// OpenPostgres connects to the database at dsn (a postgres:// URL) and
// brings its schema up to date, under a lock that replicas starting
// together wait on.
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	cfg, err := PostgresConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	where := RedactURL(dsn)
	if err := migrations.ApplyPostgres(ctx, cfg.ConnConfig.Copy()); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", where, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", where, err)
	}
	closing, closeFn := context.WithCancel(context.WithoutCancel(ctx))
	return &Postgres{pool: pool, connConfig: cfg.ConnConfig, closing: closing, close: closeFn}, nil
}

// Close stops the listeners (Changes) and closes the connection pool.
func (p *Postgres) Close() error {
	p.close()
	p.listeners.Wait()
	p.pool.Close()
	return nil
}

// Ping checks that the database answers.
func (p *Postgres) Ping(ctx context.Context) error { return p.pool.Ping(ctx) }

// storable reports whether s can be stored in a PostgreSQL text column
// (valid UTF-8 without NUL; SQLite takes any bytes). A key that cannot be
// stored names no row: lookups by such a key, which only an attacker sends,
// find nothing instead of failing.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// storableText makes free text (audit details, error texts, requested
// scopes) storable, replacing what PostgreSQL refuses with U+FFFD, so that
// no input can make the write that records it fail.
func storableText(s string) string {
	if storable(s) {
		return s
	}
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", "\uFFFD"), "\uFFFD")
}

func pgUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505" // unique_violation
}

// pgQuerier is the pool or a transaction.
type pgQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// pgQueryAll runs q and scans every row with a scanner shared with SQLite.
func pgQueryAll[T any](ctx context.Context, db pgQuerier, scan func(scanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (T, error) { return scan(r) })
}

func pgAffect(tag pgconn.CommandTag, err error, what string) error {
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// txAttempts bounds how often a transaction that PostgreSQL aborted to break
// a deadlock is run again.
const txAttempts = 3

// tx runs fn in a transaction. Replicas that end overlapping sessions at
// once may lock rows in opposite orders; PostgreSQL then aborts one of them
// (deadlock_detected), and since every fn here only writes the database,
// it is run again after a short random pause, so that the transaction it
// lost to can finish first instead of meeting the same deadlock again.
func (p *Postgres) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	var err error
	for attempt := range txAttempts {
		if attempt > 0 {
			pause := time.NewTimer(time.Duration(attempt) * (5*time.Millisecond + rand.N(20*time.Millisecond)))
			select {
			case <-pause.C:
			case <-ctx.Done():
				pause.Stop()
				return errors.Join(err, ctx.Err())
			}
		}
		if err = pgx.BeginFunc(ctx, p.pool, fn); !retryable(err) {
			return err
		}
	}
	return err
}

func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001") // deadlock_detected, serialization_failure
}

const pgInsertAudit = `INSERT INTO audit_events (at, kind, user_id, sid, client_id, reason, initiator, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`

func pgAudit(ctx context.Context, db pgQuerier, ev AuditEvent) error {
	_, err := db.Exec(ctx, pgInsertAudit, ms(ev.At), ev.Kind, storableText(ev.UserID), storableText(ev.SID), storableText(ev.ClientID),
		ev.Reason, storableText(ev.Initiator), storableText(ev.Detail))
	if err != nil {
		return fmt.Errorf("audit %s: %w", ev.Kind, err)
	}
	return nil
}

// --- users ---

// CreateUser adds a user; ErrConflict when the username is taken.
func (p *Postgres) CreateUser(ctx context.Context, u *User) error {
	if !storable(u.Username) || !storable(u.Name) || !storable(u.Email) {
		return errors.New("create user: username, name and email must be UTF-8 without NUL characters")
	}
	if u.ID == "" {
		u.ID = NewID()
	}
	_, err := p.pool.Exec(ctx, `INSERT INTO users (id, username, password_hash, name, email, email_verified, created_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, u.ID, u.Username, u.PasswordHash, u.Name, u.Email, u.EmailVerified, ms(u.CreatedAt))
	if pgUnique(err) {
		return fmt.Errorf("user %q: %w", u.Username, ErrConflict)
	}
	return err
}

// UserByUsername looks a user up by the name they sign in with.
func (p *Postgres) UserByUsername(ctx context.Context, username string) (*User, error) {
	if !storable(username) {
		return nil, ErrNotFound
	}
	return scanUser(p.pool.QueryRow(ctx, `SELECT `+userCols+` FROM users WHERE username = $1`, username))
}

// UserByID looks a user up by subject identifier.
func (p *Postgres) UserByID(ctx context.Context, id string) (*User, error) {
	if !storable(id) {
		return nil, ErrNotFound
	}
	return scanUser(p.pool.QueryRow(ctx, `SELECT `+userCols+` FROM users WHERE id = $1`, id))
}

// ListUsers returns every user ordered by username.
func (p *Postgres) ListUsers(ctx context.Context) ([]*User, error) {
	return pgQueryAll(ctx, p.pool, scanUser, `SELECT `+userCols+` FROM users ORDER BY username`)
}

// SetPassword replaces a user's password hash.
func (p *Postgres) SetPassword(ctx context.Context, username, hash string) error {
	if !storable(username) {
		return fmt.Errorf("user %s: %w", username, ErrNotFound)
	}
	tag, err := p.pool.Exec(ctx, `UPDATE users SET password_hash = $1 WHERE username = $2`, hash, username)
	return pgAffect(tag, err, "user "+username)
}

// DeleteUser removes a user. Their sessions are left for the caller to end.
func (p *Postgres) DeleteUser(ctx context.Context, username string) error {
	if !storable(username) {
		return fmt.Errorf("user %s: %w", username, ErrNotFound)
	}
	tag, err := p.pool.Exec(ctx, `DELETE FROM users WHERE username = $1`, username)
	return pgAffect(tag, err, "user "+username)
}

// --- authentication and application sessions ---

// CreateAuthSession stores a new authentication session and its
// session_start audit event.
func (p *Postgres) CreateAuthSession(ctx context.Context, a *AuthSession) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO auth_sessions (id, user_id, auth_time, amr, last_active_at, idle_limit_ms, absolute_deadline, deadline)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, a.ID, a.UserID, ms(a.AuthTime), strings.Join(a.AMR, " "), ms(a.LastActiveAt),
			a.IdleLimit.Milliseconds(), ms(a.AbsoluteDeadline), ms(a.Deadline))
		if err != nil {
			return fmt.Errorf("create auth session: %w", err)
		}
		return pgAudit(ctx, tx, sessionStartEvent(a))
	})
}

// Reauthenticate records a fresh sign-in into a live session (prompt=login,
// max_age): new auth_time and amr, and the activity of the sign-in.
func (p *Postgres) Reauthenticate(ctx context.Context, a *AuthSession) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE auth_sessions SET auth_time = $1, amr = $2, last_active_at = $3, deadline = $4
			WHERE id = $5 AND ended_at IS NULL`, ms(a.AuthTime), strings.Join(a.AMR, " "), ms(a.LastActiveAt), ms(a.Deadline), a.ID)
		if err := pgAffect(tag, err, "auth session "+a.ID); err != nil {
			return err
		}
		if err := pgAudit(ctx, tx, reauthenticatedEvent(a)); err != nil {
			return err
		}
		return addChanges(ctx, tx, []string{a.ID}, []int64{ms(a.AuthTime)})
	})
}

// AuthSession loads one authentication session with all of its application
// sessions, live and ended, oldest first.
func (p *Postgres) AuthSession(ctx context.Context, id string) (*AuthSession, []*AppSession, error) {
	if !storable(id) {
		return nil, nil, fmt.Errorf("auth session: %w", ErrNotFound)
	}
	a, err := scanAuth(p.pool.QueryRow(ctx, `SELECT `+authCols+` FROM auth_sessions WHERE id = $1`, id))
	if err != nil {
		return nil, nil, fmt.Errorf("auth session %s: %w", id, err)
	}
	apps, err := p.appsOf(ctx, []string{id})
	if err != nil {
		return nil, nil, err
	}
	return a, apps[id], nil
}

// AuthSessions loads many authentication sessions with their application
// sessions in three queries (the sweeper's batch). Missing ids are absent
// from the result.
func (p *Postgres) AuthSessions(ctx context.Context, ids []string) ([]*AuthSession, map[string][]*AppSession, error) {
	keys := make([]string, 0, len(ids))
	for _, id := range ids {
		if storable(id) {
			keys = append(keys, id)
		}
	}
	out, err := pgQueryAll(ctx, p.pool, scanAuth, `SELECT `+authCols+` FROM auth_sessions WHERE id = ANY($1)`, keys)
	if err != nil {
		return nil, nil, err
	}
	apps, err := p.appsOf(ctx, keys)
	return out, apps, err
}

// appsOf loads the application sessions, with their refresh chains, of the
// given authentication sessions, oldest first.
func (p *Postgres) appsOf(ctx context.Context, sids []string) (map[string][]*AppSession, error) {
	list, err := pgQueryAll(ctx, p.pool, scanApp, `SELECT `+appCols+` FROM app_sessions WHERE auth_session_id = ANY($1) ORDER BY joined_at, id`, sids)
	if err != nil {
		return nil, err
	}
	apps := make(map[string][]*AppSession, len(sids))
	byID := make(map[string]*AppSession, len(list))
	for _, a := range list {
		apps[a.AuthSessionID] = append(apps[a.AuthSessionID], a)
		byID[a.ID] = a
	}
	if len(byID) == 0 {
		return apps, nil
	}
	rows, err := p.pool.Query(ctx, `SELECT c.id, c.app_session_id, c.gen FROM refresh_chains c
		JOIN app_sessions a ON a.id = c.app_session_id WHERE a.auth_session_id = ANY($1)`, sids)
	if err != nil {
		return nil, err
	}
	var id, app string
	var gen int64
	_, err = pgx.ForEachRow(rows, []any{&id, &app, &gen}, func() error {
		attachChain(byID, id, app, gen)
		return nil
	})
	return apps, err
}

// AddRefreshChain starts a refresh chain for an application session.
func (p *Postgres) AddRefreshChain(ctx context.Context, appSessionID, chainID string, gen uint64, at time.Time) error {
	_, err := p.pool.Exec(ctx, `INSERT INTO refresh_chains (id, app_session_id, gen, created_at) VALUES ($1, $2, $3, $4)`,
		chainID, appSessionID, int64(gen), ms(at))
	return err
}

// JoinApp stores a new application session and, in the same transaction,
// the authentication session's new effective limit and deadline (joining a
// stricter app tightens it) and an app_join audit event. ErrConflict when a
// live application session already exists for the pair.
func (p *Postgres) JoinApp(ctx context.Context, app *AppSession, auth ActivityUpdate, userID string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO app_sessions (id, auth_session_id, client_id, scopes, idle_exempt, joined_at, last_active_at, deadline)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, app.ID, app.AuthSessionID, app.ClientID, storableText(strings.Join(app.Scopes, " ")),
			app.IdleExempt, ms(app.JoinedAt), ms(app.LastActiveAt), nullMS(app.Deadline))
		if pgUnique(err) {
			return fmt.Errorf("join %s to %s: %w", app.ClientID, app.AuthSessionID, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("join %s to %s: %w", app.ClientID, app.AuthSessionID, err)
		}
		if err := sendActivity(ctx, tx, []ActivityUpdate{auth}); err != nil {
			return err
		}
		if err := pgAudit(ctx, tx, appJoinEvent(app, auth, userID)); err != nil {
			return err
		}
		return addChanges(ctx, tx, []string{app.AuthSessionID}, []int64{ms(app.JoinedAt)})
	})
}

// sendActivity writes activity updates in one round trip (a pipelined
// batch). Times and generations only move forward; ended rows are left alone.
// The deadline is computed from the stored and the written last activity,
// whichever is later (as SQLite's updateAuthActivity), so that a replica
// writing an older view than another's never moves the stored deadline
// before the activity the store already holds.
func sendActivity(ctx context.Context, tx pgx.Tx, updates []ActivityUpdate) error {
	b := &pgx.Batch{}
	for _, u := range updates {
		b.Queue(`UPDATE auth_sessions SET last_active_at = GREATEST(last_active_at, $1), idle_limit_ms = $2,
			deadline = LEAST(GREATEST(last_active_at, $1) + $2, absolute_deadline, GREATEST($3, last_active_at + $2))
			WHERE id = $4 AND ended_at IS NULL`, ms(u.LastActiveAt), u.IdleLimit.Milliseconds(), ms(u.Deadline), u.AuthSessionID)
		for _, a := range u.Apps {
			b.Queue(`UPDATE app_sessions SET last_active_at = GREATEST(last_active_at, $1), deadline = $2
				WHERE id = $3 AND ended_at IS NULL`, ms(a.LastActiveAt), nullMS(a.Deadline), a.ID)
			for chain, gen := range a.RefreshChains {
				b.Queue(`UPDATE refresh_chains SET gen = GREATEST(gen, $1) WHERE id = $2`, int64(gen), chain)
			}
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("update activity: %w", err)
	}
	return nil
}

// SetAppScopes replaces the scopes granted to a live application session
// (a later authorization of the same app asked for different ones).
func (p *Postgres) SetAppScopes(ctx context.Context, id string, scopes []string) error {
	tag, err := p.pool.Exec(ctx, `UPDATE app_sessions SET scopes = $1 WHERE id = $2 AND ended_at IS NULL`,
		storableText(strings.Join(scopes, " ")), id)
	return pgAffect(tag, err, "app session "+id)
}

// FlushActivity writes coalesced activity for many sessions in one
// transaction and one round trip. Rows that have ended meanwhile are left
// alone.
func (p *Postgres) FlushActivity(ctx context.Context, updates []ActivityUpdate) error {
	if len(updates) == 0 {
		return nil
	}
	return p.tx(ctx, func(tx pgx.Tx) error { return sendActivity(ctx, tx, updates) })
}

// TightenDeadlines is SQLite.TightenDeadlines: it lowers stored limits and
// deadlines that a stricter configuration has made too late, never later,
// and records the policy so that a restart with the same one skips the scan.
func (p *Postgres) TightenDeadlines(ctx context.Context, l Limits) error {
	fingerprint, err := json.Marshal(l) // map keys are sorted: stable
	if err != nil {
		return err
	}
	var last string
	err = p.pool.QueryRow(ctx, `SELECT value FROM meta WHERE name = 'tightened_to'`).Scan(&last)
	if err == nil && last == string(fingerprint) {
		return nil
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO meta (name, value) VALUES ('tightened_to', $1) ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
			string(fingerprint))
		b.Queue(`UPDATE auth_sessions SET absolute_deadline = LEAST(absolute_deadline, auth_time + $1),
			deadline = LEAST(deadline, auth_time + $1) WHERE ended_at IS NULL AND absolute_deadline > auth_time + $1`, l.MaxLifetime.Milliseconds())
		b.Queue(`UPDATE auth_sessions SET idle_limit_ms = $1, deadline = LEAST(deadline, last_active_at + $1)
			WHERE ended_at IS NULL AND idle_limit_ms > $1`, l.IdleTimeout.Milliseconds())
		for id, c := range l.Clients {
			switch {
			case c.Exempt && c.IdleTimeout > 0:
				b.Queue(`UPDATE app_sessions SET deadline = LEAST(COALESCE(deadline, last_active_at + $1), last_active_at + $1)
					WHERE client_id = $2 AND ended_at IS NULL AND idle_exempt`, c.IdleTimeout.Milliseconds(), id)
			case !c.Exempt && c.IdleTimeout > 0:
				b.Queue(`UPDATE auth_sessions SET idle_limit_ms = $1, deadline = LEAST(deadline, last_active_at + $1)
					WHERE ended_at IS NULL AND idle_limit_ms > $1 AND id IN
					(SELECT auth_session_id FROM app_sessions WHERE client_id = $2 AND ended_at IS NULL AND NOT idle_exempt)`,
					c.IdleTimeout.Milliseconds(), id)
			}
			if !c.Exempt && c.AppIdleTimeout > 0 {
				b.Queue(`UPDATE app_sessions SET deadline = LEAST(COALESCE(deadline, last_active_at + $1), last_active_at + $1)
					WHERE client_id = $2 AND ended_at IS NULL AND NOT idle_exempt`, c.AppIdleTimeout.Milliseconds(), id)
			}
		}
		return tx.SendBatch(ctx, b).Close()
	})
}

// DueAuthSessions returns up to limit live authentication sessions whose
// stored deadline is at or before now, from the partial deadline index.
func (p *Postgres) DueAuthSessions(ctx context.Context, now time.Time, limit int) ([]string, error) {
	return pgQueryAll(ctx, p.pool, scanString, `SELECT id FROM auth_sessions WHERE ended_at IS NULL AND deadline <= $1
		ORDER BY deadline LIMIT $2`, ms(now), limit)
}

// DueAppSessions is DueAuthSessions for application sessions with a deadline
// of their own; it returns their authentication session ids.
func (p *Postgres) DueAppSessions(ctx context.Context, now time.Time, limit int) ([]string, error) {
	return pgQueryAll(ctx, p.pool, scanString, `SELECT DISTINCT auth_session_id FROM (SELECT auth_session_id FROM app_sessions
		WHERE ended_at IS NULL AND deadline IS NOT NULL AND deadline <= $1 ORDER BY deadline LIMIT $2) AS due`, ms(now), limit)
}

// EndSessions applies an End in one transaction, as SQLite.EndSessions.
func (p *Postgres) EndSessions(ctx context.Context, e End) error { return p.EndMany(ctx, []End{e}) }

// EndMany applies several Ends in one transaction (the sweeper's batch),
// in a fixed number of statements whatever the batch's size: one UPDATE of
// the authentication sessions and one of the application sessions, each
// over arrays, then the audit events, outbox rows and change feed rows that
// applyEnd derives from which rows those UPDATEs ended, each inserted in one
// statement.
//
// The first End that names a row decides its reason and, for an End with
// IfDue, its condition (a later End of the batch naming the same row is
// applied as SQLite applies it once the row has ended).
func (p *Postgres) EndMany(ctx context.Context, ends []End) error {
	if len(ends) == 0 {
		return nil
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		w, err := endRows(ctx, tx, ends)
		if err != nil {
			return err
		}
		for _, e := range ends {
			if err := applyEnd(ctx, w, e); err != nil {
				return err
			}
		}
		return w.insert(ctx, tx)
	})
}

// pgEnds is the endWriter of a batch: it answers from the rows the set
// UPDATEs ended (each once, to the first End that names it) and gathers the
// rows to insert.
type pgEnds struct {
	apps, auths map[string]bool // ended by this batch, not yet claimed
	audit       []AuditEvent
	outbox      []LogoutNotice
	outboxAt    []int64
	changes     []string
	changesAt   []int64
	signals     []pgSignal
}

// endColumns are the arrays one set UPDATE reads, a row per ended id.
type endColumns struct {
	ids, reasons, by []string
	at, limit, due   []int64 // due 0: unconditional
}

func (c *endColumns) add(id string, e End, due int64) {
	c.ids, c.at, c.reasons, c.due = append(c.ids, id), append(c.at, ms(e.At)), append(c.reasons, string(e.Reason)), append(c.due, due)
	c.by, c.limit = append(c.by, storableText(e.Initiator)), append(c.limit, e.IdleLimit.Milliseconds())
}

// ifDue is an End's condition as a column value: 0 for none.
func ifDue(e End) int64 {
	if e.IfDue.IsZero() {
		return 0
	}
	return ms(e.IfDue)
}

func endRows(ctx context.Context, tx pgx.Tx, ends []End) (*pgEnds, error) {
	var auth endColumns
	seen := map[string]bool{}
	for _, e := range ends {
		if e.AuthSessionID != "" && !seen[e.AuthSessionID] {
			seen[e.AuthSessionID] = true
			auth.add(e.AuthSessionID, e, ifDue(e))
		}
	}
	w := &pgEnds{}
	var err error
	w.auths, err = endedIDs(ctx, tx, `UPDATE auth_sessions s SET ended_at = v.at, end_reason = v.reason, ended_by = v.by,
		idle_limit_ms = CASE WHEN v.lim > 0 THEN v.lim ELSE s.idle_limit_ms END
		FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[]) AS v(id, at, reason, by, lim, due)
		WHERE s.id = v.id AND s.ended_at IS NULL AND (v.due = 0 OR s.deadline <= v.due) RETURNING s.id`,
		auth.ids, auth.at, auth.reasons, auth.by, auth.limit, auth.due)
	if err != nil {
		return nil, fmt.Errorf("end auth sessions: %w", err)
	}
	app := appColumns(ends, w.auths)
	w.apps, err = endedIDs(ctx, tx, `UPDATE app_sessions a SET ended_at = v.at, end_reason = v.reason
		FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[]) AS v(id, at, reason, due)
		WHERE a.id = v.id AND a.ended_at IS NULL AND (v.due = 0 OR a.deadline <= v.due) RETURNING a.id`,
		app.ids, app.at, app.reasons, app.due)
	if err != nil {
		return nil, fmt.Errorf("end app sessions: %w", err)
	}
	return w, nil
}

// appColumns lists the application sessions of the Ends that applyEnd will
// apply, given the authentication sessions the batch ended: a conditional
// End is skipped whole unless it is the first End to claim its ended
// authentication session. An End of application sessions alone keeps its
// condition, on each application session's own deadline.
func appColumns(ends []End, authEnded map[string]bool) endColumns {
	var app endColumns
	claimed, seen := map[string]bool{}, map[string]bool{}
	for _, e := range ends {
		due := ifDue(e)
		if id := e.AuthSessionID; id != "" {
			skip := due > 0 && (!authEnded[id] || claimed[id])
			claimed[id] = claimed[id] || authEnded[id]
			if skip {
				continue
			}
			due = 0
		}
		for _, a := range e.AppSessions {
			if !seen[a.ID] {
				seen[a.ID] = true
				app.add(a.ID, e, due)
			}
		}
	}
	return app
}

func endedIDs(ctx context.Context, tx pgx.Tx, q string, args ...any) (map[string]bool, error) {
	ids, err := pgQueryAll(ctx, tx, scanString, q, args...)
	set := make(map[string]bool, len(ids))
	for _, id := range ids {
		set[id] = true
	}
	return set, err
}

func claim(set map[string]bool, id string) bool {
	if !set[id] {
		return false
	}
	delete(set, id)
	return true
}

// endApp and endAuth answer from the set UPDATEs, which applied each
// row's condition already.
func (w *pgEnds) endApp(_ context.Context, _ int64, _ Reason, id string, _ int64) (bool, error) {
	return claim(w.apps, id), nil
}

func (w *pgEnds) endAuth(_ context.Context, _ int64, e End, _ int64) (bool, error) {
	return claim(w.auths, e.AuthSessionID), nil
}

func (w *pgEnds) addOutbox(_ context.Context, at int64, n LogoutNotice) error {
	w.outbox, w.outboxAt = append(w.outbox, n), append(w.outboxAt, at)
	return nil
}

func (w *pgEnds) writeAudit(_ context.Context, ev AuditEvent) error {
	w.audit = append(w.audit, ev)
	return nil
}

func (w *pgEnds) addChange(_ context.Context, sid string, at int64) error {
	w.changes, w.changesAt = append(w.changes, sid), append(w.changesAt, at)
	return nil
}

// insert writes the gathered audit events, outbox rows and change feed
// rows, in order; the change feed last (see addChanges).
func (w *pgEnds) insert(ctx context.Context, tx pgx.Tx) error {
	if len(w.audit) > 0 {
		cols := make([][]string, 7)
		at := make([]int64, len(w.audit))
		for i, ev := range w.audit {
			at[i] = ms(ev.At)
			for c, v := range []string{ev.Kind, ev.UserID, ev.SID, ev.ClientID, ev.Reason, ev.Initiator, ev.Detail} {
				cols[c] = append(cols[c], storableText(v))
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_events (at, kind, user_id, sid, client_id, reason, initiator, detail)
			SELECT at, kind, user_id, sid, client_id, reason, initiator, detail
			FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
				WITH ORDINALITY AS v(at, kind, user_id, sid, client_id, reason, initiator, detail, n) ORDER BY n`,
			at, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]); err != nil {
			return fmt.Errorf("audit ends: %w", err)
		}
	}
	if err := insertNotices(ctx, tx, w.outbox, w.outboxAt); err != nil {
		return err
	}
	if err := pgInsertSignals(ctx, tx, w.signals); err != nil {
		return err
	}
	return addChanges(ctx, tx, w.changes, w.changesAt)
}

// insertNotices queues logout notices in one statement, as SQLite's
// insertOutbox does one by one: at most one pending row per (client, sid),
// a later notice replacing a pending one with a fresh jti and the earlier
// due time of the two. PostgreSQL refuses to upsert one row twice in a
// statement, so the notices of a pair are folded here first, the last one
// winning with the earliest time.
func insertNotices(ctx context.Context, tx pgx.Tx, notices []LogoutNotice, at []int64) error {
	if len(notices) == 0 {
		return nil
	}
	type pair struct{ client, sid string }
	index := make(map[pair]int, len(notices))
	cols := make([][]string, 6)
	var created, due []int64
	for i, n := range notices {
		row := []string{NewID(), n.ClientID, n.URI, n.SID, n.Subject, string(n.Reason)}
		k, seen := index[pair{n.ClientID, n.SID}]
		if !seen {
			index[pair{n.ClientID, n.SID}] = len(created)
			for c, v := range row {
				cols[c] = append(cols[c], v)
			}
			created, due = append(created, at[i]), append(due, at[i])
			continue
		}
		for c, v := range row {
			cols[c][k] = v
		}
		created[k], due[k] = at[i], min(due[k], at[i])
	}
	if _, err := tx.Exec(ctx, `INSERT INTO logout_outbox (jti, client_id, uri, sid, subject, reason, created_at, next_attempt_at)
		SELECT jti, client_id, uri, sid, subject, reason, created, due
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])
			WITH ORDINALITY AS v(jti, client_id, uri, sid, subject, reason, created, due, n) ORDER BY n
		ON CONFLICT (client_id, sid) WHERE `+outboxPending+` DO UPDATE SET
		jti = excluded.jti, uri = excluded.uri, subject = excluded.subject, reason = excluded.reason, created_at = excluded.created_at,
		next_attempt_at = LEAST(logout_outbox.next_attempt_at, excluded.next_attempt_at), attempts = 0, last_error = '',
		claimed_by = NULL, claimed_until = NULL`,
		cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], created, due); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// SessionsOfUser lists a user's authentication sessions, newest first, with
// their application sessions; without withEnded only those still in force
// (live, or ended with a live application session).
func (p *Postgres) SessionsOfUser(ctx context.Context, userID string, withEnded bool) ([]*AuthSession, map[string][]*AppSession, error) {
	if !storable(userID) {
		return nil, map[string][]*AppSession{}, nil
	}
	q := `SELECT ` + authCols + ` FROM auth_sessions WHERE user_id = $1`
	if !withEnded {
		q += ` AND (ended_at IS NULL OR EXISTS (SELECT 1 FROM app_sessions a WHERE a.auth_session_id = auth_sessions.id AND a.ended_at IS NULL))`
	}
	out, err := pgQueryAll(ctx, p.pool, scanAuth, q+` ORDER BY auth_time DESC`, userID)
	if err != nil {
		return nil, nil, err
	}
	ids := make([]string, len(out))
	for i, a := range out {
		ids[i] = a.ID
	}
	apps, err := p.appsOf(ctx, ids)
	return out, apps, err
}

// --- revoked access tokens ---

// RevokeToken records that one access token was revoked (RFC 7009), with a
// row of the change feed that names it (Change.TokenID), so that every
// replica refuses it. The row is dated at the token's expiry, so that the
// feed keeps it while the token could still be presented.
func (p *Postgres) RevokeToken(ctx context.Context, tokenID string, expires time.Time) error {
	if !storable(tokenID) {
		return errors.New("revoke token: the token id is not UTF-8 text")
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO revoked_tokens (token_id, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING`, tokenID, ms(expires))
		if err != nil || tag.RowsAffected() == 0 {
			return err // revoked before: its change is on the feed already
		}
		b := &pgx.Batch{}
		b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(changeFeedLock))
		b.Queue(`INSERT INTO session_changes (sid, at, token_id) VALUES ('', $1, $2)`, ms(expires), tokenID)
		b.Queue(`SELECT pg_notify($1, '')`, ChangesChannel)
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("change feed: %w", err)
		}
		return nil
	})
}

// RevokedTokens returns the ids of revoked tokens that have not expired by
// now. It only reads: PurgeRevokedTokens deletes the rest.
func (p *Postgres) RevokedTokens(ctx context.Context, now time.Time) ([]string, error) {
	return pgQueryAll(ctx, p.pool, scanString, `SELECT token_id FROM revoked_tokens WHERE expires_at >= $1`, ms(now))
}

// PurgeRevokedTokens deletes the revocations of tokens that have expired by
// now (an expired token is refused anyway) and returns how many it deleted.
func (p *Postgres) PurgeRevokedTokens(ctx context.Context, now time.Time) (int64, error) {
	return p.purgeBatches(ctx, "revoked_tokens", "token_id", `expires_at < $1`, ms(now))
}

// purgeBatches deletes the rows of table that match where, purgeBatch at
// a time (see purgeQuery), until a batch deletes fewer. Each batch is a transaction of its own, so that replicas
// purging at once only wait on one another's batch.
func (p *Postgres) purgeBatches(ctx context.Context, table, key, where string, args ...any) (int64, error) {
	q := purgeQuery(table, key, where)
	return purgeLoop(func() (int64, error) {
		tag, err := p.pool.Exec(ctx, q, args...)
		return tag.RowsAffected(), err
	})
}

// --- authorization requests ---

// SaveAuthRequest stores an authorization request, or replaces the data of
// one that has no code yet: once a code is issued its request is frozen
// (ErrConflict).
func (p *Postgres) SaveAuthRequest(ctx context.Context, id string, data []byte, created, expires time.Time) error {
	tag, err := p.pool.Exec(ctx, `INSERT INTO auth_requests (id, data, created_at, expires_at) VALUES ($1, $2, $3, $4)
		ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE auth_requests.code_hash IS NULL`,
		id, storableText(string(data)), ms(created), ms(expires))
	if err = pgAffect(tag, err, "auth request"); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("auth request %s has a code: %w", id, ErrConflict)
	}
	return err
}

// AuthRequestData returns the data of an unexpired authorization request
// that has no code yet; a request whose code was issued is not found.
func (p *Postgres) AuthRequestData(ctx context.Context, id string, now time.Time) ([]byte, error) {
	var data string
	err := pgx.ErrNoRows
	if storable(id) {
		err = p.pool.QueryRow(ctx, `SELECT data FROM auth_requests WHERE id = $1 AND expires_at > $2 AND code_hash IS NULL`,
			id, ms(now)).Scan(&data)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("auth request: %w", ErrNotFound)
	}
	return []byte(data), err
}

// SaveAuthCode attaches the hash of an issued code to a request, at most
// once: a request that already has a code answers ErrConflict. Two racing
// callbacks (at two replicas) cannot both issue one: the second UPDATE
// waits for the first and then finds code_hash set.
func (p *Postgres) SaveAuthCode(ctx context.Context, id, codeHash string) error {
	if !storable(id) {
		return fmt.Errorf("auth request: %w", ErrNotFound)
	}
	tag, err := p.pool.Exec(ctx, `UPDATE auth_requests SET code_hash = $1 WHERE id = $2 AND code_hash IS NULL`, codeHash, id)
	if err = pgAffect(tag, err, "auth request"); !errors.Is(err, ErrNotFound) {
		return err
	}
	var exists bool
	if e := p.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM auth_requests WHERE id = $1)`, id).Scan(&exists); e != nil {
		return e
	}
	if exists {
		return fmt.Errorf("auth request %s already has a code: %w", id, ErrConflict)
	}
	return err
}

// AuthRequestOfCode returns the data of the unexpired request that a code
// was issued for, redeemed or not, without redeeming it: the token endpoint
// checks who presents the code before the code counts as used.
func (p *Postgres) AuthRequestOfCode(ctx context.Context, codeHash string, now time.Time) ([]byte, error) {
	if !storable(codeHash) {
		return nil, fmt.Errorf("auth code: %w", ErrNotFound)
	}
	var data string
	err := p.pool.QueryRow(ctx, `SELECT data FROM auth_requests WHERE code_hash = $1 AND expires_at > $2`, codeHash, ms(now)).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("auth code: %w", ErrNotFound)
	}
	return []byte(data), err
}

// AuthRequestByCode redeems a code: the first call returns the request it
// was issued for and marks it redeemed in the same statement (an UPDATE
// guarded by redeemed_at IS NULL, which a concurrent exchange at another
// replica waits on and then fails), so that a code is redeemed once (RFC
// 6749 section 4.1.2). Until the request expires, every later call returns
// the same id and data with ErrCodeReused.
func (p *Postgres) AuthRequestByCode(ctx context.Context, codeHash string, now time.Time) (string, []byte, error) {
	if !storable(codeHash) {
		return "", nil, fmt.Errorf("auth code: %w", ErrNotFound)
	}
	var id, data string
	err := p.pool.QueryRow(ctx, `UPDATE auth_requests SET redeemed_at = $1
		WHERE code_hash = $2 AND expires_at > $1 AND redeemed_at IS NULL RETURNING id, data`, ms(now), codeHash).Scan(&id, &data)
	if !errors.Is(err, pgx.ErrNoRows) {
		return id, []byte(data), err
	}
	err = p.pool.QueryRow(ctx, `SELECT id, data FROM auth_requests WHERE code_hash = $1 AND expires_at > $2`, codeHash, ms(now)).Scan(&id, &data)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", nil, fmt.Errorf("auth code: %w", ErrNotFound)
	case err != nil:
		return "", nil, err
	}
	return id, []byte(data), fmt.Errorf("auth code of request %s: %w", id, ErrCodeReused)
}

// PurgeAuthRequests deletes expired requests.
func (p *Postgres) PurgeAuthRequests(ctx context.Context, now time.Time) error {
	_, err := p.pool.Exec(ctx, `DELETE FROM auth_requests WHERE expires_at <= $1`, ms(now))
	return err
}

// --- sign-in throttling ---

// ReserveLoginAttempt counts one sign-in attempt against every key before
// the password is checked, in one transaction, so that concurrent guesses at
// every replica cannot all pass the limit: each key's row is created if
// missing, then all are locked (SELECT ... FOR UPDATE, in key order, so
// that two attempts sharing keys never deadlock), read, and written. When a
// key is locked at now, nothing is counted and the longest remaining lock is
// returned instead.
func (p *Postgres) ReserveLoginAttempt(ctx context.Context, keys []string, now time.Time, pol LoginPolicy) (LoginAttempt, time.Duration, error) {
	a := LoginAttempt{Keys: keys}
	var wait time.Duration
	err := p.tx(ctx, func(tx pgx.Tx) error {
		stored, err := lockLoginCounts(ctx, tx, keys)
		if err != nil {
			return err
		}
		var counts []int
		if counts, a.Locks, wait = pol.reserve(stored, now); wait > 0 {
			return nil
		}
		return writeLoginCounts(ctx, tx, keys, counts, a.Locks, now)
	})
	return reserved(a, wait, err)
}

// lockLoginCounts creates the missing rows of keys (a count of zero, which
// the policy forgets at once), locks every row in key order and returns
// their counts in the order of keys.
func lockLoginCounts(ctx context.Context, tx pgx.Tx, keys []string) ([]loginCount, error) {
	sorted := slices.Compact(slices.Sorted(slices.Values(keys)))
	if _, err := tx.Exec(ctx, `INSERT INTO login_failures (key, failures, last_at, locked_until)
		SELECT k, 0, 0, 0 FROM unnest($1::text[]) AS k ON CONFLICT (key) DO NOTHING`, sorted); err != nil {
		return nil, err
	}
	rows, err := tx.Query(ctx, `SELECT key, failures, last_at, locked_until FROM login_failures
		WHERE key = ANY($1) ORDER BY key FOR UPDATE`, sorted)
	if err != nil {
		return nil, err
	}
	byKey := make(map[string]loginCount, len(sorted))
	var key string
	var c loginCount
	var last, until int64
	_, err = pgx.ForEachRow(rows, []any{&key, &c.failures, &last, &until}, func() error {
		c.last, c.until = fromMS(last), fromMS(until)
		byKey[key] = c
		return nil
	})
	stored := make([]loginCount, len(keys))
	for i, k := range keys {
		stored[i] = byKey[k]
	}
	return stored, err
}

// writeLoginCounts stores the counts and locks of one attempt, as an upsert
// in case a row was forgotten since it was locked.
func writeLoginCounts(ctx context.Context, tx pgx.Tx, keys []string, counts []int, locks []time.Time, now time.Time) error {
	var ks []string
	var ns, until []int64
	for i, k := range keys {
		if !slices.Contains(ks, k) { // one row per key, even if a caller named one twice
			ks, ns, until = append(ks, k), append(ns, int64(counts[i])), append(until, ms(locks[i]))
		}
	}
	_, err := tx.Exec(ctx, `INSERT INTO login_failures (key, failures, last_at, locked_until)
		SELECT key, failures, $3, until FROM unnest($1::text[], $2::bigint[], $4::bigint[]) AS v(key, failures, until)
		ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, last_at = excluded.last_at, locked_until = excluded.locked_until`,
		ks, ns, ms(now), until)
	return err
}

// RefundLoginAttempt gives back an attempt that was not a wrong guess (the
// password was right, or it was never checked): one attempt less on each of
// its keys, and the lock it set lifted unless a later attempt replaced it.
// The rows are updated in key order, as ReserveLoginAttempt locks them.
func (p *Postgres) RefundLoginAttempt(ctx context.Context, a LoginAttempt) error {
	order := make([]int, len(a.Keys))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int { return strings.Compare(a.Keys[i], a.Keys[j]) })
	b := &pgx.Batch{}
	for _, i := range order {
		b.Queue(`UPDATE login_failures SET failures = GREATEST(failures - 1, 0),
			locked_until = CASE WHEN locked_until = $1 THEN 0 ELSE locked_until END WHERE key = $2`, ms(a.Locks[i]), a.Keys[i])
	}
	err := p.tx(ctx, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() })
	if err != nil {
		return fmt.Errorf("refund login attempt: %w", err)
	}
	return nil
}

// ForgetLoginFailures deletes the counts of keys (a successful sign-in's
// username or device).
func (p *Postgres) ForgetLoginFailures(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	err := p.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM login_failures WHERE key = ANY($1)`, keys)
		return err
	})
	if err != nil {
		return fmt.Errorf("forget login failures: %w", err)
	}
	return nil
}

// PurgeLoginFailures deletes the counts that pol forgets at now: their
// lock is over and their last attempt older than pol.LockoutMax.
func (p *Postgres) PurgeLoginFailures(ctx context.Context, now time.Time, pol LoginPolicy) error {
	_, err := p.pool.Exec(ctx, `DELETE FROM login_failures WHERE locked_until <= $1 AND last_at < $2`, ms(now), ms(now.Add(-pol.LockoutMax)))
	if err != nil {
		return fmt.Errorf("purge login failures: %w", err)
	}
	return nil
}

// --- keys and secrets ---

// AddSigningKey stores a new current signing key and schedules every other
// unscheduled key to leave the key set at retireOthers.
func (p *Postgres) AddSigningKey(ctx context.Context, k SigningKey, retireOthers time.Time) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL`, ms(retireOthers)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO signing_keys (id, algorithm, private_key, created_at) VALUES ($1, $2, $3, $4)`,
			k.ID, k.Algorithm, k.PrivateDER, ms(k.CreatedAt))
		return err
	})
}

// SigningKeys returns the keys not yet retired at now, newest first. The
// first one is the current signing key.
func (p *Postgres) SigningKeys(ctx context.Context, now time.Time) ([]SigningKey, error) {
	return pgQueryAll(ctx, p.pool, scanSigningKey, `SELECT id, algorithm, private_key, created_at, retire_at FROM signing_keys
		WHERE retire_at IS NULL OR retire_at > $1 ORDER BY created_at DESC, seq DESC`, ms(now))
}

// Secret returns the named secret, creating it with gen on first use. Two
// replicas starting together agree on one value: the first insert wins.
func (p *Postgres) Secret(ctx context.Context, name string, gen func() []byte) ([]byte, error) {
	var v []byte
	err := p.pool.QueryRow(ctx, `SELECT value FROM secrets WHERE name = $1`, name).Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if _, err := p.pool.Exec(ctx, `INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING`, name, gen()); err != nil {
		return nil, err
	}
	err = p.pool.QueryRow(ctx, `SELECT value FROM secrets WHERE name = $1`, name).Scan(&v)
	return v, err
}

// --- outbox ---

// ClaimDeliveries claims up to c.Limit due rows of one destination for
// c.Worker: the rows are chosen and locked with FOR UPDATE SKIP LOCKED, so
// that workers at several replicas claiming at once each take other rows
// instead of waiting on one another, and marked claimed in the same
// statement. Rows whose claim has lapsed are claimable again. The rows come
// back oldest due first.
func (p *Postgres) ClaimDeliveries(ctx context.Context, c DeliveryClaim) ([]OutboxEntry, error) {
	// Only the destination filter in use is written into the query, so
	// that a cached plan fits it.
	where, args := `true`, []any{c.Worker, ms(c.Until), ms(c.Now), c.Limit}
	switch {
	case c.URI != "":
		where, args = `uri = $5`, append(args, c.URI)
	case len(c.Except) > 0:
		where, args = `NOT (uri = ANY($5))`, append(args, c.Except)
	}
	out, err := pgQueryAll(ctx, p.pool, scanOutbox, `WITH due AS (SELECT id FROM logout_outbox
			WHERE `+where+` AND `+outboxPending+` AND next_attempt_at <= $3 AND (claimed_until IS NULL OR claimed_until <= $3)
			ORDER BY next_attempt_at, id LIMIT $4 FOR UPDATE SKIP LOCKED)
		UPDATE logout_outbox SET claimed_by = $1, claimed_until = $2, `+claimNoteSQL+` WHERE id IN (SELECT id FROM due)
		RETURNING `+outboxCols, args...)
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	sortDue(out)
	return out, nil
}

// PendingDeliveries counts deliveries neither delivered nor abandoned.
func (p *Postgres) PendingDeliveries(ctx context.Context) (int, error) {
	var n int
	err := p.pool.QueryRow(ctx, `SELECT COUNT(*) FROM logout_outbox WHERE `+outboxPending).Scan(&n)
	return n, err
}

// Deliveries lists every delivery for an authentication session (all when
// sid is empty), oldest first.
func (p *Postgres) Deliveries(ctx context.Context, sid string) ([]OutboxEntry, error) {
	if !storable(sid) {
		return nil, nil
	}
	if sid == "" {
		return pgQueryAll(ctx, p.pool, scanOutbox, `SELECT `+outboxCols+` FROM logout_outbox ORDER BY id`)
	}
	return pgQueryAll(ctx, p.pool, scanOutbox, `SELECT `+outboxCols+` FROM logout_outbox WHERE sid = $1 ORDER BY id`, sid)
}

// DeliveryDone records one attempt with its audit event, by the rules of
// SQLite.DeliveryDone: a delivered row is marked so whoever delivered it; a
// failure is recorded only by the worker that still holds the row's claim;
// either way the row must still carry o's jti. An attempt that no longer
// owns its row is audited all the same (stale=true).
func (p *Postgres) DeliveryDone(ctx context.Context, o OutboxEntry, at time.Time, ok bool, next time.Time, errText string) error {
	ev := deliveryOutcome(o, at, ok, next, errText)
	errText = storableText(errText)
	return p.tx(ctx, func(tx pgx.Tx) error {
		var tag pgconn.CommandTag
		var err error
		const mine = ` WHERE id = $2 AND jti = $3 AND ` + outboxPending
		const claim = ` AND claimed_by = $5`
		const unclaim = `, claimed_by = NULL, claimed_until = NULL`
		switch ev.Kind {
		case AuditLogoutDelivered:
			tag, err = tx.Exec(ctx, `UPDATE logout_outbox SET delivered_at = $1, attempts = attempts + 1, last_error = ''`+unclaim+mine,
				ms(at), o.ID, o.JTI)
		case AuditLogoutAbandoned:
			tag, err = tx.Exec(ctx, `UPDATE logout_outbox SET abandoned_at = $1, attempts = attempts + 1, last_error = $4`+unclaim+mine+claim,
				ms(at), o.ID, o.JTI, errText, o.ClaimedBy)
		default:
			tag, err = tx.Exec(ctx, `UPDATE logout_outbox SET next_attempt_at = $1, attempts = attempts + 1, last_error = $4`+unclaim+mine+claim,
				ms(next), o.ID, o.JTI, errText, o.ClaimedBy)
		}
		if err != nil {
			return fmt.Errorf("outbox %d: %w", o.ID, err)
		}
		return pgAudit(ctx, tx, staleDelivery(ev, tag.RowsAffected()))
	})
}

// PurgeDeliveries deletes delivered and abandoned rows that finished before
// before (the audit keeps their record), in batches, and returns how many it
// deleted.
func (p *Postgres) PurgeDeliveries(ctx context.Context, before time.Time) (int64, error) {
	return p.purgeBatches(ctx, "logout_outbox", "id",
		`(delivered_at IS NOT NULL OR abandoned_at IS NOT NULL) AND COALESCE(delivered_at, abandoned_at) < $1`, ms(before))
}

// --- audit ---

// AddAudit appends one audit event.
func (p *Postgres) AddAudit(ctx context.Context, ev AuditEvent) error {
	return pgAudit(ctx, p.pool, ev)
}

// Audit returns matching events, oldest first.
func (p *Postgres) Audit(ctx context.Context, f AuditFilter) ([]AuditEvent, error) {
	if !storable(f.UserID) || !storable(f.SID) {
		return nil, nil
	}
	// Only the filters in use are written into the query, so that a cached
	// (generic) plan still reads the (user_id, at) or (sid, at) index.
	where, args := []string{"true"}, []any{auditLimit(f)}
	for _, c := range []struct{ col, v string }{{"user_id", f.UserID}, {"sid", f.SID}} {
		if c.v != "" {
			args = append(args, c.v)
			where = append(where, fmt.Sprintf("%s = $%d", c.col, len(args)))
		}
	}
	return pgQueryAll(ctx, p.pool, scanAudit, `SELECT id, at, kind, user_id, sid, client_id, reason, initiator, detail FROM audit_events
		WHERE `+strings.Join(where, " AND ")+` ORDER BY at, id LIMIT $1`, args...)
}

// --- several replicas: change feed, leases, refresh compare-and-swap ---

// ChangesChannel is the channel on which a transaction that writes change
// feed rows notifies, at its commit, every replica that listens.
const ChangesChannel = "idleguard_session_changes"

// changeFeedLock is the advisory lock (pg_advisory_xact_lock) that orders
// the writers of the change feed.
//
// A row's id is taken at insert, not at commit: without the lock, a
// transaction holding id 11 could commit after one holding id 12, and a
// replica that had read up to 12 would never see 11. Under the lock, taken
// just before the insert and held to the commit, ids are taken in commit
// order, so a reader that has seen an id has seen every id below it. The
// insert is the last statement of its transaction, so the lock is held for
// one round trip and the commit (which a NOTIFY serializes anyway), and no
// holder waits on a row lock while others wait on it.
const changeFeedLock = 0x1d1e_c4a6 // any key apart from migrations.postgresLock

// addChanges writes change feed rows for sids (at the times at, in order)
// and the notification, in one round trip: the transaction's last writes.
func addChanges(ctx context.Context, tx pgx.Tx, sids []string, at []int64) error {
	if len(sids) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock($1)`, int64(changeFeedLock))
	b.Queue(`INSERT INTO session_changes (sid, at) SELECT sid, at FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS v(sid, at, n)
		ORDER BY n`, sids, at)
	b.Queue(`SELECT pg_notify($1, '')`, ChangesChannel)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("change feed: %w", err)
	}
	return nil
}

// SessionChanges returns up to limit rows of the change feed after id
// after, oldest first.
func (p *Postgres) SessionChanges(ctx context.Context, after int64, limit int) ([]Change, error) {
	return pgQueryAll(ctx, p.pool, func(row scanner) (Change, error) {
		var c Change
		err := row.Scan(&c.ID, &c.SID, &c.TokenID)
		return c, err
	}, `SELECT id, sid, COALESCE(token_id, '') FROM session_changes WHERE id > $1 ORDER BY id LIMIT $2`, after, limit)
}

// LastSessionChange returns the id of the newest row of the change feed (0
// when empty): where a replica that starts begins to read.
func (p *Postgres) LastSessionChange(ctx context.Context) (int64, error) {
	var id int64
	err := p.pool.QueryRow(ctx, `SELECT COALESCE(MAX(id), 0) FROM session_changes`).Scan(&id)
	return id, err
}

// PurgeSessionChanges deletes change feed rows written before before.
func (p *Postgres) PurgeSessionChanges(ctx context.Context, before time.Time) error {
	_, err := p.purgeBatches(ctx, "session_changes", "id", `at < $1`, ms(before))
	return err
}

// AcquireLease takes or renews lease name for holder until now+ttl, and
// reports whether holder has it: it succeeds when the lease is free,
// expired at now, or already holder's. Two replicas taking an expired
// lease at once: the second upsert waits for the first, then finds the
// lease held and unexpired, and fails.
func (p *Postgres) AcquireLease(ctx context.Context, name, holder string, now time.Time, ttl time.Duration) (bool, error) {
	tag, err := p.pool.Exec(ctx, `INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
		WHERE leases.holder = excluded.holder OR leases.expires_at <= $4`, name, storableText(holder), ms(now.Add(ttl)), ms(now))
	if err != nil {
		return false, fmt.Errorf("lease %s: %w", name, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ReleaseLease gives lease name up if holder has it (a graceful stop), so
// that another replica takes over at its next attempt.
func (p *Postgres) ReleaseLease(ctx context.Context, name, holder string) error {
	_, err := p.pool.Exec(ctx, `DELETE FROM leases WHERE name = $1 AND holder = $2`, name, storableText(holder))
	return err
}

// RefreshGeneration returns the stored current generation of a refresh chain.
func (p *Postgres) RefreshGeneration(ctx context.Context, chainID string) (uint64, error) {
	var gen int64
	err := pgx.ErrNoRows
	if storable(chainID) {
		err = p.pool.QueryRow(ctx, `SELECT gen FROM refresh_chains WHERE id = $1`, chainID).Scan(&gen)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("refresh chain: %w", ErrNotFound)
	}
	return uint64(gen), err
}

// RotateRefreshChain moves a refresh chain from generation from to from+1
// if it is still at from, and reports whether it did: of two replicas that
// rotate the same token at once, exactly one succeeds (the second UPDATE
// waits for the first, then re-checks the generation and finds it moved).
func (p *Postgres) RotateRefreshChain(ctx context.Context, chainID string, from uint64) (bool, error) {
	if !storable(chainID) {
		return false, nil
	}
	tag, err := p.pool.Exec(ctx, `UPDATE refresh_chains SET gen = $1 + 1 WHERE id = $2 AND gen = $1`, int64(from), chainID)
	if err != nil {
		return false, fmt.Errorf("rotate refresh chain %s: %w", chainID, err)
	}
	return tag.RowsAffected() == 1, nil
}
