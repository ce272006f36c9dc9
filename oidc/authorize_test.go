package oidc

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/session"
)

// The authorization request and code findings of issue 9 (4, 15, 18).

func TestReplayedCodeRevokesTheTokensItGave(t *testing.T) {
	e, rs := newEnvWithReceivers(t, []string{"mail"}, withAdmin)
	b := e.browser()
	mail := e.rp("mail")
	resp, verifier, state := b.authorize(mail)
	code := b.code(b.submitLogin(body(t, resp), "alice", testPassword), state)
	tok := b.exchange(mail, code, verifier)
	require.True(t, active(t, e, tok.AccessToken))

	_, err := mail.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	requireOAuthError(t, err, "invalid_grant")

	require.False(t, active(t, e, tok.AccessToken), "the access token issued from the code is revoked")
	_, err = mail.refresh(t, tok.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	events, err := e.store.Audit(t.Context(), sessionFilter(tok.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditAppEnd, string(session.ReasonCodeReuse)), "the audit says why: %+v", events)
	e.deliver()
	got := rs["mail"].tokens()
	require.Len(t, got, 1)
	require.Equal(t, "code_reuse", got[0].Reason, "the app is told why")

	// The person's session goes on: only that app's session ended.
	bank := b.login(e.rp("bank"), "alice")
	require.Equal(t, tok.sid, bank.sid)
	require.True(t, active(t, e, bank.AccessToken))
}

func TestReplayedCodeIsCountedInMetrics(t *testing.T) {
	e := newEnv(t, withAdmin)
	b := e.browser()
	mail := e.rp("mail")
	resp, verifier, state := b.authorize(mail)
	code := b.code(b.submitLogin(body(t, resp), "alice", testPassword), state)
	b.exchange(mail, code, verifier)
	_, err := mail.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	requireOAuthError(t, err, "invalid_grant")
	req, _ := http.NewRequest(http.MethodGet, e.issuer+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	mresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	var ends []string
	for _, line := range strings.Split(body(t, mresp), "\n") {
		if strings.HasPrefix(line, "idleguard_session_ends_total") {
			ends = append(ends, line)
		}
	}
	require.Contains(t, ends, `idleguard_session_ends_total{reason="code_reuse"} 1`)
}

// authorizeQuery is a valid authorization request for mail.
func authorizeQuery(extra url.Values) url.Values {
	q := url.Values{"client_id": {"mail"}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "response_type": {"code"},
		"scope": {"openid"}, "state": {"st"}, "code_challenge": {pkceChallenge(oauth2.GenerateVerifier())}, "code_challenge_method": {"S256"}}
	for k, v := range extra {
		q[k] = v
	}
	return q
}

func TestAuthorizeBoundsEveryParameter(t *testing.T) {
	e := newEnv(t)
	long := func(n int) []string { return []string{strings.Repeat("a", n)} }
	for _, tc := range []struct {
		name      string
		extra     url.Values
		err, desc string
		state     string // echoed state
	}{
		{"state", url.Values{"state": long(2049)}, "invalid_request", "state", ""},
		{"nonce", url.Values{"nonce": long(513)}, "invalid_request", "nonce", "st"},
		{"login_hint", url.Values{"login_hint": long(257)}, "invalid_request", "login_hint", "st"},
		{"ui_locales", url.Values{"ui_locales": long(257)}, "invalid_request", "ui_locales", "st"},
		{"claims", url.Values{"claims": long(2049)}, "invalid_request", "claims", "st"},
		{"acr_values", url.Values{"acr_values": long(513)}, "invalid_request", "acr_values", "st"},
		{"repeated state", url.Values{"state": {"st", "other"}}, "invalid_request", "repeated", ""},
		{"code_challenge not S256-shaped", url.Values{"code_challenge": {"short"}}, "invalid_request", "code_challenge", "st"},
		{"unknown response_mode", url.Values{"response_mode": {"web_message"}}, "invalid_request", "response_mode", "st"},
		{"request_uri", url.Values{"request_uri": {"https://evil.example/req.jwt"}}, "request_uri_not_supported", "", "st"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, noRedirects(e.browser()), e.issuer+"/authorize?"+authorizeQuery(tc.extra).Encode())
			resp.Body.Close()
			require.Equal(t, http.StatusFound, resp.StatusCode)
			loc, err := url.Parse(resp.Header.Get("Location"))
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(loc.String(), "http://127.0.0.1:1/mail/callback?"), "to the verified redirect_uri: %s", loc)
			q := loc.Query()
			require.Equal(t, tc.err, q.Get("error"), q.Get("error_description"))
			require.Contains(t, q.Get("error_description"), tc.desc)
			require.Equal(t, tc.state, q.Get("state"))
			require.Empty(t, q.Get("code"))
		})
	}
}

