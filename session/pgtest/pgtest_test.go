package pgtest_test

import (
	"os"
	"os/exec"
	"testing"

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
