package oidc

import (
	"context"
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

// receiver is a relying party's back-channel logout endpoint: a real HTTP
// server that verifies every logout token fully against the provider's
// JWKS, as OpenID Connect Back-Channel Logout 1.0 section 2.6 requires.
type receiver struct {
	t      *testing.T
	srv    *httptest.Server
	client string
	e      *env

	mu       sync.Mutex
	failures int // answer 503 this many more times
	got      []logoutToken
	errs     []string
	arrived  []time.Time
}

type logoutToken struct {
	Issuer   string                     `json:"iss"`
	Audience audience                   `json:"aud"`
	IssuedAt int64                      `json:"iat"`
	Expiry   int64                      `json:"exp"`
	JTI      string                     `json:"jti"`
	SID      string                     `json:"sid"`
	Subject  string                     `json:"sub"`
	Events   map[string]json.RawMessage `json:"events"`
	Reason   string                     `json:"reason"`
	Nonce    *string                    `json:"nonce"`
}

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var one string
	if json.Unmarshal(b, &one) == nil {
		*a = []string{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(a))
}

func newReceiver(t *testing.T, client string) *receiver {
	r := &receiver{t: t, client: client}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	if r.failures > 0 {
		r.failures--
		r.mu.Unlock()
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	r.mu.Unlock()
	if err := req.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	tok, err := r.verify(req, req.PostForm.Get("logout_token"))
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != "" {
		r.errs = append(r.errs, err)
		http.Error(w, err, http.StatusBadRequest)
		return
	}
	r.got = append(r.got, tok)
	r.arrived = append(r.arrived, time.Now())
	w.WriteHeader(http.StatusOK)
}

func (r *receiver) verify(req *http.Request, raw string) (logoutToken, string) {
	var tok logoutToken
	if req.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		return tok, "content type " + req.Header.Get("Content-Type")
	}
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	if err != nil {
		return tok, "parse: " + err.Error()
	}
	if typ, _ := jws.Signatures[0].Header.ExtraHeaders["typ"].(string); typ != "logout+jwt" {
		return tok, "typ " + typ
	}
	payload, err := gooidc.NewRemoteKeySet(req.Context(), r.e.issuer+"/keys").VerifySignature(req.Context(), raw)
	if err != nil {
		return tok, "signature: " + err.Error()
	}
	if err := json.Unmarshal(payload, &tok); err != nil {
		return tok, "claims: " + err.Error()
	}
	now := r.e.cfg.Now().Unix()
	switch {
	case tok.Issuer != r.e.issuer:
		return tok, "iss " + tok.Issuer
	case len(tok.Audience) != 1 || tok.Audience[0] != r.client:
		return tok, "aud"
	case tok.Events == nil || tok.Events["http://schemas.openid.net/event/backchannel-logout"] == nil:
		return tok, "events"
	case tok.SID == "" || tok.Subject == "" || tok.JTI == "":
		return tok, "sid/sub/jti"
	case tok.Nonce != nil:
		return tok, "nonce present"
	case tok.IssuedAt > now+1 || tok.Expiry <= now:
		return tok, "iat/exp"
	}
	return tok, ""
}

func (r *receiver) tokens() []logoutToken {
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Empty(r.t, r.errs, "logout tokens that failed verification")
	return append([]logoutToken(nil), r.got...)
}

// withReceivers gives the named clients back-channel logout URIs served by
// fresh receivers.
func withReceivers(t *testing.T, clients ...string) (envOption, map[string]*receiver) {
	rs := map[string]*receiver{}
	for _, c := range clients {
		rs[c] = newReceiver(t, c)
	}
	return func(cfg *Config) {
		for _, c := range cfg.Clients {
			if r, ok := rs[c.ID]; ok {
				c.BackchannelLogoutURI = r.srv.URL + "/backchannel-logout"
				c.Policy.BackchannelLogoutURI = c.BackchannelLogoutURI
			}
		}
	}, rs
}

func newEnvWithReceivers(t *testing.T, clients []string, opts ...envOption) (*env, map[string]*receiver) {
	opt, rs := withReceivers(t, clients...)
	e := newEnv(t, append(opts, opt)...)
	for _, r := range rs {
		r.e = e
	}
	return e, rs
}

func (e *env) deliver() int {
	e.t.Helper()
	n, err := e.p.DeliverDue(e.t.Context())
	require.NoError(e.t, err)
	return n
}

// endSession is RP-initiated logout from the browser.
func (b *browser) endSession(tok *tokens, redirect, state string) *http.Response {
	b.t.Helper()
	q := url.Values{"id_token_hint": {tok.raw}}
	if redirect != "" {
		q.Set("post_logout_redirect_uri", redirect)
	}
	if state != "" {
		q.Set("state", state)
	}
	resp, err := b.client.Get(b.e.issuer + "/end_session?" + q.Encode())
	require.NoError(b.t, err)
	return resp
}

func (e *env) adminCall(method, path, token string) (int, map[string]any) {
	e.t.Helper()
	return e.bearerCall(method, path, token, "")
}

const adminToken = "admin-token-for-tests-0123456789"

func withAdmin(c *Config) { c.AdminTokenHash = HashSecret(adminToken) }

func TestBackchannelLogoutForEveryReason(t *testing.T) {
	for _, tc := range []struct {
		reason string
		apps   []string
		told   []string
		end    func(e *env, b *browser, toks map[string]*tokens)
	}{
		{"idle_timeout", []string{"mail", "bank"}, []string{"mail", "bank"}, func(e *env, b *browser, toks map[string]*tokens) {
			e.clock.Advance(5 * time.Minute)
			require.Equal(t, 3, e.sweep())
		}},
		{"max_lifetime", []string{"mail"}, []string{"mail"}, func(e *env, b *browser, toks map[string]*tokens) {
			for range 13 {
				e.clock.Advance(time.Hour - time.Second)
				e.heartbeat(toks["mail"].AccessToken)
				toks["mail"].fresh(e)
			}
			e.sweep()
		}},
		{"app_idle_timeout", []string{"mail", "lonely"}, []string{"lonely"}, func(e *env, b *browser, toks map[string]*tokens) {
			e.clock.Advance(3 * time.Minute)
			require.Equal(t, 200, e.heartbeat(toks["mail"].AccessToken))
			require.Equal(t, 1, e.sweep())
		}},
		{"logout", []string{"mail", "bank", "video"}, []string{"mail", "bank", "video"}, func(e *env, b *browser, toks map[string]*tokens) {
			resp := b.endSession(toks["mail"], "", "")
			require.Equal(t, http.StatusOK, resp.StatusCode, body(t, resp))
		}},
		{"admin", []string{"mail", "bank"}, []string{"mail", "bank"}, func(e *env, b *browser, toks map[string]*tokens) {
			code, out := e.adminCall(http.MethodPost, "/admin/sessions/"+toks["mail"].sid+"/end", adminToken)
			require.Equal(t, http.StatusOK, code, "%v", out)
			require.Equal(t, "admin", out["end_reason"])
		}},
		{"refresh_reuse", []string{"mail", "bank"}, []string{"bank"}, func(e *env, b *browser, toks map[string]*tokens) {
			old := toks["bank"].RefreshToken
			toks["bank"].fresh(e)
			_, err := toks["bank"].rp.refresh(t, old)
			requireOAuthError(t, err, "invalid_grant")
		}},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			e, rs := newEnvWithReceivers(t, []string{"mail", "bank", "video", "lonely"}, withAdmin)
			b := e.browser()
			toks := map[string]*tokens{}
			for _, app := range tc.apps {
				toks[app] = b.login(e.rp(app), "alice")
			}
			sid := toks[tc.apps[0]].sid
			tc.end(e, b, toks)
			e.deliver()
			for client, r := range rs {
				got := r.tokens()
				if !contains(tc.told, client) {
					require.Empty(t, got, "%s must not be told", client)
					continue
				}
				require.Len(t, got, 1, client)
				require.Equal(t, tc.reason, got[0].Reason, client)
				require.Equal(t, sid, got[0].SID, client)
				require.Equal(t, toks[client].id.Subject, got[0].Subject)
			}
			events, err := e.store.Audit(t.Context(), sessionFilter(sid))
			require.NoError(t, err)
			require.True(t, hasEvent(events, session.AuditLogoutDelivered, tc.reason))
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestExemptAppIsToldWhenItsOwnSessionEnds(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail", "video"})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("video"), "alice")
	e.clock.Advance(30 * time.Minute)
	e.sweep()
	e.deliver()
	require.Len(t, rs["mail"].tokens(), 1)
	require.Empty(t, rs["video"].tokens(), "the exempt app's session goes on")

	e.clock.Advance(2 * time.Hour)
	require.Equal(t, 1, e.sweep())
	e.deliver()
	got := rs["video"].tokens()
	require.Len(t, got, 1)
	require.Equal(t, "idle_timeout", got[0].Reason)
	require.Equal(t, mail.sid, got[0].SID)
}

func TestFailingReceiverIsRetriedUntilDelivered(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"bank"}, func(c *Config) {
		c.Backchannel = BackchannelConfig{InitialBackoff: time.Second, MaxBackoff: time.Minute, RetryFor: time.Hour}
	})
	rs["bank"].failures = 3
	tok := e.browser().login(e.rp("bank"), "alice")
	e.clock.Advance(5 * time.Minute)
	e.sweep()
	for i := 0; i < 10 && len(rs["bank"].tokens()) == 0; i++ {
		e.deliver()
		e.clock.Advance(time.Minute) // past any backoff
	}
	got := rs["bank"].tokens()
	require.Len(t, got, 1)
	events, err := e.store.Audit(t.Context(), sessionFilter(tok.sid))
	require.NoError(t, err)
	retries := 0
	for _, ev := range events {
		if ev.Kind == session.AuditLogoutRetrying {
			retries++
		}
	}
	require.Equal(t, 3, retries)
	require.True(t, hasEvent(events, session.AuditLogoutDelivered, "idle_timeout"))

	rows, err := e.store.Deliveries(t.Context(), tok.sid)
	require.NoError(t, err)
	require.Len(t, rows, 1)
	require.Equal(t, 4, rows[0].Attempts)
	require.Equal(t, got[0].JTI, rows[0].JTI, "the jti is fixed per delivery, so a repeat is recognisable")
}

func TestDeliveryIsAbandonedWhenTooOld(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"bank"}, func(c *Config) {
		c.Backchannel = BackchannelConfig{InitialBackoff: time.Second, MaxBackoff: time.Minute, RetryFor: 10 * time.Minute}
	})
	rs["bank"].failures = 1000
	tok := e.browser().login(e.rp("bank"), "alice")
	e.clock.Advance(5 * time.Minute)
	e.sweep()
	for range 20 {
		e.deliver()
		e.clock.Advance(time.Minute)
	}
	rows, err := e.store.Deliveries(t.Context(), tok.sid)
	require.NoError(t, err)
	require.False(t, rows[0].AbandonedAt.IsZero())
	events, err := e.store.Audit(t.Context(), sessionFilter(tok.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditLogoutAbandoned, "idle_timeout"))
}

