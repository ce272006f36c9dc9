package migrations

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	_ "modernc.org/sqlite"

	"github.com/idleguard/idleguard/session/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestVersionsAreContiguous(t *testing.T) {
	for _, d := range []Dialect{SQLite, Postgres} {
		t.Run(string(d), func(t *testing.T) {
			all, err := Of(d)
			require.NoError(t, err)
			require.NotEmpty(t, all)
			for i, m := range all {
				require.Equal(t, i+1, m.Version, "migration %s is out of sequence", m.Name)
			}
		})
	}
}

// TestDialectsInStep: every SQLite migration has its PostgreSQL twin, with
// the same number and name, so that neither backend lags the other.
func TestDialectsInStep(t *testing.T) {
	lite, err := Of(SQLite)
	require.NoError(t, err)
	pg, err := Of(Postgres)
	require.NoError(t, err)
	names := func(ms []Migration) (out []string) {
		for _, m := range ms {
			out = append(out, m.Name)
		}
		return out
	}
	require.Equal(t, names(lite), names(pg), "migrations/postgres/ must hold a twin of every migrations/*.up.sql")
}

func TestApplyIsIdempotent(t *testing.T) {
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "m.db"))
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, Apply(t.Context(), db))
	require.NoError(t, Apply(t.Context(), db))
	var n int
	require.NoError(t, db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&n))
	all, _ := Of(SQLite)
	require.Equal(t, len(all), n)
}

// TestPostgresReplicasMigrateTogether starts several "replicas" at once on
// an empty database: the advisory lock lets each step run once, and every
// one of them succeeds.
func TestPostgresReplicasMigrateTogether(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = ApplyPostgres(t.Context(), cfg) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, ApplyPostgres(t.Context(), cfg), "and again, later")
	conn := pgtest.Conn(t, dsn)
	var n, latest int
	require.NoError(t, conn.QueryRow(t.Context(), `SELECT COUNT(*), MAX(version) FROM schema_migrations`).Scan(&n, &latest))
	want, err := Latest(Postgres)
	require.NoError(t, err)
	require.Equal(t, want, n)
	require.Equal(t, want, latest)
}

// TestPostgresCurrentSchemaNeedsNoDDL: on a current schema, a replica whose
// role may only read and write rows starts (no CREATE is attempted).
func TestPostgresCurrentSchemaNeedsNoDDL(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	require.NoError(t, ApplyPostgres(t.Context(), cfg))
	conn := pgtest.Conn(t, dsn)
	role := "rw_" + strings.ToLower(strings.ReplaceAll(cfg.Database, "idleguard_test_", ""))
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`REVOKE ALL ON SCHEMA public FROM PUBLIC`,
		`REVOKE CREATE ON SCHEMA public FROM ` + role,
		`GRANT USAGE ON SCHEMA public TO ` + role,
		`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO ` + role,
	} {
		_, err := conn.Exec(t.Context(), q)
		require.NoError(t, err, q)
	}
	t.Cleanup(func() { _, _ = conn.Exec(context.Background(), `DROP OWNED BY `+role+`; DROP ROLE `+role) })
	rw := cfg.Copy()
	rw.User = role
	require.NoError(t, ApplyPostgres(t.Context(), rw))
}
