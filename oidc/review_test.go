package oidc

import (
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// Regression tests for defects a review found.

func TestCodeExchangedAfterTheDeadlineGetsNothing(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	bank := e.rp("bank")
	b.login(bank, "alice")
	resp, verifier, state := b.authorize(bank)
	code := b.code(resp, state)
	e.clock.Advance(6 * time.Minute) // the 5m session is over before the exchange
	_, err := bank.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	requireOAuthError(t, err, "invalid_grant")
}

func TestAdminEndAllReachesExemptAppsThatOutlivedAnIdleEnd(t *testing.T) {
	e := newEnv(t, withAdmin)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")
	e.clock.Advance(31 * time.Minute)
	e.sweep()
	require.True(t, active(t, e, video.AccessToken))
	code, out := e.adminCall(http.MethodPost, "/admin/users/alice/sessions/end", adminToken)
	require.Equal(t, http.StatusOK, code)
	require.EqualValues(t, 1, out["ended"])
	require.False(t, active(t, e, video.AccessToken))
	_, err := video.rp.refresh(t, video.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
}

func TestSignedOutPageSparesAppsWhoseSessionGoesOn(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			cl.FrontchannelLogoutURI = "http://127.0.0.1:3/" + cl.ID + "/frontchannel-logout"
		}
	})
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	b.login(e.rp("video"), "alice")
	e.clock.Advance(31 * time.Minute) // idle end; video is exempt
	resp := b.endSession(mail, "", "")
	page := body(t, resp)
	require.Contains(t, page, "/mail/frontchannel-logout")
	require.NotContains(t, page, "/video/frontchannel-logout", "the exempt app's session goes on")
}

func TestSilentRenewIsNeverActivity(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	tok := b.login(e.rp("mail"), "alice")
	e.clock.Advance(10 * time.Minute)
	resp, _, _ := b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("prompt", "none"))
	require.Equal(t, http.StatusFound, resp.StatusCode)
	resp.Body.Close()
	require.EqualValues(t, 20*60, e.status(tok.AccessToken)["idle_remaining"], "prompt=none did not restart the timer")
}

func TestOpeningAnAppAfterItsOwnIdleEndJoinsAnew(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	first := b.login(e.rp("lonely"), "alice") // app_idle_timeout 3m
	e.clock.Advance(2 * time.Minute)
	require.Equal(t, 200, e.heartbeat(mail.AccessToken))
	e.clock.Advance(2 * time.Minute) // lonely is past its own deadline, not swept
	again := b.login(e.rp("lonely"), "alice")
	require.True(t, active(t, e, again.AccessToken))
	require.False(t, active(t, e, first.AccessToken))
}

func TestAccessTokensAreRFC9068(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("mail"), "alice")
	parts := strings.Split(tok.AccessToken, ".")
	require.Len(t, parts, 3)
	hdr := decodeSegment(t, parts[0])
	require.Equal(t, "at+jwt", hdr["typ"])
	require.NotEmpty(t, hdr["kid"])
	claims := decodeSegment(t, parts[1])
	for _, k := range []string{"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope", "auth_time", "sid"} {
		require.Contains(t, claims, k)
	}
	require.Equal(t, "mail", claims["client_id"])
	require.Equal(t, tok.sid, claims["sid"])
}

func TestConfidentialClientMustSendTheVerifierItsCodeWasBoundTo(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := e.rp("mail")
	b.login(mail, "alice")
	resp, _, state := b.authorize(mail)                             // with a code_challenge
	_, err := mail.oauth.Exchange(t.Context(), b.code(resp, state)) // no code_verifier
	requireOAuthError(t, err, "invalid_request")
}

func TestMetricsNeedTheAdminTokenAndCountEnds(t *testing.T) {
	e := newEnv(t, withAdmin)
	tok := e.browser().login(e.rp("bank"), "alice")
	e.clock.Advance(4 * time.Minute)
	require.Equal(t, http.StatusOK, e.heartbeat(tok.AccessToken))
	e.clock.Advance(5 * time.Minute)
	e.sweep()

	code, _ := e.bearerCall(http.MethodGet, "/metrics", "", "")
	require.Equal(t, http.StatusUnauthorized, code)
	req, _ := http.NewRequest(http.MethodGet, e.issuer+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	page := body(t, resp)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, `idleguard_session_ends_total{reason="idle_timeout"} 1`)
	require.Contains(t, page, `idleguard_activity_total{source="heartbeat"} 1`)
	require.Contains(t, page, `idleguard_logins_total{result="success"} 1`)
	require.Contains(t, page, "idleguard_logout_outbox_pending 0")
	require.Contains(t, page, "go_goroutines")
}

