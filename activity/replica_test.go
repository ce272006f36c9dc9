package activity

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/seed"
)

// notifyingStore is a real SQLite store with the wake-up hook a PostgreSQL
// backend implements with LISTEN/NOTIFY; the test plays the database and
// announces new change feed rows.
type notifyingStore struct {
	*session.SQLite
	wake      chan struct{}
	listeners atomic.Int32
}

func (s *notifyingStore) Changes(context.Context) <-chan struct{} {
	s.listeners.Add(1)
	return s.wake
}

var _ ChangeNotifier = (*notifyingStore)(nil)

func newReplica(t *testing.T, path string, c *clock, replicas int) (*Tracker, *notifyingStore) {
	t.Helper()
	store, err := session.OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	ns := &notifyingStore{SQLite: store, wake: make(chan struct{}, 1)}
	tr := New(Config{IdleTimeout: 30 * time.Minute, MaxLifetime: 12 * time.Hour, Now: c.Now, Replicas: replicas,
		SyncInterval: time.Hour, FlushInterval: time.Hour, SweepInterval: time.Hour, // only the notification wakes anything
		Client: func(id string) (ClientPolicy, bool) { p, ok := policies[id]; return p, ok }}, ns)
	return tr, ns
}

// A notification from the store makes a replica apply the change feed at
// once, without waiting for its poll.
func TestChangeNotificationWakesTheSync(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	path := filepath.Join(t.TempDir(), "ig.db")
	a, _ := newReplica(t, path, c, 2)
	b, bStore := newReplica(t, path, c, 2)
	st, err := a.Start(t.Context(), "u1", []string{"pwd"})
	require.NoError(t, err)
	joined, err := a.Join(t.Context(), st.SID, "mail", []string{"openid"})
	require.NoError(t, err)
	got, err := b.Touch(t.Context(), joined.AppSessionID, Introspection, time.Time{})
	require.NoError(t, err)
	require.True(t, got.Active)

	b.Run(t.Context())
	t.Cleanup(func() { _ = b.Close(context.Background()) })
	require.NoError(t, a.End(t.Context(), st.SID, session.ReasonAdmin, "admin"))
	bStore.wake <- struct{}{} // the database announces the end
	require.Eventually(t, func() bool {
		got, err := b.Touch(t.Context(), joined.AppSessionID, Introspection, time.Time{})
		return err == nil && !got.Active && got.EndReason == session.ReasonAdmin
	}, time.Second, 5*time.Millisecond)
}

// One replica runs none of the replica machinery: no change feed listener,
// no lease.
func TestOneReplicaRunsNoReplicaMachinery(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	tr, store := newReplica(t, filepath.Join(t.TempDir(), "ig.db"), c, 1)
	tr.Run(t.Context())
	_, err := tr.Sweep(t.Context())
	require.NoError(t, err)
	require.NoError(t, tr.Close(t.Context()))
	require.Zero(t, store.listeners.Load(), "nobody listens for changes")
	var leases int
	require.NoError(t, store.ReaderForTest().QueryRow(`SELECT COUNT(*) FROM leases`).Scan(&leases))
	require.Zero(t, leases, "nobody takes the sweeper lease")
}

// Issue 10, rule 6: a sweep that takes longer than the lease renews it
// between batches, so that no second replica sweeps meanwhile. Here each
// batch of A's sweep "takes" two hours of a three-hour lease (the clock
// moves on after every batch, and replica B tries to sweep right then).
func TestLongSweepRenewsItsLease(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	path := filepath.Join(t.TempDir(), "ig.db")
	a, _ := newReplica(t, path, c, 2) // lease: 3 x SweepInterval = 3h
	const sessions = 3*sweepBatch - 100
	require.NoError(t, seed.Sessions(t.Context(), path, sessions, seed.Options{ClientID: "mail", Now: c.Now(),
		LastActiveWithin: time.Minute, IdleLimit: 30 * time.Minute, MaxLifetime: 12 * time.Hour}))
	b, _ := newReplica(t, path, c, 2)
	c.Advance(time.Hour) // every seeded session is due

	var byB []int
	a.cfg.OnEnd = func() { // after each of A's batches
		c.Advance(2 * time.Hour)
		n, err := b.Sweep(t.Context())
		require.NoError(t, err)
		byB = append(byB, n)
	}
	n, err := a.Sweep(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2*sessions, n, "A ends every session and its app")
	require.Len(t, byB, 3, "A swept in three batches")
	for i, n := range byB {
		require.Zero(t, n, "B swept nothing after A's batch %d: A renewed its lease", i+1)
	}
}

// Rule 10: a flush stuck on a database that does not answer (here: another
// connection holds the write lock) holds the writer; a request that needs
// it (an app joining) gives up at its own deadline with an error of
// unavailability, instead of waiting for the flush.
func TestRequestDoesNotWaitForAStuckFlush(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	path := filepath.Join(t.TempDir(), "ig.db")
	a, store := newReplica(t, path, c, 2)
	a.cfg.FlushInterval = time.Second // activity far from the deadline waits for the flush
	st, err := a.Start(t.Context(), "u1", []string{"pwd"})
	require.NoError(t, err)
	joined, err := a.Join(t.Context(), st.SID, "mail", []string{"openid"})
	require.NoError(t, err)
	c.Advance(5 * time.Minute)
	_, err = a.Touch(t.Context(), joined.AppSessionID, Heartbeat, time.Time{}) // beyond the slack: due for the flush
	require.NoError(t, err)

	other, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate")
	require.NoError(t, err)
	defer other.Close()
	lock, err := other.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	_, err = lock.Exec(`DELETE FROM leases`)
	require.NoError(t, err)
	flushed := make(chan error, 1)
	go func() { flushed <- a.Flush(context.Background(), false) }() // the loop's flush: no deadline
	require.Eventually(t, func() bool {
		select {
		case err := <-flushed:
			t.Fatalf("the flush ended at once: %v", err)
		default:
		}
		return len(a.writeMu) == 1
	}, time.Second, time.Millisecond, "the flush holds the writer")

	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = a.Join(ctx, st.SID, "video", []string{"openid"})
	require.Error(t, err)
	require.Less(t, time.Since(start), 2*time.Second, "bounded by the request's deadline, not by the flush")
	require.True(t, session.IsUnavailable(err), "%v", err)

	require.NoError(t, lock.Rollback())
	require.NoError(t, <-flushed, "the flush completes once the database answers")
	_, apps, err := store.AuthSession(t.Context(), st.SID)
	require.NoError(t, err)
	require.Len(t, apps, 1, "the refused join wrote nothing")
}
