package session_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/storetest"
)

func TestSQLiteStore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Store {
		s, err := session.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "test.db"))
		require.NoError(t, err)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestPasswords(t *testing.T) {
	h, err := session.HashPassword("correct horse")
	require.NoError(t, err)
	require.True(t, session.VerifyPassword(h, "correct horse"))
	require.False(t, session.VerifyPassword(h, "correct horsf"))
	require.False(t, session.VerifyPassword("", "correct horse"), "unknown user")
	require.False(t, session.VerifyPassword("$argon2id$garbage", "x"))
	_, err = session.HashPassword("")
	require.Error(t, err)
}
