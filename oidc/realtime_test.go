package oidc

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRealTimeIdleEndReachesEveryApp is the one real-time end-to-end test:
// real clock, the background sweeper, flusher and delivery worker running,
// limits of two seconds. It watches a session end, every credential stop
// working, and each app's back-channel receiver get its logout token within
// sweep_interval plus delivery time of the deadline.
func TestRealTimeIdleEndReachesEveryApp(t *testing.T) {
	if testing.Short() {
		t.Skip("real-time test")
	}
	const (
		idle  = 2 * time.Second
		sweep = 250 * time.Millisecond
		// Delivery is one loopback POST; a second covers a loaded CI machine.
		deliveryBudget = time.Second
	)
	e, rs := newEnvWithReceivers(t, []string{"mail", "bank"}, func(c *Config) {
		c.Now = time.Now
		c.Session.IdleTimeout = idle
		c.Session.SweepInterval = sweep
		c.Session.FlushInterval = sweep
		c.Backchannel.PollInterval = sweep
	})
	e.p.Run(t.Context())
	t.Cleanup(func() { _ = e.p.Close(t.Context()) })

	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	bank := b.login(e.rp("bank"), "alice")
	// The provider records the heartbeat somewhere between sending it and
	// reading the answer: the true deadline lies in [before, after] + idle.
	before := time.Now()
	require.Equal(t, http.StatusOK, e.heartbeat(mail.AccessToken))
	after := time.Now()

	// Both receivers are told, in time.
	require.Eventually(t, func() bool {
		rs["mail"].mu.Lock()
		defer rs["mail"].mu.Unlock()
		rs["bank"].mu.Lock()
		defer rs["bank"].mu.Unlock()
		return len(rs["mail"].got) > 0 && len(rs["bank"].got) > 0
	}, idle+5*time.Second, 20*time.Millisecond)
	for _, c := range []string{"mail", "bank"} {
		r := rs[c]
		got := r.tokens()
		require.Len(t, got, 1)
		require.Equal(t, "idle_timeout", got[0].Reason)
		require.Equal(t, mail.sid, got[0].SID)
		late := r.arrived[0].Sub(after.Add(idle))
		t.Logf("%s told %v after the deadline", c, late.Round(time.Millisecond))
		require.Less(t, late, sweep+deliveryBudget, "%s was told too late", c)
		require.False(t, r.arrived[0].Before(before.Add(idle)), "%s was told before the deadline", c)
	}

	// Every credential has stopped working.
	_, err := e.rp("bank").refresh(t, bank.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	require.False(t, active(t, e, mail.AccessToken))
	code, _ := e.userinfo(mail.AccessToken)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, http.StatusUnauthorized, e.heartbeat(bank.AccessToken))
	require.Equal(t, "idle_timeout", e.status(mail.AccessToken)["reason"])
	resp, _, _ := b.authorize(e.rp("mail"))
	require.Contains(t, body(t, resp), "You were signed out after 2 seconds of inactivity.")
}
