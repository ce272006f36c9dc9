package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed *.sql postgres/*.sql
var files embed.FS

// Dialect is a database engine with migration files of its own.
type Dialect string

// The dialects idleguard runs on.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

func (d Dialect) dir() string {
	if d == Postgres {
		return "postgres"
	}
	return "."
}

// Migration is one numbered schema step, read from a file named
// NNNN_name.up.sql.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Of returns the embedded migrations of a dialect sorted by version.
func Of(d Dialect) ([]Migration, error) {
	entries, err := fs.Glob(files, path.Join(d.dir(), "*.up.sql"))
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, file := range entries {
		name := path.Base(file)
		num, rest, ok := strings.Cut(name, "_")
		if !ok {
			return nil, fmt.Errorf("migration %s: name must be NNNN_name.up.sql", file)
		}
		v, err := strconv.Atoi(num)
		if err != nil {
			return nil, fmt.Errorf("migration %s: version: %w", file, err)
		}
		body, err := files.ReadFile(file)
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, Name: strings.TrimSuffix(rest, ".up.sql"), SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Latest is the newest version of a dialect's migrations (0 if none).
func Latest(d Dialect) (int, error) {
	all, err := Of(d)
	if err != nil || len(all) == 0 {
		return 0, err
	}
	return all[len(all)-1].Version, nil
}

// target is a database that migrations are applied to.
type target interface {
	// current creates the version table if needed and returns the newest
	// version recorded in it.
	current(ctx context.Context) (int, error)
	// apply runs m and records it, in one transaction.
	apply(ctx context.Context, m Migration) error
}

// applyAll applies every migration of d newer than t's version, so a crash
// leaves the schema at a whole version.
func applyAll(ctx context.Context, t target, d Dialect) error {
	current, err := t.current(ctx)
	if err != nil {
		return err
	}
	all, err := Of(d)
	if err != nil {
		return err
	}
	for _, m := range all {
		if m.Version <= current {
			continue
		}
		if err := t.apply(ctx, m); err != nil {
			return fmt.Errorf("migration %s/%04d_%s: %w", d, m.Version, m.Name, err)
		}
	}
	return nil
}

// Apply brings a SQLite database up to the newest migration. Each migration
// runs in its own transaction together with the row that records it in
// schema_migrations. SQLite's single writer keeps two processes from
// applying the same step twice.
func Apply(ctx context.Context, db *sql.DB) error { return applyAll(ctx, sqliteTarget{db}, SQLite) }

type sqliteTarget struct{ db *sql.DB }

func (t sqliteTarget) current(ctx context.Context) (int, error) {
	if _, err := t.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)`); err != nil {
		return 0, fmt.Errorf("create schema_migrations: %w", err)
	}
	var v int
	if err := t.db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func (t sqliteTarget) apply(ctx context.Context, m Migration) error {
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES (?, ?)`, m.Version, m.Name); err != nil {
		return err
	}
	return tx.Commit()
}

// postgresLock is the key of the advisory lock that serialises migrations:
// replicas starting together wait for each other, and the later ones find
// the schema already current. ("idleguard" in ASCII.)
const postgresLock int64 = 0x69646c6567756172

// ApplyPostgres brings a PostgreSQL database up to the newest migration,
// under a session-level advisory lock held on a connection of its own, so
// that the lock ends with that connection whatever happens.
func ApplyPostgres(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, postgresLock); err != nil {
		return fmt.Errorf("take the migration lock: %w", err)
	}
	return applyAll(ctx, postgresTarget{conn}, Postgres)
}

type postgresTarget struct{ conn *pgx.Conn }

// current creates schema_migrations only when it is missing, so that a
// replica whose role may only read and write rows starts on a current
// schema.
func (t postgresTarget) current(ctx context.Context) (int, error) {
	var exists bool
	if err := t.conn.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("look for schema_migrations: %w", err)
	}
	if !exists {
		if _, err := t.conn.Exec(ctx, `CREATE TABLE schema_migrations (
		version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`); err != nil {
			return 0, fmt.Errorf("create schema_migrations: %w", err)
		}
	}
	var v int
	if err := t.conn.QueryRow(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

func (t postgresTarget) apply(ctx context.Context, m Migration) error {
	return pgx.BeginFunc(ctx, t.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, m.SQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
		return err
	})
}
