package oidc

import (
	"net/http"
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
