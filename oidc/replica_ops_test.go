package oidc

import (
	"context"
	"database/sql"
	"encoding/json"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/session/pgtest"
)

// The tests in this file pin what several replicas share beyond the idle
// model (issue 10, rules 8 to 10, and revocation): each runs in the test
// bed of replica_test.go.

// An access token revoked at one replica is refused at every replica
// within one sync of the change feed, as an end is; the session and its
// other tokens go on. Introspection keeps reading memory only.
func TestReplicasAccessTokenRevocationReachesEveryReplica(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 3)
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
		p, err := New(t.Context(), c.replicas[2].p.cfg, db.open(t, c.dbPath))
		require.NoError(t, err)
		_, known := p.revoked.Load(mustTokenID(t, p, revoked))
		require.True(t, known, "a replica started later refuses it too")
	})
}

// With the background loops running, a revocation at A is refused at B
// within a second (one sync interval, 250ms, plus one read).
func TestReplicasRevocationWithinASecond(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		mail := c.via(0).browser().login(c.rp("mail"), "alice")
		require.True(t, c.introspectAt(1, mail.AccessToken))
		c.runAll(t)
		start := time.Now()
		c.via(0)
		revoke(t, c.env, "mail", mail.AccessToken, "access_token")
		require.Eventually(t, func() bool { return !c.introspectAt(1, mail.AccessToken) }, time.Second, 10*time.Millisecond)
		t.Logf("revocation at A refused at B after %s", time.Since(start))
	})
}

func mustTokenID(t *testing.T, p *Provider, token string) string {
	t.Helper()
	id, err := p.accessTokenID(token)
	require.NoError(t, err)
	return id
}

// housekeep runs what every replica's housekeeping loop does once an
// interval: reload the signing keys.
func (c *cluster) housekeep(replicas ...int) {
	c.t.Helper()
	for _, i := range replicas {
		require.NoError(c.t, c.replicas[i].p.keys.Reload(c.t.Context()))
	}
}

// publishedKids reads the JWKS that replica i serves.
func (c *cluster) publishedKids(i int) []string {
	c.t.Helper()
	resp, err := http.Get(c.replicas[i].srv.URL + "/keys")
	require.NoError(c.t, err)
	var set jose.JSONWebKeySet
	require.NoError(c.t, json.NewDecoder(resp.Body).Decode(&set))
	resp.Body.Close()
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
	}
	return kids
}

// Rule 9: a key rotated at one replica is published by every replica
// within one housekeeping interval, and signs only from KeyPublishDelay
// (two intervals) on, so that a token signed by any replica verifies, at
// the relying party with the JWKS of any replica, and introspects at every
// replica. A replica that missed the reload re-reads the keys when it meets
// the new key id.
func TestReplicasKeyRotationIsPublishedEverywhereBeforeItSigns(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 3)
		mail := c.rp("mail")
		before := c.via(0).browser().login(mail, "alice")
		oldKid := kid(t, before.raw)
		delay := KeyPublishDelay(c.cfg)
		require.Equal(t, 2*DefaultHousekeepInterval, delay)

		newKid, err := c.replicas[1].p.keys.Rotate(t.Context()) // `idleguard keys rotate` does the same
		require.NoError(t, err)
		require.Contains(t, c.publishedKids(1), newKid, "B publishes it at once")
		c.clock.Advance(DefaultHousekeepInterval)
		c.housekeep(0, 1, 2)
		for i := range 3 {
			require.Subset(t, c.publishedKids(i), []string{oldKid, newKid}, "replica %d publishes both keys", i)
		}
		during := c.via(1).browser().login(mail, "alice")
		require.Equal(t, oldKid, kid(t, during.raw), "nobody signs with the new key before every replica publishes it")

		c.clock.Advance(delay - DefaultHousekeepInterval)
		for i := range 3 {
			tk := c.via(i).browser().login(mail, "alice")
			require.Equal(t, newKid, kid(t, tk.raw), "replica %d signs with the new key", i)
			for j := range 3 {
				require.True(t, c.introspectAt(j, tk.AccessToken), "signed at %d, introspected at %d", i, j)
				ks := gooidc.NewRemoteKeySet(t.Context(), c.replicas[j].srv.URL+"/keys")
				_, err := gooidc.NewVerifier(c.issuer, ks, &gooidc.Config{ClientID: "mail", Now: c.clock.Now}).Verify(t.Context(), tk.raw)
				require.NoError(t, err, "ID token of replica %d verified with the JWKS of replica %d", i, j)
			}
		}
		require.True(t, c.introspectAt(2, before.AccessToken), "tokens of the old key still verify")

		t.Run("a replica that missed the reload", func(t *testing.T) {
			c := newCluster(t, db, 2)
			_, err := c.replicas[0].p.keys.Rotate(t.Context())
			require.NoError(t, err)
			c.clock.Advance(KeyPublishDelay(c.cfg))
			tk := c.via(0).browser().login(c.rp("mail"), "alice") // B never reloaded
			require.True(t, c.introspectAt(1, tk.AccessToken), "B reads the keys when it meets the new key id")
		})
	})
}