func TestAStoredAuthorizationRequestStaysSmall(t *testing.T) {
	e := newEnv(t)
	// Every parameter at its bound: what is kept until the exchange.
	q := authorizeQuery(url.Values{"state": {strings.Repeat("s", 2048)}, "nonce": {strings.Repeat("n", 512)},
		"login_hint": {strings.Repeat("l", 256)}, "scope": {strings.TrimSpace(strings.Repeat("openid profile ", 60))},
		"prompt": {"login consent select_account login x y z"}, "ui_locales": {strings.Repeat("u", 256)}})
	resp := get(t, e.browser().client, e.issuer+"/authorize?"+q.Encode())
	require.Equal(t, http.StatusOK, resp.StatusCode, body(t, resp))
	resp.Body.Close()
	var n int
	require.NoError(t, e.store.ReaderForTest().QueryRowContext(t.Context(), `SELECT max(length(data)) FROM auth_requests`).Scan(&n))
	require.Less(t, n, 4096, "stored bytes")
	var scopes, prompts string
	require.NoError(t, e.store.ReaderForTest().QueryRowContext(t.Context(),
		`SELECT json_extract(data, '$.scopes'), json_extract(data, '$.prompt') FROM auth_requests`).Scan(&scopes, &prompts))
	require.JSONEq(t, `["openid","profile"]`, scopes, "each scope once")
	require.JSONEq(t, `["login","consent","select_account"]`, prompts, "known prompts, each once")
}

func TestPostAuthorizeIsCappedAndBound(t *testing.T) {
	e := newEnv(t)
	post := func(c *http.Client, form url.Values) *http.Response {
		resp, err := c.PostForm(e.issuer+"/authorize", form)
		require.NoError(t, err)
		return resp
	}
	t.Run("over the cap", func(t *testing.T) {
		resp := post(noRedirects(e.browser()), authorizeQuery(url.Values{"x": {strings.Repeat("a", 70_000)}}))
		page := body(t, resp)
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, page)
		require.Contains(t, page, "too large")
		var n int
		require.NoError(t, e.store.ReaderForTest().QueryRowContext(t.Context(), `SELECT count(*) FROM auth_requests`).Scan(&n))
		require.Zero(t, n, "nothing stored")
	})
	t.Run("a parameter over its bound", func(t *testing.T) {
		b := e.browser()
		b.login(e.rp("bank"), "alice") // now with a binding cookie: POST is served directly
		resp := post(noRedirects(b), authorizeQuery(url.Values{"nonce": {strings.Repeat("n", 600)}}))
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		require.Equal(t, "invalid_request", loc.Query().Get("error"))
	})
	t.Run("cross-site post without the cookie becomes a GET that carries it", func(t *testing.T) {
		b := e.browser()
		b.login(e.rp("bank"), "alice")
		set := len(cookiesNamed(b, browserCookieName))
		// What a browser sends on a cross-site form post: no Lax cookies.
		verifier := oauth2.GenerateVerifier()
		form := authorizeQuery(url.Values{"code_challenge": {pkceChallenge(verifier)}, "state": {"posted"}})
		resp := post(noRedirects(nil), form)
		resp.Body.Close()
		require.Equal(t, http.StatusSeeOther, resp.StatusCode)
		next, err := url.Parse(e2eURL(e, resp.Header.Get("Location")))
		require.NoError(t, err)
		require.Equal(t, "/authorize", next.Path)
		// The browser follows with its cookies: single sign-on, bound to its token.
		resp = get(t, b.client, next.String())
		tok := b.exchange(e.rp("mail"), b.code(resp, "posted"), verifier)
		require.True(t, active(t, e, tok.AccessToken))
		require.Len(t, cookiesNamed(b, browserCookieName), set, "no second binding token")
	})
	t.Run("other methods", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPut, e.issuer+"/authorize?"+authorizeQuery(nil).Encode(), nil)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	})
}

func countAuthRequests(t *testing.T, e *env) int {
	t.Helper()
	var n int
	require.NoError(t, e.store.ReaderForTest().QueryRowContext(t.Context(), `SELECT count(*) FROM auth_requests`).Scan(&n))
	return n
}

func TestExpiredAuthorizationRequestsArePurged(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.startFlow(e.rp("mail"))
	b.login(e.rp("bank"), "alice") // redeemed, kept for replay detection
	require.Equal(t, 2, countAuthRequests(t, e))

	e.clock.Advance(9 * time.Minute)
	b.startFlow(e.rp("video"))
	require.NoError(t, e.p.purge(t.Context()))
	require.Equal(t, 3, countAuthRequests(t, e), "nothing expired yet")

	e.clock.Advance(time.Minute)
	require.NoError(t, e.p.purge(t.Context()))
	require.Equal(t, 1, countAuthRequests(t, e), "the two of ten minutes ago are gone")

}

func TestHousekeepingPurgesExpiredAuthorizationRequests(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HousekeepInterval = 5 * time.Millisecond })
	e.browser().startFlow(e.rp("mail"))
	require.Equal(t, 1, countAuthRequests(t, e))
	e.clock.Advance(10 * time.Minute)
	ctx, cancel := context.WithCancel(t.Context())
	e.p.Run(ctx)
	t.Cleanup(func() { cancel(); require.NoError(t, e.p.Close(context.Background())) })
	// Waits for the background loop, not for a timeout: the clock decides expiry.
	require.Eventually(t, func() bool { return countAuthRequests(t, e) == 0 }, 5*time.Second, 5*time.Millisecond)
}