func TestRPInitiatedLogoutRunsFrontchannelAndRedirects(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			cl.FrontchannelLogoutURI = "http://127.0.0.1:3/" + cl.ID + "/frontchannel-logout"
		}
	})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("bank"), "alice")
	resp := b.endSession(mail, "http://127.0.0.1:1/mail/", "xyz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	for _, c := range []string{"mail", "bank"} {
		require.Contains(t, page, `src="http://127.0.0.1:3/`+c+`/frontchannel-logout?iss=`+url.QueryEscape(e.issuer)+`&amp;sid=`+mail.sid+`"`)
	}
	require.NotContains(t, page, "video/frontchannel")
	require.Contains(t, page, `href="http://127.0.0.1:1/mail/?state=xyz"`)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-src http://127.0.0.1:3")

	// Every credential of the session is over, and the browser's cookie is gone.
	require.False(t, active(t, e, mail.AccessToken))
	resp2, _, _ := b.authorize(e.rp("mail"))
	require.Equal(t, http.StatusOK, resp2.StatusCode, "a login page")
	require.Contains(t, body(t, resp2), `name="password"`)

	a, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	require.Equal(t, session.ReasonLogout, a.EndReason)
	require.Equal(t, "mail", a.EndedBy)
}

func TestEndSessionRefusesUnregisteredRedirect(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	resp := b.endSession(mail, "https://evil.example/", "")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Empty(t, resp.Header.Get("Location"))
	require.NotContains(t, body(t, resp), "evil.example/\"")
	require.True(t, active(t, e, mail.AccessToken), "a refused request ends nothing")
}