// alternating sends each following request that names no replica to the
// next replica in turn, as a round-robin balancer without sticky sessions.
func (c *cluster) alternating() *cluster {
	c.mu.Lock()
	c.rotate = true
	c.mu.Unlock()
	return c
}

// servedBy returns how many requests each replica has served so far.
func (c *cluster) servedBy() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]int(nil), c.served...)
}

// Rule 8: everything a browser carries works at every replica. Every step
// of a sign-in (authorize, login form, its POST with the CSRF token, the
// callback that checks the browser binding, the code exchange), single
// sign-on by the session cookie, a sign-in by a known device while guesses
// at the username are slowed, and logout with its confirmation ticket and
// front-channel page, each request on another replica than the one before.
func TestReplicasBrowserFlowAlternatingReplicas(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 3, func(cfg *Config) {
			for _, cl := range cfg.Clients {
				cl.FrontchannelLogoutURI = "http://127.0.0.1:3/" + cl.ID + "/frontchannel-logout"
			}
		})
		c.alternating()
		b := c.browser()
		mail := b.login(c.rp("mail"), "alice")
		for i, n := range c.servedBy() {
			require.NotZero(t, n, "replica %d served part of the sign-in", i)
		}
		require.True(t, c.introspect(mail.AccessToken)["active"] == true)

		resp, verifier, state := b.authorize(c.rp("bank")) // single sign-on, by the session cookie
		bank := b.exchange(c.rp("bank"), b.code(resp, state), verifier)
		require.Equal(t, mail.sid, bank.sid, "one session across replicas")

		attacker := c.browser() // guesses at alice's password, spread over the replicas
		page := attacker.guess(loginPage(t, attacker, c.rp("mail")), "alice", 3)
		resp = attacker.submitLogin(page, "alice", testPassword)
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "slowed at every replica")
		resp.Body.Close()
		resp, verifier, state = b.authorize(c.rp("mail"), oauth2.SetAuthURLParam("prompt", "login"))
		again := b.exchange(c.rp("mail"), b.code(b.submitLogin(body(t, resp), "alice", testPassword), state), verifier)
		require.Equal(t, mail.sid, again.sid, "alice's device cookie, set at one replica, is known at the others")

		// Logout without id_token_hint: the confirmation page (a sealed ticket
		// and the CSRF token), its POST and the signed-out page with the
		// front-channel frames, each at another replica.
		resp, err := b.client.Get(c.issuer + "/end_session?client_id=mail")
		require.NoError(t, err)
		confirm := body(t, resp)
		ticket := between(confirm, `name="t" value="`, `"`)
		csrf := between(confirm, `name="csrf" value="`, `"`)
		require.NotEmpty(t, ticket, confirm)
		resp, err = b.client.PostForm(c.issuer+"/logout/confirm", url.Values{"t": {html.UnescapeString(ticket)}, "csrf": {csrf}})
		require.NoError(t, err)
		out := body(t, resp)
		require.Equal(t, http.StatusOK, resp.StatusCode, out)
		require.Contains(t, out, "You have been signed out")
		for _, cl := range []string{"mail", "bank"} {
			require.Contains(t, out, `src="http://127.0.0.1:3/`+cl+`/frontchannel-logout?iss=`+url.QueryEscape(c.issuer)+`&amp;sid=`+mail.sid+`"`)
		}
		c.sync()
		for i := range 3 {
			require.False(t, c.introspectAt(i, bank.AccessToken), "replica %d refuses the session signed out", i)
		}
	})
}

