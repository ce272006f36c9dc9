package oidc

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The tests in this file pin what several replicas share beyond the idle
// model (issue 10, rules 8 to 10, and revocation): each runs in the test
// bed of replica_test.go.

// An access token revoked at one replica is refused at every replica
// within one sync of the change feed, as an end is; the session and its
// other tokens go on. Introspection keeps reading memory only.
func TestReplicasAccessTokenRevocationReachesEveryReplica(t *testing.T) {
	c := newCluster(t, 3)
	mail := c.via(0).browser().login(c.rp("mail"), "alice")
	revoked := mail.AccessToken
	for i := range 3 {
		require.True(t, c.introspectAt(i, revoked), "replica %d holds the session", i)
	}
	c.via(1)
	revoke(t, c.env, "mail", revoked, "access_token")
	require.False(t, c.introspectAt(1, revoked), "refused at once where it was revoked")
	require.True(t, c.introspectAt(2, revoked), "replica C has not read the feed yet")

	c.sync()
	for i := range 3 {
		require.False(t, c.introspectAt(i, revoked), "replica %d refuses the token revoked at B", i)
		status, _ := c.via(i).userinfo(revoked)
		require.Equal(t, http.StatusUnauthorized, status, "userinfo at replica %d", i)
		require.Equal(t, http.StatusUnauthorized, c.via(i).heartbeat(revoked), "/activity at replica %d", i)
	}
	fresh := mail.fresh(c.env)
	for i := range 3 {
		require.True(t, c.introspectAt(i, fresh), "only that token: the session goes on at replica %d", i)
	}

	// A replica that starts after the revocation reads it from the store.
	p, err := New(t.Context(), c.replicas[2].p.cfg, openReplicaStore(t, c.dbPath))
	require.NoError(t, err)
	_, known := p.revoked.Load(mustTokenID(t, p, revoked))
	require.True(t, known, "a replica started later refuses it too")
}

// With the background loops running, a revocation at A is refused at B
// within a second (one sync interval, 250ms, plus one read).
func TestReplicasRevocationWithinASecond(t *testing.T) {
	c := newCluster(t, 2)
	mail := c.via(0).browser().login(c.rp("mail"), "alice")
	require.True(t, c.introspectAt(1, mail.AccessToken))
	for _, r := range c.replicas {
		r.p.Run(t.Context())
		t.Cleanup(func() { _ = r.p.Close(context.Background()) })
	}
	start := time.Now()
	c.via(0)
	revoke(t, c.env, "mail", mail.AccessToken, "access_token")
	require.Eventually(t, func() bool { return !c.introspectAt(1, mail.AccessToken) }, time.Second, 10*time.Millisecond)
	t.Logf("revocation at A refused at B after %s", time.Since(start))
}

func mustTokenID(t *testing.T, p *Provider, token string) string {
	t.Helper()
	id, err := p.accessTokenID(token)
	require.NoError(t, err)
	return id
}
