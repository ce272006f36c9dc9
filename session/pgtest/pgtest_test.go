package pgtest_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestEachTestGetsItsOwnEmptyDatabase(t *testing.T) {
	a, b := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	require.NotEqual(t, a, b)
	ca, cb := pgtest.Conn(t, a), pgtest.Conn(t, b)
	_, err := ca.Exec(t.Context(), `CREATE TABLE only_in_a (x int)`)
	require.NoError(t, err)
	var n int
	require.NoError(t, cb.QueryRow(t.Context(), `SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'`).Scan(&n))
	require.Zero(t, n)
	var enc string
	require.NoError(t, ca.QueryRow(t.Context(), `SHOW server_encoding`).Scan(&enc))
	require.Equal(t, "UTF8", enc)
}

// TestMissingServerSkipsUnlessRequired runs this test binary again without
// server binaries: the PostgreSQL tests skip, and with
// IDLEGUARD_REQUIRE_POSTGRES=1 (as in CI) they fail instead.
func TestMissingServerSkipsUnlessRequired(t *testing.T) {
	if os.Getenv("PGTEST_CHILD") == "1" {
		pgtest.NewDatabase(t)
		return
	}
	run := func(require string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run", "^TestMissingServerSkipsUnlessRequired$", "-test.v")
		cmd.Env = append(os.Environ(), "PGTEST_CHILD=1", pgtest.EnvServer+"=", pgtest.EnvBin+"="+t.TempDir(), pgtest.EnvRequire+"="+require)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("")
	require.NoError(t, err, out)
	require.Contains(t, out, "--- SKIP")
	require.Contains(t, out, "PostgreSQL tests skipped")
	out, err = run("1")
	require.Error(t, err, out)
	require.Contains(t, out, "--- FAIL")
	require.Contains(t, out, "PostgreSQL required")
}

// TestServerStopsAndStarts stops a server of the test's own and starts it
// again: a connection fails while it is down, and the data is still there.
func TestServerStopsAndStarts(t *testing.T) {
	srv := pgtest.NewServer(t)
	dsn := srv.NewDatabase(t)
	c := pgtest.Conn(t, dsn)
	_, err := c.Exec(t.Context(), `CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)`)
	require.NoError(t, err)

	srv.Stop()
	_, err = pgx.Connect(t.Context(), dsn)
	require.Error(t, err, "the server is down")

	require.NoError(t, srv.Start())
	var x int
	require.NoError(t, pgtest.Conn(t, dsn).QueryRow(t.Context(), `SELECT x FROM kept`).Scan(&x))
	require.Equal(t, 42, x)
}
