package session_test

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
	"github.com/idleguard/idleguard/session/storetest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func TestPostgresStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := session.OpenPostgres(t.Context(), pgtest.NewDatabase(t))
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}
