package activity

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var policies = map[string]ClientPolicy{
	"mail":  {IdleTimeout: 10 * time.Minute, Sources: DefaultSources},
	"video": {IdleTimeout: time.Hour, Exempt: true, Sources: DefaultSources},
}

func newTracker(t *testing.T, path string, c *clock) (*Tracker, *session.SQLite) {
	t.Helper()
	store, err := session.OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	return New(Config{IdleTimeout: 30 * time.Minute, MaxLifetime: 12 * time.Hour, Now: c.Now,
		Client: func(id string) (ClientPolicy, bool) { p, ok := policies[id]; return p, ok }}, store), store
}

func TestClamp(t *testing.T) {
	lo, hi := time.Unix(100, 0), time.Unix(200, 0)
	for _, tc := range []struct {
		name   string
		at     time.Time
		expect time.Time
	}{
		{"none means now", time.Time{}, hi},
		{"future", time.Unix(900, 0), hi},
		{"before the previous activity", time.Unix(50, 0), lo},
		{"in range", time.Unix(150, 0), time.Unix(150, 0)},
	} {
		t.Run(tc.name, func(t *testing.T) { require.Equal(t, tc.expect, clamp(tc.at, lo, hi)) })
	}
}

// TestActivityIsCoalesced pins "hot paths do not write per call": heartbeats
// inside the flush slack leave the stored row alone; one past it is written
// at the next flush.
func TestActivityIsCoalesced(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	tr, store := newTracker(t, filepath.Join(t.TempDir(), "a.db"), c)
	st, err := tr.Start(t.Context(), "u1", []string{"pwd"})
	require.NoError(t, err)
	app, err := tr.Join(t.Context(), st.SID, "mail", []string{"openid"})
	require.NoError(t, err)
	stored := func() time.Time {
		a, _, err := store.AuthSession(t.Context(), st.SID)
		require.NoError(t, err)
		return a.LastActiveAt
	}
	start := stored()
	for range 5 { // slack of a 10m limit is 60s -> capped at 30s; 5 x 5s stays inside it
		c.Advance(5 * time.Second)
		_, err := tr.Touch(t.Context(), app.AppSessionID, Heartbeat, time.Time{})
		require.NoError(t, err)
		require.NoError(t, tr.Flush(t.Context(), false))
	}
	require.Equal(t, start, stored(), "no write while inside the slack")
	c.Advance(10 * time.Second)
	_, err = tr.Touch(t.Context(), app.AppSessionID, Heartbeat, time.Time{})
	require.NoError(t, err)
	require.NoError(t, tr.Flush(t.Context(), false))
	require.True(t, c.Now().Equal(stored()), "written once past the slack")
}

// TestCrashEndsSessionsEarlierNeverLater simulates kill -9 (a new tracker on
// the same file, without Close): the reloaded deadline is never later than
// the true one, and earlier by at most the slack plus one flush interval.
func TestCrashEndsSessionsEarlierNeverLater(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	path := filepath.Join(t.TempDir(), "a.db")
	tr, _ := newTracker(t, path, c)
	st, err := tr.Start(t.Context(), "u1", []string{"pwd"})
	require.NoError(t, err)
	app, err := tr.Join(t.Context(), st.SID, "mail", []string{"openid"})
	require.NoError(t, err)
	for range 100 { // 100 s of heartbeats, flushed every second as the loop would
		c.Advance(time.Second)
		_, err := tr.Touch(t.Context(), app.AppSessionID, Heartbeat, time.Time{})
		require.NoError(t, err)
		require.NoError(t, tr.Flush(t.Context(), false))
	}
	truth, err := tr.Check(t.Context(), app.AppSessionID)
	require.NoError(t, err)

	crashed, _ := newTracker(t, path, c) // the old one is never closed
	after, err := crashed.Check(t.Context(), app.AppSessionID)
	require.NoError(t, err)
	require.False(t, after.Deadline.After(truth.Deadline), "never later")
	require.LessOrEqual(t, truth.Deadline.Sub(after.Deadline), 30*time.Second+time.Second, "earlier by at most slack + flush interval")
}

