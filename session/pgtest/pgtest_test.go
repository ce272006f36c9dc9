package pgtest_test

import (
	"os"
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