func TestAdminAPI(t *testing.T) {
	e := newEnv(t, withAdmin)
	bob := e.addUser("bob")
	_ = bob
	b1, b2 := e.browser(), e.browser()
	one := b1.login(e.rp("mail"), "alice")
	b1.login(e.rp("bank"), "alice")
	two := b2.login(e.rp("mail"), "alice")

	code, _ := e.adminCall(http.MethodGet, "/admin/sessions?user=alice", "")
	require.Equal(t, http.StatusUnauthorized, code)
	code, _ = e.adminCall(http.MethodGet, "/admin/sessions?user=alice", "wrong")
	require.Equal(t, http.StatusUnauthorized, code)

	code, out := e.adminCall(http.MethodGet, "/admin/sessions?user=alice", adminToken)
	require.Equal(t, http.StatusOK, code)
	sessions := out["sessions"].([]any)
	require.Len(t, sessions, 2)
	first := findSession(sessions, one.sid)
	require.Equal(t, "5m0s", first["idle_timeout"])
	require.Len(t, first["apps"], 2)
	require.NotEmpty(t, first["deadline"])

	code, _ = e.adminCall(http.MethodPost, "/admin/sessions/"+one.sid+"/end", adminToken)
	require.Equal(t, http.StatusOK, code)
	require.False(t, active(t, e, one.AccessToken))
	require.True(t, active(t, e, two.AccessToken))

	code, out = e.adminCall(http.MethodPost, "/admin/users/alice/sessions/end", adminToken)
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 1, out["ended"])
	require.False(t, active(t, e, two.AccessToken))

	code, out = e.adminCall(http.MethodGet, "/admin/audit?user=alice", adminToken)
	require.Equal(t, http.StatusOK, code)
	var kinds []string
	for _, ev := range out["events"].([]any) {
		m := ev.(map[string]any)
		reason, _ := m["reason"].(string)
		by, _ := m["initiator"].(string)
		kinds = append(kinds, m["kind"].(string)+":"+reason+":"+by)
	}
	require.Contains(t, kinds, "session_end:admin:admin")
	require.Contains(t, kinds, "session_start::")

	code, _ = e.adminCall(http.MethodPost, "/admin/sessions/nope/end", adminToken)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = e.adminCall(http.MethodGet, "/admin/sessions?user=nobody", adminToken)
	require.Equal(t, http.StatusNotFound, code)
}

