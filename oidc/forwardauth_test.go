package oidc

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/activity"
)

// forwardAuth asks the gateway check as a gateway would, with the caller's
// bearer token (none when token is empty) and query (the aud list).
func (e *env) forwardAuth(method, query, token string) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.issuer+"/forward-auth?"+query, nil)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// requireForward checks a gateway check's status and X-Idleguard-Reason.
func requireForward(t *testing.T, resp *http.Response, status int, reason string) {
	t.Helper()
	require.Equal(t, status, resp.StatusCode)
	require.Equal(t, reason, resp.Header.Get("X-Idleguard-Reason"))
	if status == http.StatusUnauthorized {
		require.Contains(t, resp.Header.Get("WWW-Authenticate"), `Bearer realm="idleguard", error="invalid_token"`)
	}
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
}

// withoutSource switches activity source src off for client id.
func withoutSource(id string, src activity.Source) envOption {
	return func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == id {
				cl.Policy.Sources &^= src
			}
		}
	}
}

// TestForwardAuthIsActivityOnlyWhenItLets is the gateway check's contract
// for JWT and opaque tokens: a call it lets through names the person and
// keeps the session alive with no heartbeat (the 30-minute limit is passed
// three times over); a call it refuses (wrong app) moves nothing; after the
// deadline the API is told why.
func TestForwardAuthIsActivityOnlyWhenItLets(t *testing.T) {
	for _, app := range []string{"mail", "opaque"} {
		t.Run(app, func(t *testing.T) {
			e := newEnv(t)
			tk := e.browser().login(e.rp(app), "alice")
			aud := "aud=bank," + app
			for range 5 {
				e.clock.Advance(20 * time.Minute) // the token (30m) is renewed as an app does; refresh is not activity
				resp := e.forwardAuth(http.MethodGet, aud, tk.fresh(e))
				requireForward(t, resp, http.StatusOK, "")
				h := resp.Header
				require.Equal(t, tk.sid, h.Get("X-Idleguard-Session"))
				require.Equal(t, app, h.Get("X-Idleguard-Client"))
				require.Equal(t, "openid profile email offline_access", h.Get("X-Idleguard-Scope"))
				require.Equal(t, strconv.Itoa(int((30 * time.Minute).Seconds())), h.Get("X-Idleguard-Expires-In"))
				user, err := e.store.UserByUsername(t.Context(), "alice")
				require.NoError(t, err)
				require.Equal(t, user.ID, h.Get("X-Idleguard-Subject"))
			}
			require.EqualValues(t, 5, e.p.tracker.Stats().Activity["api"])

			e.clock.Advance(20 * time.Minute)
			requireForward(t, e.forwardAuth(http.MethodGet, "aud=bank", tk.fresh(e)), http.StatusForbidden, "wrong_audience")
			e.clock.Advance(10 * time.Minute) // 30 minutes since the last call let through
			requireForward(t, e.forwardAuth(http.MethodGet, aud, tk.AccessToken), http.StatusUnauthorized, "idle_timeout")
			require.EqualValues(t, 5, e.p.tracker.Stats().Activity["api"], "refusals are never activity")
		})
	}
}

// TestForwardAuthExemptTokenOpensOnlyItsOwnAPI: an exempt app's token (its
// session outlives the shared one) is refused at every other app's API,
// and its calls keep only itself alive.
func TestForwardAuthExemptTokenOpensOnlyItsOwnAPI(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")
	requireForward(t, e.forwardAuth(http.MethodGet, "aud=mail", video.AccessToken), http.StatusForbidden, "wrong_audience")
	e.clock.Advance(20 * time.Minute)
	requireForward(t, e.forwardAuth(http.MethodGet, "aud=video", video.AccessToken), http.StatusOK, "")
	e.clock.Advance(11 * time.Minute)
	requireForward(t, e.forwardAuth(http.MethodGet, "aud=mail", mail.AccessToken), http.StatusUnauthorized, "idle_timeout")
	requireForward(t, e.forwardAuth(http.MethodGet, "aud=video", video.AccessToken), http.StatusOK, "")
}

// TestForwardAuthRefusesEveryEndedOrForeignCredential: a logout anywhere,
// a revoked token, tokens that are not a person's access token, and a
// client that does not count api traffic.
func TestForwardAuthRefusesEveryEndedOrForeignCredential(t *testing.T) {
	e := newEnv(t, withoutSource("bank", activity.API))
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	bank := b.login(e.rp("bank"), "alice")

	t.Run("api switched off for the client", func(t *testing.T) {
		requireForward(t, e.forwardAuth(http.MethodGet, "aud=bank", bank.AccessToken), http.StatusOK, "")
		require.Zero(t, e.p.tracker.Stats().Activity["api"])
	})
	t.Run("not an access token", func(t *testing.T) {
		status, out := tokenRequest(t, e, url.Values{"grant_type": {"client_credentials"}}, "mail", "mail-secret")
		require.Equal(t, http.StatusOK, status)
		cc := out["access_token"].(string)
		for name, tok := range map[string]string{"id token": mail.raw, "refresh token": mail.RefreshToken,
			"client credentials": cc, "garbage": "abc.def.ghi", "missing": ""} {
			resp := e.forwardAuth(http.MethodGet, "aud=mail", tok)
			requireForward(t, resp, http.StatusUnauthorized, "invalid_token")
			require.Empty(t, resp.Header.Get("X-Idleguard-Subject"), name)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		other := e.browser().login(e.rp("mail"), "alice")
		require.Equal(t, http.StatusOK, revokeStatus(t, e, "mail", other.AccessToken))
		requireForward(t, e.forwardAuth(http.MethodGet, "aud=mail", other.AccessToken), http.StatusUnauthorized, "invalid_token")
	})
	t.Run("logout anywhere", func(t *testing.T) {
		b.endSession(mail, "", "").Body.Close()
		requireForward(t, e.forwardAuth(http.MethodGet, "aud=bank", bank.AccessToken), http.StatusUnauthorized, "logout")
	})
	require.Zero(t, e.p.tracker.Stats().Activity["api"])
}

// TestForwardAuthBadRequests: the audience list is the gateway's
// configuration; anything ambiguous is refused, never guessed, and the
// check answers the same to every method, never reading a body.
func TestForwardAuthBadRequests(t *testing.T) {
	e := newEnv(t)
	tk := e.browser().login(e.rp("mail"), "alice")
	for name, query := range map[string]string{
		"no aud":            "",
		"empty aud":         "aud=",
		"aud twice":         "aud=mail&aud=bank",
		"appended by envoy": "aud=mail&path=/api&aud=bank",
		"unknown client":    "aud=mail,nosuch",
		"17 audiences":      "aud=" + strings.Repeat("mail,", 16) + "mail",
		"long query":        "aud=mail&x=" + strings.Repeat("a", 3000),
	} {
		resp := e.forwardAuth(http.MethodGet, query, tk.AccessToken)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, name)
		require.Empty(t, resp.Header.Get("X-Idleguard-Subject"), name)
	}
	require.Zero(t, e.p.tracker.Stats().Activity["api"])

	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		req, err := http.NewRequest(method, e.issuer+"/forward-auth?aud=mail,bank", strings.NewReader(strings.Repeat("x", 1<<20)))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tk.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, method)
	}
	for _, query := range []string{
		"aud=" + url.QueryEscape(" bank , mail "),
		"aud=mail&path=/inbox/42?page=2;x", // Envoy's path_prefix with the call's path appended
	} {
		requireForward(t, e.forwardAuth(http.MethodGet, query, tk.AccessToken), http.StatusOK, "")
	}
}