// TestSweepFindsOnlyExpired: the sweeper ends expired sessions and leaves
// live ones whose stored deadline lags their activity, flushing them.
func TestSweepFlushesLaggingLiveSessions(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	tr, store := newTracker(t, filepath.Join(t.TempDir(), "a.db"), c)
	busy, err := tr.Start(t.Context(), "u1", nil)
	require.NoError(t, err)
	busyApp, err := tr.Join(t.Context(), busy.SID, "mail", nil)
	require.NoError(t, err)
	idle, err := tr.Start(t.Context(), "u2", nil)
	require.NoError(t, err)
	_, err = tr.Join(t.Context(), idle.SID, "mail", nil)
	require.NoError(t, err)

	c.Advance(9*time.Minute + 50*time.Second)
	_, err = tr.Touch(t.Context(), busyApp.AppSessionID, Heartbeat, time.Time{}) // within slack of nothing: unflushed
	require.NoError(t, err)
	c.Advance(10 * time.Second)
	n, err := tr.Sweep(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, n, "the idle session and its app")
	a, _, err := store.AuthSession(t.Context(), busy.SID)
	require.NoError(t, err)
	require.True(t, a.Live())
	require.True(t, a.Deadline.After(c.Now()), "the lagging deadline was flushed")
	n, err = tr.Sweep(t.Context())
	require.NoError(t, err)
	require.Zero(t, n)
}

// TestStricterConfigurationTightensStoredDeadlines: a restart with a smaller
// idle_timeout must let the sweeper find sessions by the new limit, even
// those not in memory.
func TestStricterConfigurationTightensStoredDeadlines(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Millisecond)}
	path := filepath.Join(t.TempDir(), "a.db")
	tr, _ := newTracker(t, path, c)
	st, err := tr.Start(t.Context(), "u1", nil)
	require.NoError(t, err)
	_, err = tr.Join(t.Context(), st.SID, "mail", nil) // 10m
	require.NoError(t, err)
	require.NoError(t, tr.Close(t.Context()))

	store, err := session.OpenSQLite(t.Context(), path)
	require.NoError(t, err)
	defer store.Close()
	strict := New(Config{IdleTimeout: 2 * time.Minute, MaxLifetime: time.Hour, Now: c.Now, Clients: []string{"mail"},
		Client: func(id string) (ClientPolicy, bool) { p, ok := policies[id]; return p, ok }}, store)
	require.NoError(t, strict.TightenDeadlines(t.Context()))
	c.Advance(2 * time.Minute)
	ids, err := store.DueAuthSessions(t.Context(), c.Now(), 10)
	require.NoError(t, err)
	require.Equal(t, []string{st.SID}, ids, "found by the stricter 2m limit, not the stored 10m one")
	n, err := strict.Sweep(t.Context())
	require.NoError(t, err)
	require.Equal(t, 2, n)
}

// TestTouchForRecordsOnlyForAcceptedClients pins TouchFor: a use of a
// credential that only some clients' tokens may make (a gateway check for
// another app's API) is answered with the status and records nothing; the
// same use by an accepted client is activity. The status says whose the
// credential is either way, so that the caller can refuse it.
func TestTouchForRecordsOnlyForAcceptedClients(t *testing.T) {
	c := &clock{t: time.Now().Truncate(time.Second)}
	tr, _ := newTracker(t, filepath.Join(t.TempDir(), "a.db"), c)
	st, err := tr.Start(t.Context(), "u1", []string{"pwd"})
	require.NoError(t, err)
	app, err := tr.Join(t.Context(), st.SID, "mail", []string{"openid"})
	require.NoError(t, err)
	onlyVideo := func(id string) bool { return id == "video" }
	onlyMail := func(id string) bool { return id == "mail" }

	c.Advance(9 * time.Minute)
	got, err := tr.TouchFor(t.Context(), app.AppSessionID, API, time.Time{}, onlyVideo)
	require.NoError(t, err)
	require.Equal(t, "mail", got.ClientID)
	require.Equal(t, time.Minute, got.Deadline.Sub(got.Now), "refused: nothing recorded")
	require.Zero(t, tr.Stats().Activity["api"])

	got, err = tr.TouchFor(t.Context(), app.AppSessionID, API, time.Time{}, onlyMail)
	require.NoError(t, err)
	require.Equal(t, 10*time.Minute, got.Deadline.Sub(got.Now), "accepted: api activity")
	require.EqualValues(t, 1, tr.Stats().Activity["api"])
}

func TestParseSourcesKnowsAPI(t *testing.T) {
	set, err := ParseSources([]string{"api"})
	require.NoError(t, err)
	require.Equal(t, Login|API, set)
	require.NotZero(t, DefaultSources&API, "api is on by default")
	require.Zero(t, DefaultSources&Refresh)
	_, err = ParseSources([]string{"clicks"})
	require.ErrorContains(t, err, "want login, sso, heartbeat, introspection, userinfo, refresh or api")
}