func findSession(list []any, sid string) map[string]any {
	for _, s := range list {
		if m := s.(map[string]any); m["sid"] == sid {
			return m
		}
	}
	return nil
}

func TestEndSessionWithoutHintAsksFirst(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	resp, err := b.client.Get(e.issuer + "/end_session?client_id=mail&post_logout_redirect_uri=" + url.QueryEscape("http://127.0.0.1:1/mail/"))
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "Sign out everywhere")
	require.True(t, active(t, e, mail.AccessToken), "nothing ends before the person confirms")

	ticket := between(page, `name="t" value="`, `"`)
	csrf := between(page, `name="csrf" value="`, `"`)
	// Another browser (a forged cross-site post) cannot confirm it.
	other := e.browser()
	resp, err = other.client.PostForm(e.issuer+"/logout/confirm", url.Values{"t": {ticket}, "csrf": {csrf}})
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp.Body.Close()
	require.True(t, active(t, e, mail.AccessToken))

	resp, err = b.client.PostForm(e.issuer+"/logout/confirm", url.Values{"t": {html.UnescapeString(ticket)}, "csrf": {csrf}})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), `href="http://127.0.0.1:1/mail/"`)
	require.False(t, active(t, e, mail.AccessToken))
}

func between(s, start, end string) string {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}