// Admin views read the tracker's live figures from a snapshot: unwritten
// activity shows, and looking writes nothing (issue 10, Code).
func TestAdminViewShowsLiveActivityWithoutWriting(t *testing.T) {
	e := newEnv(t, withAdmin)
	mail := e.browser().login(e.rp("mail"), "alice") // 30m: slack 30s
	stored, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	e.clock.Advance(20 * time.Second)
	require.Equal(t, http.StatusOK, e.heartbeat(mail.AccessToken)) // within the slack: not written

	code, out := e.adminCall(http.MethodGet, "/admin/sessions?user=alice", adminToken)
	require.Equal(t, http.StatusOK, code)
	view := findSession(out["sessions"].([]any), mail.sid)
	require.Equal(t, e.clock.Now().UTC().Format(time.RFC3339), view["last_active_at"], "the live figure")
	apps := view["apps"].([]any)
	require.Equal(t, e.clock.Now().UTC().Format(time.RFC3339), apps[0].(map[string]any)["last_active_at"])

	after, _, err := e.store.AuthSession(t.Context(), mail.sid)
	require.NoError(t, err)
	require.Equal(t, stored.LastActiveAt, after.LastActiveAt, "looking wrote nothing")
}

// A state sent to end_session without a post_logout_redirect_uri has
// nowhere to go back to (RP-Initiated Logout 1.0 section 2: it is passed
// back only to a redirect URI). It was appended to the signed-out page's
// own path, so the page that had just signed the person out sent them on
// to a ticketless copy of itself: "This browser's sign-in was not changed".
func TestStateWithoutRedirectLeavesThePersonOnTheSignedOutPage(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	resp := b.endSession(mail, "", "xyz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "You have been signed out")
	require.NotContains(t, page, "/logged-out", "the signed-out page sends the browser nowhere")
	require.NotContains(t, page, "location.replace")
	require.False(t, active(t, e, mail.AccessToken))
}

// An app that still holds the ID token of an earlier session (it missed the
// idle end: no back-channel logout) sends the browser to end_session with
// it, after the person signed in again. The hint's session was over, so
// nothing ended, and the signed-out page refused to speak for the
// browser's live session: the person who pressed "Sign out" on a shared
// computer stayed signed in to every app, told only that a link had
// expired. RP-Initiated Logout 1.0 section 2: when the hint is not the
// browser's current session, ask the person.
func TestStaleHintAsksAboutTheBrowsersOwnSession(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	stale := b.login(e.rp("bank"), "alice")
	e.clock.Advance(6 * time.Minute) // bank's 5m limit: the session is over
	mail := b.login(e.rp("mail"), "alice")
	require.NotEqual(t, stale.sid, mail.sid, "a new session")

	resp := b.endSession(stale, "http://127.0.0.1:1/bank/", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "Sign out everywhere", "the person is asked about this browser's session")
	require.True(t, active(t, e, mail.AccessToken), "nothing of the live session ends before the person confirms")

	resp, err := b.client.PostForm(e.issuer+"/logout/confirm", url.Values{
		"t": {html.UnescapeString(between(page, `name="t" value="`, `"`))}, "csrf": {between(page, `name="csrf" value="`, `"`)}})
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), `href="http://127.0.0.1:1/bank/"`)
	require.False(t, active(t, e, mail.AccessToken), "confirmed: the browser's session is over")
}

// A hint for the browser's own live session signs out at once, as before.
func TestHintOfTheBrowsersSessionSignsOutAtOnce(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	resp := b.endSession(mail, "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), "You have been signed out")
	require.False(t, active(t, e, mail.AccessToken))
}

// The confirmation page's ticket and the signed-out page's ticket were
// sealed alike, so the ticket of "Sign out?" (a session not yet ended)
// opened the signed-out page: it cleared the browser's cookie and said
// "signed out of every application" while the session and every app went
// on. A ticket opens only the page it was made for.
func TestConfirmationTicketDoesNotOpenTheSignedOutPage(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	resp, err := b.client.Get(e.issuer + "/end_session?client_id=mail")
	require.NoError(t, err)
	page := body(t, resp)
	require.Contains(t, page, "Sign out everywhere")
	ticket := html.UnescapeString(between(page, `name="t" value="`, `"`))
	require.NotEmpty(t, ticket)

	resp, err = b.client.Get(e.issuer + "/logged-out?t=" + url.QueryEscape(ticket))
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.NotContains(t, body(t, resp), "You have been signed out")
	for _, c := range resp.Cookies() {
		require.NotEqual(t, sessionCookieName, c.Name, "the browser's sign-in is not touched")
	}
	require.True(t, active(t, e, mail.AccessToken))
}
