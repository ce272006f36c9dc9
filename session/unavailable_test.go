package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// A database that another connection holds locked makes a write fail, in
// the time its context allows, with an error IsUnavailable recognises;
// a refusal of the database's own (a constraint) is not unavailability.
func TestIsUnavailable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ig.db")
	s, err := OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })

	other, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate")
	require.NoError(t, err)
	defer other.Close()
	tx, err := other.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	_, err = tx.Exec(`DELETE FROM leases`)
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = s.ReleaseLease(ctx, "sweeper", "a")
	require.Error(t, err)
	require.Less(t, time.Since(start), 5*time.Second, "bounded by the context, not SQLite's busy timeout")
	require.True(t, IsUnavailable(err), "%v", err)
	require.NoError(t, tx.Rollback())
	require.NoError(t, s.ReleaseLease(t.Context(), "sweeper", "a"), "and usable again once the lock is gone")

	require.True(t, IsUnavailable(fmt.Errorf("wrapped: %w", context.DeadlineExceeded)))
	require.True(t, IsUnavailable(&pgconn.PgError{Code: "57P01"}), "PostgreSQL shutting down")
	require.True(t, IsUnavailable(&pgconn.PgError{Code: "08006"}), "connection failure")
	require.False(t, IsUnavailable(&pgconn.PgError{Code: "23505"}), "a unique violation is an answer")
	require.False(t, IsUnavailable(ErrNotFound))
	require.False(t, IsUnavailable(errors.New("database or disk is full")))
	u := &User{ID: "u1", Username: "alice", PasswordHash: "x", CreatedAt: time.Now()}
	require.NoError(t, s.CreateUser(t.Context(), u))
	err = s.CreateUser(t.Context(), u)
	require.Error(t, err)
	require.False(t, IsUnavailable(err), "a conflict is an answer")
}