// The browser library sends a page to end_session after an idle end: that is
// not the person asking to leave, so exempt apps keep their sessions; but an
// exempt app that asks to log out itself is logged out.
func TestEndSessionAfterIdleEndKeepsExemptApps(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail", "video"})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")
	e.clock.Advance(30 * time.Minute) // idle; not swept yet

	resp := b.endSession(mail, "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp.Body.Close()
	a, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	require.Equal(t, session.ReasonIdleTimeout, a.EndReason, "the end keeps its reason")
	require.True(t, active(t, e, video.AccessToken), "the exempt app goes on")

	resp = b.endSession(video, "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp.Body.Close()
	require.False(t, active(t, e, video.AccessToken), "the exempt app asked to leave")
	e.deliver()
	require.Equal(t, "idle_timeout", rs["mail"].tokens()[0].Reason)
	require.Equal(t, "logout", rs["video"].tokens()[0].Reason)
}

func TestHeartbeatAfterTheEndSaysWhy(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("bank"), "alice")
	e.clock.Advance(5 * time.Minute)
	code, out := e.bearerCall(http.MethodPost, "/activity", tok.AccessToken, "")
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "idle_timeout", out["reason"])
}

func TestLoginPageAllowsTheFormToReachTheApp(t *testing.T) {
	e := newEnv(t)
	resp, _, _ := e.browser().authorize(e.rp("mail"))
	resp.Body.Close()
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "form-action 'self' http://127.0.0.1:1;",
		"browsers apply form-action to the redirect that follows the post")
}

// hungReceiver is a back-channel endpoint that never answers: each POST
// waits until the provider gives up on it or the test ends.
type hungReceiver struct {
	srv     *httptest.Server
	mu      sync.Mutex
	now     int // requests in flight
	maxSeen int
}

func newHungReceiver(t *testing.T) *hungReceiver {
	h := &hungReceiver{}
	release := make(chan struct{})
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.now++
		h.maxSeen = max(h.maxSeen, h.now)
		h.mu.Unlock()
		select {
		case <-r.Context().Done():
		case <-release:
		}
		h.mu.Lock()
		h.now--
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: unblocks the handlers
	return h
}

func (h *hungReceiver) maxInFlight() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.maxSeen
}