// databaseStops makes the shared database stop answering: another
// connection holds locks that every write of every replica waits on (on
// SQLite the file's write lock; on PostgreSQL the session, token, request
// and login tables, reads included). restore lets go. A PostgreSQL
// stop and start drops in here: the tests allow reads to fail too.
func databaseStops(t *testing.T, db backend, dsn string) (restore func()) {
	t.Helper()
	if db.name == "postgres" {
		conn := pgtest.Conn(t, dsn)
		tx, err := conn.Begin(t.Context())
		require.NoError(t, err)
		_, err = tx.Exec(t.Context(), `LOCK TABLE auth_sessions, app_sessions, refresh_chains, revoked_tokens, auth_requests,
			login_failures IN ACCESS EXCLUSIVE MODE`)
		require.NoError(t, err)
		return func() { require.NoError(t, tx.Rollback(context.Background())) }
	}
	sdb, err := sql.Open("sqlite", "file:"+dsn+"?_txlock=immediate")
	require.NoError(t, err)
	tx, err := sdb.BeginTx(t.Context(), nil)
	require.NoError(t, err)
	_, err = tx.Exec(`DELETE FROM leases WHERE name = ''`) // holds the write lock
	require.NoError(t, err)
	return func() {
		require.NoError(t, tx.Rollback())
		require.NoError(t, sdb.Close())
	}
}

// changeFeedBreaks makes the change feed unreadable to every replica (its
// table renamed by another connection), so that each replica's sync fails
// for real; mend puts it back.
func changeFeedBreaks(t *testing.T, db backend, dsn string) (mend func()) {
	t.Helper()
	exec := func(q string) {
		if db.name == "postgres" {
			_, err := pgtest.Conn(t, dsn).Exec(context.Background(), q)
			require.NoError(t, err)
			return
		}
		sdb, err := sql.Open("sqlite", "file:"+dsn+"?_pragma=busy_timeout(5000)")
		require.NoError(t, err)
		defer sdb.Close()
		_, err = sdb.Exec(q)
		require.NoError(t, err)
	}
	exec(`ALTER TABLE session_changes RENAME TO session_changes_away`)
	return func() { exec(`ALTER TABLE session_changes_away RENAME TO session_changes`) }
}

// syncFailing makes every replica try to read the change feed, and checks
// that each failed.
func (c *cluster) syncFailing() {
	c.t.Helper()
	for i, r := range c.replicas {
		_, err := r.p.tracker.Sync(c.t.Context())
		require.Error(c.t, err, "replica %d read the feed", i)
	}
}

// requireUnavailable checks a 503 temporarily_unavailable answer of an API,
// with Retry-After.
func requireUnavailable(t *testing.T, resp *http.Response) {
	t.Helper()
	defer resp.Body.Close()
	var e oauthError
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%+v", e)
	require.Equal(t, "temporarily_unavailable", e.Error)
	require.Contains(t, e.Description, resp.Header.Get("X-Request-Id"), "names the request, nothing internal")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
}

// requireUnavailablePage checks the readable 503 page a browser gets.
func requireUnavailablePage(t *testing.T, resp *http.Response) {
	t.Helper()
	page := body(t, resp)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, page)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html"))
	require.Contains(t, page, "Temporarily unavailable")
	require.Contains(t, page, "Nothing was changed")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
}

// post sends a form to the balancer as client (basic authentication).
func (c *cluster) post(path, client string, form url.Values) *http.Response {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodPost, c.issuer+path, strings.NewReader(form.Encode()))
	require.NoError(c.t, err)
	req.SetBasicAuth(client, client+"-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	return resp
}

// get sends a bearer GET to the balancer.
func (c *cluster) get(path, token string) *http.Response {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.issuer+path, nil)
	require.NoError(c.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(c.t, err)
	return resp
}

