package oidc

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/session"
)

// The critical finding of issue 9: an authorization request belongs to the
// browser that started it. Each test performs a step of the attack against
// the real handler.

// startFlow starts a code flow in b for r and stops at the login page,
// returning the sign-in link the provider sent b to.
func (b *browser) startFlow(r *rp, extra ...oauth2.AuthCodeOption) (link, verifier, state string) {
	b.t.Helper()
	resp, verifier, state := b.authorize(r, extra...)
	resp.Body.Close()
	require.Equal(b.t, http.StatusOK, resp.StatusCode, "want the login page")
	require.Equal(b.t, "/login", resp.Request.URL.Path)
	return resp.Request.URL.String(), verifier, state
}

// noRedirects is an HTTP client that never follows a redirect, with b's
// cookies (or none, when b is nil).
func noRedirects(b *browser) *http.Client {
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if b != nil {
		c.Jar = b.client.Jar
	}
	return c
}

func get(t *testing.T, c *http.Client, u string) *http.Response {
	t.Helper()
	resp, err := c.Get(u)
	require.NoError(t, err)
	return resp
}

// requireNoCode fails if resp hands out an authorization code.
func requireNoCode(t *testing.T, resp *http.Response, step string) {
	t.Helper()
	page := body(t, resp)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	require.Empty(t, loc.Query().Get("code"), "%s: a code was issued (%s)", step, loc)
	require.NotContains(t, page, `name="code"`, "%s: a code was posted", step)
}

// requireOtherBrowserPage checks the readable refusal, with no login form.
func requireOtherBrowserPage(t *testing.T, resp *http.Response, step string) {
	t.Helper()
	page := body(t, resp)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "%s:\n%s", step, page)
	require.Contains(t, page, "opened in another browser", step)
	require.NotContains(t, page, `name="password"`, "%s: no login form for someone else's request", step)
	require.Empty(t, resp.Header.Get("Location"), step)
}

func TestSignInLinkOfAnotherBrowserGivesNothing(t *testing.T) {
	for _, tc := range []struct {
		name, client  string
		victimSignsIn bool
	}{
		{"public client with PKCE, victim signed in", "spa", true},
		{"confidential client, victim signed in", "bank", true},
		{"public client, victim signed out", "spa", false},
		{"confidential client, victim signed out", "bank", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			app := e.rp(tc.client)
			victim := e.browser()
			var victimSID string
			if tc.victimSignsIn {
				victimSID = victim.login(e.rp("mail"), "alice").sid
			}

			// 1. The attacker starts the flow with his own PKCE pair and keeps the link.
			attacker := e.browser()
			link, verifier, _ := attacker.startFlow(app)

			// 2. The victim opens the link (any top-level navigation).
			resp := get(t, victim.client, link)
			requireOtherBrowserPage(t, resp, "victim opens the link")

			// 3. The attacker calls the callback, without cookies and with his own.
			id := strings.TrimPrefix(link[strings.Index(link, "authRequestID="):], "authRequestID=")
			callback := e.issuer + "/authorize/callback?id=" + id
			resp = get(t, noRedirects(nil), callback)
			require.Equal(t, http.StatusForbidden, resp.StatusCode)
			requireNoCode(t, resp, "callback without cookies")
			resp = get(t, noRedirects(attacker), callback)
			requireNoCode(t, resp, "callback in the attacker's browser")

			// 4. The attacker has nothing to redeem, and the victim's session
			// never joined the app.
			_, err := app.oauth.Exchange(t.Context(), "", oauth2.VerifierOption(verifier))
			require.Error(t, err)
			if victimSID != "" {
				events, err := e.store.Audit(t.Context(), sessionFilter(victimSID))
				require.NoError(t, err)
				for _, ev := range events {
					require.False(t, ev.Kind == session.AuditAppJoin && ev.ClientID == tc.client, "the victim's session joined %s", tc.client)
				}
			}
		})
	}
}

func TestPromptNoneFromAnotherBrowserAnswersLoginRequired(t *testing.T) {
	e := newEnv(t)
	victim := e.browser()
	victim.login(e.rp("mail"), "alice")
	attacker := e.browser()
	link := stopAtLogin(t, attacker, e.rp("bank"), oauth2.SetAuthURLParam("prompt", "none"))
	resp := get(t, noRedirects(victim), link)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode, "prompt=none shows no page, not even this one")
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	require.Equal(t, "login_required", loc.Query().Get("error"))
	require.Empty(t, loc.Query().Get("code"))
}

// stopAtLogin starts a flow in b and returns the login link without opening it.
func stopAtLogin(t *testing.T, b *browser, r *rp, extra ...oauth2.AuthCodeOption) string {
	t.Helper()
	opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(oauth2.GenerateVerifier())}, extra...)
	resp := get(t, noRedirects(b), r.oauth.AuthCodeURL("s", opts...))
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	return e2eURL(b.e, resp.Header.Get("Location"))
}

func e2eURL(e *env, loc string) string {
	if strings.HasPrefix(loc, "/") {
		return e.issuer + loc
	}
	return loc
}

// completeButStop signs b in to r and returns the callback URL the provider
// sends b to, without following it.
func completeButStop(t *testing.T, b *browser, r *rp) (callback, verifier, state string) {
	t.Helper()
	link, verifier, state := b.startFlow(r)
	page := body(t, get(t, b.client, link))
	fields := map[string]string{}
	for _, m := range hiddenInput.FindAllStringSubmatch(page, -1) {
		fields[m[1]] = m[2]
	}
	resp, err := noRedirects(b).PostForm(b.e.issuer+"/login", url.Values{"authRequestID": {fields["authRequestID"]},
		"csrf": {fields["csrf"]}, "username": {"alice"}, "password": {testPassword}})
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	return e2eURL(b.e, resp.Header.Get("Location")), verifier, state
}

