package oidc

import (
	"net/http"
	"net/url"
	"regexp"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

// accountPost posts form to path with the CSRF token of page.
func (b *browser) accountPost(page, path string, form url.Values) *http.Response {
	b.t.Helper()
	m := regexp.MustCompile(`name="csrf" value="([^"]*)"`).FindStringSubmatch(page)
	require.NotNil(b.t, m, "no form in page:\n%s", page)
	form.Set("csrf", m[1])
	resp, err := b.client.PostForm(b.e.issuer+path, form)
	require.NoError(b.t, err)
	return resp
}

func (b *browser) get(path string) *http.Response {
	b.t.Helper()
	resp, err := b.client.Get(b.e.issuer + path)
	require.NoError(b.t, err)
	return resp
}

var secretOnPage = regexp.MustCompile(`<code class="secret">([A-Z2-7]+)</code>`)

func TestAccountPageEnrollsTOTPAfterAFreshSignIn(t *testing.T) {
	e := newEnv(t)
	resp := e.browser().get("/account")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Contains(t, body(t, resp), "Not signed in")

	b := e.browser()
	b.login(e.rp("mail"), "alice")
	page := body(t, b.get("/account"))
	require.Contains(t, page, "Set up authenticator app")

	resp = b.accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page = body(t, resp)
	secret := secretOnPage.FindStringSubmatch(page)
	require.NotNil(t, secret, page)
	require.Contains(t, page, `src="data:image/png;base64,`)

	for _, bad := range []string{"abcdef", "000000"} {
		resp = b.accountPost(page, "/account/totp/confirm", url.Values{"code": {bad}})
		require.Contains(t, []int{http.StatusBadRequest, http.StatusUnauthorized}, resp.StatusCode)
		page = body(t, resp)
		require.Contains(t, page, `role="alert"`)
		f, err := e.p.factors.Of(t.Context(), userIDOf(t, e, "alice"))
		require.NoError(t, err)
		require.False(t, f.Any(), "nothing enrolled by %q", bad)
	}
	require.Equal(t, secret[1], secretOnPage.FindStringSubmatch(page)[1], "the same setup goes on after a wrong code")

	resp = b.accountPost(page, "/account/totp/confirm", url.Values{"code": {e.totpCode(secret[1], 0)}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), "Save your recovery codes")
	page = body(t, b.get("/account"))
	require.Contains(t, page, "On. 10 recovery codes left.")
	events, err := e.store.Audit(t.Context(), session.AuditFilter{UserID: userIDOf(t, e, "alice")})
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditFactorEnrolled, ""))

	// Another browser's forged form, without the CSRF cookie, changes nothing.
	resp = e.browser().accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp.Body.Close()
}

func TestAccountChangesNeedASignInAtMostFiveMinutesOld(t *testing.T) {
	e := newEnv(t)
	secret, _ := e.enrollTOTP("alice")
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	e.clock.Advance(5*time.Minute + time.Second)
	page := body(t, b.get("/account"))
	require.Contains(t, page, "confirm it is you")
	require.Contains(t, page, `action="/account/confirm"`)

	resp := b.accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body(t, resp), "at most 5 minutes old")
	resp = b.accountPost(page, "/account/passkeys/delete", url.Values{"id": {"AQID"}})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	resp.Body.Close()

	resp = b.accountPost(page, "/account/confirm", url.Values{"password": {testPassword}, "code": {"111111"}})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the code is asked too")
	page = body(t, resp)
	resp = b.accountPost(page, "/account/confirm", url.Values{"password": {"wrong password"}, "code": {e.totpCode(secret, 0)}})
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	page = body(t, resp)
	resp = b.accountPost(page, "/account/confirm", url.Values{"password": {testPassword}, "code": {e.totpCode(secret, 0)}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page = body(t, resp)
	require.Contains(t, page, "Replace authenticator app", "fresh again: changes allowed")
	resp = b.accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Regexp(t, secretOnPage, body(t, resp))
}

// A fresh sign-in with the password alone does not let a person who has a
// second factor change their factors: a stolen password would otherwise
// replace the authenticator app.
func TestAccountChangesNeedTheSecondFactor(t *testing.T) {
	e := newEnv(t)
	secret, _ := e.enrollTOTP("alice")
	b := e.browser()
	require.Equal(t, "pwd", b.login(e.rp("mail"), "alice").assurance(t).ACR) // when_required: the password was enough for mail
	page := body(t, b.get("/account"))
	require.Contains(t, page, "confirm it is you")
	resp := b.accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body(t, resp), "with your second factor")

	resp = b.accountPost(page, "/account/confirm", url.Values{"password": {testPassword}, "code": {e.totpCode(secret, 0)}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page = body(t, resp)
	resp = b.accountPost(page, "/account/totp", url.Values{})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Regexp(t, secretOnPage, body(t, resp))
}