// signIn signs a fresh browser in to each app and returns the sid.
func (e *env) signIn(apps ...string) string {
	e.t.Helper()
	b := e.browser()
	var sid string
	for _, app := range apps {
		sid = b.login(e.rp(app), "alice").sid
	}
	return sid
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// TestHungAppDoesNotDelayOtherApps is issue 9, finding 5: one app that never
// answered held every other app's logout for the full timeout on every
// round, because delivery waited for a whole batch. Here "bank" never
// answers (the POST timeout is a minute) while "mail" answers at once: every
// end reaches mail within a second, however many of bank's POSTs hang, and
// bank never holds more than its own slots.
func TestHungAppDoesNotDelayOtherApps(t *testing.T) {
	hung := newHungReceiver(t)
	e, rs := newEnvWithReceivers(t, []string{"mail"}, func(c *Config) {
		c.Backchannel = BackchannelConfig{Timeout: time.Minute, Concurrency: 4, PerDestination: 2, PollInterval: time.Hour}
		for _, cl := range c.Clients {
			if cl.ID == "bank" {
				cl.BackchannelLogoutURI = hung.srv.URL + "/backchannel-logout"
				cl.Policy.BackchannelLogoutURI = cl.BackchannelLogoutURI
			}
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	e.p.Run(ctx)
	t.Cleanup(func() { cancel(); require.NoError(t, e.p.Close(context.Background())) })

	var slowest time.Duration
	for i := range 6 {
		sid := e.signIn("bank", "mail")
		start := time.Now()
		require.NoError(t, e.p.tracker.End(t.Context(), sid, session.ReasonAdmin, "admin"))
		require.Eventually(t, func() bool { return rs["mail"].count() == i+1 }, 5*time.Second, time.Millisecond,
			"end %d did not reach mail", i+1)
		slowest = max(slowest, time.Since(start))
		require.Less(t, time.Since(start), time.Second, "end %d reached mail late", i+1)
	}
	t.Logf("slowest end to reach mail while bank hangs: %s", slowest)
	require.Eventually(t, func() bool { return hung.maxInFlight() == 2 }, 5*time.Second, 5*time.Millisecond)
	require.Equal(t, 2, hung.maxInFlight(), "the hung app holds its own two slots, no more")
	require.Eventually(t, func() bool {
		pending, err := e.store.PendingDeliveries(t.Context())
		return err == nil && pending == 6
	}, 5*time.Second, 5*time.Millisecond, "bank's six logouts wait for bank, not for anyone else")
}

// TestFailingAppIsPausedByItsCircuitBreaker: an app that keeps failing is
// tried less often (three failures open its circuit; then one probe per
// cooldown) while every other app is told at once; once it answers again,
// the rest of its logouts follow.
func TestFailingAppIsPausedByItsCircuitBreaker(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail", "bank"}, func(c *Config) {
		c.Backchannel = BackchannelConfig{InitialBackoff: time.Second, MaxBackoff: time.Minute, PerDestination: 1}
	})
	rs["bank"].failures = 1000
	attempts := func() int { rs["bank"].mu.Lock(); defer rs["bank"].mu.Unlock(); return 1000 - rs["bank"].failures }
	for range 10 {
		require.NoError(t, e.p.tracker.End(t.Context(), e.signIn("bank", "mail"), session.ReasonAdmin, "admin"))
	}
	e.deliver()
	require.Len(t, rs["mail"].tokens(), 10, "everyone else is told at once")
	require.Equal(t, breakerFailures, attempts(), "then bank's circuit opens")
	e.deliver()
	require.Equal(t, breakerFailures, attempts(), "and stays open for its cooldown")

	e.clock.Advance(time.Second)
	e.deliver()
	require.Equal(t, breakerFailures+1, attempts(), "one probe after the cooldown")
	e.clock.Advance(time.Second)
	e.deliver()
	require.Equal(t, breakerFailures+1, attempts(), "a failed probe doubles the cooldown")

	rs["bank"].mu.Lock()
	rs["bank"].failures = 0
	rs["bank"].mu.Unlock()
	e.clock.Advance(time.Minute) // past the cooldown and every row's backoff
	e.deliver()
	require.Len(t, rs["bank"].tokens(), 10, "a successful probe closes the circuit")
}

// TestOutboxHasOnePendingRowPerAppAndRejoinsAreLimited: a signed-in person
// who ends an app (revoking its refresh token) and rejoins it by SSO again
// and again created a logout row each time. The pair keeps one pending row,
// and after a few rounds the rejoin is refused for a while.
func TestOutboxHasOnePendingRowPerAppAndRejoinsAreLimited(t *testing.T) {
	e, _ := newEnvWithReceivers(t, []string{"mail"})
	b := e.browser()
	r := e.rp("mail")
	tok := b.login(r, "alice")
	for i := range rejoinBurst {
		revoke(t, e, "mail", tok.RefreshToken, "refresh_token")
		rows, err := e.store.Deliveries(t.Context(), tok.sid)
		require.NoError(t, err)
		require.Len(t, rows, 1, "round %d: one pending row for (mail, sid)", i)
		require.False(t, active(t, e, tok.AccessToken))
		tok = b.login(r, "alice")
	}
	revoke(t, e, "mail", tok.RefreshToken, "refresh_token")
	resp, _, _ := b.authorize(r)
	resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	require.Equal(t, "temporarily_unavailable", loc.Query().Get("error"), "the sixth rejoin within 10 minutes is refused")
	require.Contains(t, loc.Query().Get("error_description"), "try again later")

	e.clock.Advance(rejoinWindow)
	tok = b.login(r, "alice")
	require.True(t, active(t, e, tok.AccessToken), "a while later the app may join again")
	pending, err := e.store.PendingDeliveries(t.Context())
	require.NoError(t, err)
	require.Equal(t, 1, pending)
}

// TestDeadWorkersClaimLapsesAndTheSameJTIIsDelivered: a process that died
// mid-delivery leaves its claim; nobody delivers the row while the claim
// holds, and once it lapses another process delivers it with the same jti.
// Two processes delivering from one outbox never deliver a row twice.
func TestDeadWorkersClaimLapsesAndTheSameJTIIsDelivered(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail"})
	require.NoError(t, e.p.tracker.End(t.Context(), e.signIn("mail"), session.ReasonAdmin, "admin"))
	now := e.clock.Now()
	dead, err := e.store.ClaimDeliveries(t.Context(), session.DeliveryClaim{Worker: "dead", Now: now, Until: now.Add(e.p.claimTTL()), Limit: 10})
	require.NoError(t, err)
	require.Len(t, dead, 1)
	require.Zero(t, e.deliver(), "claimed by a worker that may still be delivering")
	e.clock.Advance(e.p.claimTTL())
	require.Equal(t, 1, e.deliver())
	got := rs["mail"].tokens()
	require.Len(t, got, 1)
	require.Equal(t, dead[0].JTI, got[0].JTI, "the same logout, recognisable as such")

	// A second provider process on the same database.
	other, err := New(t.Context(), e.cfg, e.store)
	require.NoError(t, err)
	for range 20 {
		require.NoError(t, e.p.tracker.End(t.Context(), e.signIn("mail"), session.ReasonAdmin, "admin"))
	}
	var wg sync.WaitGroup
	for _, p := range []*Provider{e.p, other} {
		wg.Go(func() {
			_, err := p.DeliverDue(t.Context())
			require.NoError(t, err)
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, tok := range rs["mail"].tokens() {
		require.False(t, seen[tok.JTI], "delivered twice: %s", tok.JTI)
		seen[tok.JTI] = true
	}
	require.Len(t, seen, 21)
}

// TestDeliveredRowsArePurgedAfterRetention: finished rows are kept for
// backchannel.retention, then deleted; the audit keeps the record.
func TestDeliveredRowsArePurgedAfterRetention(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail"}, func(c *Config) { c.Backchannel.Retention = time.Hour })
	sid := e.signIn("mail")
	require.NoError(t, e.p.tracker.End(t.Context(), sid, session.ReasonAdmin, "admin"))
	e.deliver()
	require.Len(t, rs["mail"].tokens(), 1)
	e.clock.Advance(time.Hour - time.Second)
	require.NoError(t, e.p.purge(t.Context()))
	rows, err := e.store.Deliveries(t.Context(), sid)
	require.NoError(t, err)
	require.Len(t, rows, 1, "kept for the retention")
	e.clock.Advance(2 * time.Second)
	require.NoError(t, e.p.purge(t.Context()))
	rows, err = e.store.Deliveries(t.Context(), sid)
	require.NoError(t, err)
	require.Empty(t, rows, "purged after it")
	events, err := e.store.Audit(t.Context(), sessionFilter(sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditLogoutDelivered, "admin"), "the audit keeps the record")
}