func TestCallbackIssuesTheCodeOnlyToTheBrowserThatStartedTheRequest(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	bank := e.rp("bank")
	callback, verifier, state := completeButStop(t, b, bank)

	// Someone who learnt the link (a log, a Referer) calls it first.
	resp := get(t, noRedirects(nil), callback)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	requireNoCode(t, resp, "callback from another browser")
	resp = get(t, noRedirects(e.browser()), callback)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	requireNoCode(t, resp, "callback from another signed-out browser")

	// The browser that started it gets its code, once.
	resp = get(t, noRedirects(b), callback)
	tok := b.exchange(bank, b.code(resp, state), verifier)
	require.True(t, active(t, e, tok.AccessToken))
	resp = get(t, noRedirects(b), callback)
	requireNoCode(t, resp, "the callback again")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func TestCallbackNeedsTheSessionThatCompletedTheRequest(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	callback, _, _ := completeButStop(t, b, e.rp("bank"))
	u, err := url.Parse(e.issuer)
	require.NoError(t, err)
	// The browser no longer carries that session's cookie (cleared, or
	// replaced), although the session is live.
	b.client.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookieName, Value: "", Path: "/", MaxAge: -1}})
	resp := get(t, noRedirects(b), callback)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	requireNoCode(t, resp, "callback without the completing session")
}

func TestTwoTabsSignInToTwoAppsAtOnce(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail, bank := e.rp("mail"), e.rp("bank")
	// Both tabs reach the login page before either signs in.
	respMail, verifierMail, stateMail := b.authorize(mail)
	respBank, verifierBank, stateBank := b.authorize(bank)
	pageMail, pageBank := body(t, respMail), body(t, respBank)
	require.Contains(t, pageMail, `name="password"`)
	require.Contains(t, pageBank, `name="password"`)
	require.Len(t, cookiesNamed(b, browserCookieName), 1, "one binding cookie for every request of the browser")

	tokMail := b.exchange(mail, b.code(b.submitLogin(pageMail, "alice", testPassword), stateMail), verifierMail)
	tokBank := b.exchange(bank, b.code(b.submitLogin(pageBank, "alice", testPassword), stateBank), verifierBank)
	require.Equal(t, tokMail.sid, tokBank.sid, "one session, two apps")
	require.True(t, active(t, e, tokMail.AccessToken))
	require.True(t, active(t, e, tokBank.AccessToken))
}

func TestConcurrentFlowsInOneBrowserAllComplete(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	var wg sync.WaitGroup
	for _, id := range []string{"bank", "video", "spa", "opaque"} {
		r := e.rp(id)
		// A tab: the browser's cookies, its own connection.
		tab := &http.Client{Jar: b.client.Jar, CheckRedirect: b.client.CheckRedirect}
		wg.Go(func() {
			verifier := oauth2.GenerateVerifier()
			resp, err := tab.Get(r.oauth.AuthCodeURL("st-"+r.id, oauth2.S256ChallengeOption(verifier)))
			if !assertNoErr(t, err) {
				return
			}
			loc, err := url.Parse(resp.Header.Get("Location"))
			resp.Body.Close()
			if !assertNoErr(t, err) || resp.StatusCode != http.StatusFound || loc.Query().Get("state") != "st-"+r.id {
				t.Errorf("%s: SSO answered %d %s", r.id, resp.StatusCode, loc)
				return
			}
			if _, err := r.oauth.Exchange(t.Context(), loc.Query().Get("code"), oauth2.VerifierOption(verifier)); err != nil {
				t.Errorf("%s: %v", r.id, err)
			}
		})
	}
	wg.Wait()
}

func assertNoErr(t *testing.T, err error) bool {
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}

// cookiesNamed lists the cookies named name that the provider set in b.
func cookiesNamed(b *browser, name string) []*http.Cookie {
	var out []*http.Cookie
	for _, c := range b.setCookies {
		if c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

func TestBindingCookieIsHttpOnlyLaxAndLongLived(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	b.login(e.rp("bank"), "alice")
	set := cookiesNamed(b, browserCookieName)
	require.Len(t, set, 1, "set once, then reused")
	c := set[0]
	require.True(t, c.HttpOnly)
	require.Equal(t, http.SameSiteLaxMode, c.SameSite, "sent with the app's top-level redirect to /authorize")
	require.Equal(t, "/", c.Path)
	require.Greater(t, c.MaxAge, 30*24*3600)
	require.Len(t, c.Value, browserTokenLen)
}

func TestTheBrowserThatStartedTheRequestStillSignsIn(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	fresh := b.login(e.rp("mail"), "alice") // the form
	sso := b.login(e.rp("spa"), "alice")    // single sign-on, no form
	require.Equal(t, fresh.sid, sso.sid)

	// Silent renew: prompt=none answered from the session with a code.
	bank := e.rp("bank")
	resp, verifier, state := b.authorize(bank, oauth2.SetAuthURLParam("prompt", "none"))
	silent := b.exchange(bank, b.code(resp, state), verifier)
	require.Equal(t, fresh.sid, silent.sid)

	// prompt=login shows the form again, and completes in this browser.
	resp, verifier, state = b.authorize(bank, oauth2.SetAuthURLParam("prompt", "login"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	again := b.exchange(bank, b.code(b.submitLogin(body(t, resp), "alice", testPassword), state), verifier)
	require.Equal(t, fresh.sid, again.sid)
	for _, tok := range []*tokens{fresh, sso, again} {
		require.True(t, active(t, e, tok.AccessToken))
	}
}