// Rule 10: with a database that does not answer writes, every request
// that needs one answers 503 within DatabaseTimeout (a readable page for a
// browser, temporarily_unavailable for an API, both with Retry-After) and
// acknowledges nothing; once the database answers again every replica
// serves the same requests, without a restart.
func TestReplicasDatabaseThatDoesNotAnswerGives503AndRecovers(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		const timeout = 300 * time.Millisecond
		c := newCluster(t, db, 2, func(cfg *Config) { cfg.DatabaseTimeout = timeout })
		b := c.via(0).browser()
		mail := b.login(c.rp("mail"), "alice")
		fresh := c.browser()
		form := fresh.loginForm(loginPage(t, fresh, c.rp("mail")), "alice", testPassword)
		resp, err := b.client.Get(c.issuer + "/end_session?client_id=mail")
		require.NoError(t, err)
		confirm := body(t, resp)
		logout := url.Values{"t": {html.UnescapeString(between(confirm, `name="t" value="`, `"`))}, "csrf": {between(confirm, `name="csrf" value="`, `"`)}}

		release := databaseStops(t, db, c.dbPath)
		for i := range 2 {
			c.via(i)
			start := time.Now()
			resp, err := fresh.client.PostForm(c.issuer+"/login", form)
			require.NoError(t, err)
			requireUnavailablePage(t, resp)
			_, err = c.rp("mail").refresh(t, mail.RefreshToken)
			requireOAuthError(t, err, "temporarily_unavailable")
			requireUnavailable(t, c.post("/revoke", "mail", url.Values{"token": {mail.AccessToken}}))
			resp, err = b.client.PostForm(c.issuer+"/logout/confirm", logout)
			require.NoError(t, err)
			requireUnavailablePage(t, resp)
			require.Less(t, time.Since(start), 4*(timeout+time.Second), "four requests, each bounded by the timeout")
			// Introspection needs no write: it answers from memory, or from a
			// store that still reads (SQLite here); where it must read and
			// cannot (PostgreSQL's tables locked), 503. Never inactive.
			resp = c.post("/oauth/introspect", "api", url.Values{"token": {mail.AccessToken}})
			if resp.StatusCode == http.StatusServiceUnavailable && db.name != "sqlite" {
				requireUnavailable(t, resp)
				continue
			}
			var in introspection
			require.NoError(t, json.NewDecoder(resp.Body).Decode(&in))
			resp.Body.Close()
			require.True(t, in.Active, "replica %d still vouches", i)
		}
		release()

		// Nothing was acknowledged: the refresh token was not rotated, the
		// token not revoked, the session not ended; every replica serves again.
		c.via(1)
		_, err = c.rp("mail").refresh(t, mail.RefreshToken)
		require.NoError(t, err, "the refresh token of before the outage is still the current one")
		require.True(t, c.introspectAt(0, mail.AccessToken))
		fresh.login(c.rp("bank"), "alice")
		c.via(0)
		resp, err = b.client.PostForm(c.issuer+"/logout/confirm", logout)
		require.NoError(t, err)
		require.Contains(t, body(t, resp), "You have been signed out")
		c.sync()
		require.False(t, c.introspectAt(1, mail.AccessToken))
	})
}

// Rule 10, fail closed: a replica that cannot read the change feed may have
// missed an end at another replica; past StaleAfter (4 x sync_interval, 1s)
// after its last successful read it answers 503 where it would have said
// active (introspection, /session, userinfo, refresh, single sign-on),
// never active: true. It vouches again at its first successful read.
func TestReplicasFailClosedWhenTheChangeFeedCannotBeRead(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		b := c.via(0).browser()
		mail := b.login(c.rp("mail"), "alice")
		require.True(t, c.introspectAt(1, mail.AccessToken))
		c.sync()

		mend := changeFeedBreaks(t, db, c.dbPath)
		c.syncFailing()
		c.clock.Advance(time.Second)
		require.True(t, c.introspectAt(1, mail.AccessToken), "within the bound the replica still vouches")
		c.clock.Advance(time.Millisecond)
		for i := range 2 {
			c.via(i)
			requireUnavailable(t, c.post("/oauth/introspect", "api", url.Values{"token": {mail.AccessToken}}))
			requireUnavailable(t, c.get("/session", mail.AccessToken))
			requireUnavailable(t, c.get("/userinfo", mail.AccessToken))
			code, out := c.bearerCall(http.MethodPost, "/activity", mail.AccessToken, "")
			require.Equal(t, http.StatusServiceUnavailable, code, "%v", out)
			require.Equal(t, http.StatusServiceUnavailable, c.forwardAuth(http.MethodGet, "aud=mail", mail.AccessToken).StatusCode,
				"a gateway is not told to let the call through")
			_, err := c.rp("mail").refresh(t, mail.RefreshToken)
			requireOAuthError(t, err, "temporarily_unavailable")
			resp, _, _ := b.authorize(c.rp("bank"))
			requireUnavailablePage(t, resp)
		}

		mend()
		c.sync()
		for i := range 2 {
			require.True(t, c.introspectAt(i, mail.AccessToken), "replica %d vouches again", i)
		}
		_, err := c.rp("mail").refresh(t, mail.RefreshToken)
		require.NoError(t, err)
	})
}
