package oidc

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

func loginPage(t *testing.T, b *browser, r *rp) string {
	t.Helper()
	resp, _, _ := b.authorize(r)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	return body(t, resp)
}

func TestLoginRejectsWrongPasswordsWithOneGenericMessage(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	page := loginPage(t, b, e.rp("mail"))
	for _, creds := range [][2]string{{"alice", "wrong password"}, {"nobody", testPassword}} {
		resp := b.submitLogin(page, creds[0], creds[1])
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		out := body(t, resp)
		require.Contains(t, out, "Wrong username or password.")
		require.Contains(t, out, `role="alert"`)
		page = out
	}
}

func TestLoginNeedsTheCSRFToken(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	page := loginPage(t, b, e.rp("mail"))
	forged := strings.Replace(page, `name="csrf" value="`, `name="csrf" value="x`, 1)
	resp := b.submitLogin(forged, "alice", testPassword)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body(t, resp), "expired")

	// Another browser (no CSRF cookie) cannot post this browser's form.
	other := e.browser()
	resp = other.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp.Body.Close()
}

func TestLoginSlowsDownGuessing(t *testing.T) {
	e := newEnv(t) // MaxFailures 3
	b := e.browser()
	page := b.guess(loginPage(t, b, e.rp("mail")), "alice", 3)
	resp := b.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "even the right password waits")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	page = body(t, resp)
	require.Contains(t, page, "Too many failed attempts")

	e.clock.Advance(2 * time.Second)
	resp = b.submitLogin(page, "alice", "guess again")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	page = body(t, resp)
	resp = b.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the delay grows: 2s now")
	page = body(t, resp)
	e.clock.Advance(3 * time.Second)
	resp = b.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusFound, resp.StatusCode)
	resp.Body.Close()
}

func TestLoginPageMessagesForBadLinks(t *testing.T) {
	e := newEnv(t)
	for _, q := range []string{"", "?authRequestID=unknown", "?authRequestID=" + strings.Repeat("x", 500)} {
		resp, err := http.Get(e.issuer + "/login" + q)
		require.NoError(t, err)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
		require.Contains(t, body(t, resp), "Go back to the application and sign in again.")
	}
	resp, err := http.PostForm(e.issuer+"/login", url.Values{"authRequestID": {"unknown"}})
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	resp.Body.Close()
}

func TestPromptLoginAndMaxAgeForceAFreshSignIn(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	first := b.login(e.rp("mail"), "alice")
	e.clock.Advance(2 * time.Minute)

	resp, _, _ := b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("prompt", "login"))
	require.Equal(t, http.StatusOK, resp.StatusCode, "prompt=login shows the form")
	resp.Body.Close()
	resp, _, _ = b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("max_age", "60"))
	require.Equal(t, http.StatusOK, resp.StatusCode, "auth_time is older than max_age")
	resp.Body.Close()
	resp, _, _ = b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("max_age", "600"))
	require.Equal(t, http.StatusFound, resp.StatusCode, "within max_age: SSO")
	resp.Body.Close()

	// Signing in again keeps the session and moves auth_time.
	r := e.rp("mail")
	resp, verifier, state := b.authorize(r, oauth2.SetAuthURLParam("max_age", "60"))
	resp = b.submitLogin(body(t, resp), "alice", testPassword)
	again := b.exchange(r, b.code(resp, state), verifier)
	require.Equal(t, first.sid, again.sid)
	require.Equal(t, e.clock.Now().Unix(), authTime(t, again), "auth_time is the fresh sign-in")
}

func authTime(t *testing.T, tok *tokens) int64 {
	var c struct {
		AuthTime int64 `json:"auth_time"`
	}
	require.NoError(t, tok.id.Claims(&c))
	return c.AuthTime
}

func TestAnotherPersonSigningInReplacesTheSession(t *testing.T) {
	e := newEnv(t)
	e.addUser("bob")
	b := e.browser()
	alice := b.login(e.rp("mail"), "alice")
	r := e.rp("bank")
	resp, verifier, state := b.authorize(r, oauth2.SetAuthURLParam("prompt", "login"))
	resp = b.submitLogin(body(t, resp), "bob", testPassword)
	bob := b.exchange(r, b.code(resp, state), verifier)
	require.NotEqual(t, alice.sid, bob.sid)
	require.False(t, active(t, e, alice.AccessToken), "alice's session in this browser ended")
}

// guess submits n wrong passwords for username, each refused with 401, and
// returns the last page.
func (b *browser) guess(page, username string, n int) string {
	b.t.Helper()
	for range n {
		resp := b.submitLogin(page, username, "guess")
		require.Equal(b.t, http.StatusUnauthorized, resp.StatusCode)
		page = body(b.t, resp)
	}
	return page
}
