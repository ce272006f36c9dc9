package oidc

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// Bad input gets the right OAuth error and status, never a 500, never a
// redirect to an unverified URI.

func TestAuthorizeRefusesBadRequestsWithoutRedirecting(t *testing.T) {
	e := newEnv(t)
	valid := url.Values{"client_id": {"mail"}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "response_type": {"code"},
		"scope": {"openid"}, "state": {"s"}, "code_challenge": {pkceChallenge("v")}, "code_challenge_method": {"S256"}}
	with := func(k, v string) url.Values {
		q := url.Values{}
		for kk, vv := range valid {
			q[kk] = vv
		}
		if v == "" {
			q.Del(k)
		} else {
			q.Set(k, v)
		}
		return q
	}
	for _, tc := range []struct {
		name  string
		query url.Values
		text  string
	}{
		{"unknown client", with("client_id", "nobody"), "invalid_client"},
		{"unregistered redirect_uri", with("redirect_uri", "https://evil.example/cb"), "redirect_uri"},
		{"redirect_uri with a different path", with("redirect_uri", "http://127.0.0.1:1/mail/callback/x"), "redirect_uri"},
		{"missing redirect_uri", with("redirect_uri", ""), "redirect_uri"},
		{"missing client_id", with("client_id", ""), "client_id"},
		{"oversized request", with("state", strings.Repeat("a", 70_000)), "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.browser().client.Get(e.issuer + "/authorize?" + tc.query.Encode())
			require.NoError(t, err)
			page := body(t, resp)
			require.GreaterOrEqual(t, resp.StatusCode, 400, page)
			require.Less(t, resp.StatusCode, 500, page)
			require.Empty(t, resp.Header.Get("Location"), "never a redirect")
			if tc.text != "" {
				require.Contains(t, page, tc.text)
				require.Contains(t, resp.Header.Get("Content-Type"), "text/html", "a page for the person")
			}
		})
	}
}

func TestAuthorizeErrorsRedirectToTheVerifiedURI(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		name, client, redirect string
		extra                  url.Values
		want                   string
	}{
		{"public client without PKCE", "spa", "http://127.0.0.1:1/spa/callback", url.Values{}, "invalid_request"},
		{"plain PKCE", "mail", "http://127.0.0.1:1/mail/callback", url.Values{"code_challenge": {"abc"}, "code_challenge_method": {"plain"}}, "invalid_request"},
		{"response_type the client may not use", "mail", "http://127.0.0.1:1/mail/callback", url.Values{"response_type": {"token"}}, "unauthorized_client"},
		{"no openid scope", "mail", "http://127.0.0.1:1/mail/callback", url.Values{"scope": {"profile"}}, "invalid_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := url.Values{"client_id": {tc.client}, "redirect_uri": {tc.redirect}, "response_type": {"code"}, "scope": {"openid"}, "state": {"st"}}
			for k, v := range tc.extra {
				q[k] = v
			}
			resp, err := e.browser().client.Get(e.issuer + "/authorize?" + q.Encode())
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusFound, resp.StatusCode)
			loc, err := url.Parse(resp.Header.Get("Location"))
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(loc.String(), tc.redirect), loc.String())
			require.Equal(t, tc.want, loc.Query().Get("error"), loc.Query().Get("error_description"))
			require.Equal(t, "st", loc.Query().Get("state"))
		})
	}
}

func tokenRequest(t *testing.T, e *env, form url.Values, user, pass string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/oauth/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestTokenEndpointRefusesBadRequests(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := e.rp("mail")
	// A fresh code for each case.
	newCode := func() (string, string) {
		resp, verifier, state := b.authorize(mail)
		if resp.StatusCode == http.StatusOK {
			resp = b.submitLogin(body(t, resp), "alice", testPassword)
		}
		return b.code(resp, state), verifier
	}
	code, verifier := newCode()
	exchange := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}
	status, out := tokenRequest(t, e, exchange, "mail", "mail-secret")
	require.Equal(t, http.StatusOK, status, "%v", out)

	status, out = tokenRequest(t, e, exchange, "mail", "mail-secret")
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "invalid_grant", out["error"], "a replayed code")

	code, verifier = newCode()
	for _, tc := range []struct {
		name       string
		form       url.Values
		user, pass string
		status     int
		err        string
	}{
		{"wrong client secret", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}, "mail", "wrong", http.StatusUnauthorized, "invalid_client"},
		{"unknown client", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}, "nobody", "x", http.StatusUnauthorized, "invalid_client"},
		{"wrong PKCE verifier", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {oauth2.GenerateVerifier()}}, "mail", "mail-secret", http.StatusBadRequest, "invalid_grant"},
		{"code of another client", url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}, "bank", "bank-secret", http.StatusBadRequest, "invalid_grant"},
		{"garbage code", url.Values{"grant_type": {"authorization_code"}, "code": {"garbage"}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}, "mail", "mail-secret", http.StatusBadRequest, "invalid_grant"},
		{"oversized code", url.Values{"grant_type": {"authorization_code"}, "code": {strings.Repeat("x", 5000)}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}}, "mail", "mail-secret", http.StatusBadRequest, "invalid_grant"},
		{"unknown grant type", url.Values{"grant_type": {"password"}}, "mail", "mail-secret", http.StatusBadRequest, "unsupported_grant_type"},
		{"garbage refresh token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"a.b.c.d.e"}}, "mail", "mail-secret", http.StatusBadRequest, "invalid_grant"},
		{"missing refresh token", url.Values{"grant_type": {"refresh_token"}}, "mail", "mail-secret", http.StatusBadRequest, "invalid_request"},
		{"client_credentials for a public client", url.Values{"grant_type": {"client_credentials"}, "client_id": {"spa"}}, "", "", http.StatusUnauthorized, "invalid_client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, out := tokenRequest(t, e, tc.form, tc.user, tc.pass)
			require.Equal(t, tc.status, status, "%v", out)
			require.Equal(t, tc.err, out["error"], "%v", out)
		})
	}
}

func TestBearerEndpointsRefuseBadTokens(t *testing.T) {
	e := newEnv(t)
	for _, tok := range []string{"", "garbage", "a.b.c", "a.b.c.d.e", strings.Repeat("x", 10_000)} {
		for _, ep := range []struct{ method, path string }{{"GET", "/session"}, {"POST", "/activity"}, {"GET", "/userinfo"}} {
			code, out := e.bearerCall(ep.method, ep.path, tok, "")
			require.Equal(t, http.StatusUnauthorized, code, "%s %s %q: %v", ep.method, ep.path, tok, out)
		}
		if tok != "" {
			require.Equal(t, false, e.introspect(tok)["active"])
		}
	}
	// Introspection needs client authentication.
	req, _ := http.NewRequest(http.MethodPost, e.issuer+"/oauth/introspect", strings.NewReader("token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	req, _ = http.NewRequest(http.MethodPost, e.issuer+"/oauth/introspect", strings.NewReader("token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("api", "wrong")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

func TestActivityCORSOnlyForTheClientsOrigins(t *testing.T) {
	e := newEnv(t)
	spa := e.browser().login(e.rp("spa"), "alice")
	mail := e.browser().login(e.rp("mail"), "alice")

	code, _ := e.bearerCall(http.MethodPost, "/activity", spa.AccessToken, "", "Origin", "http://127.0.0.1:2")
	require.Equal(t, http.StatusOK, code)
	code, _ = e.bearerCall(http.MethodPost, "/activity", spa.AccessToken, "", "Origin", "https://evil.example")
	require.Equal(t, http.StatusForbidden, code)
	code, _ = e.bearerCall(http.MethodGet, "/session", mail.AccessToken, "", "Origin", "http://127.0.0.1:2")
	require.Equal(t, http.StatusForbidden, code, "another client's origin cannot use mail's token")

	req, _ := http.NewRequest(http.MethodOptions, e.issuer+"/activity", nil)
	req.Header.Set("Origin", "http://127.0.0.1:2")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Equal(t, "http://127.0.0.1:2", resp.Header.Get("Access-Control-Allow-Origin"))
	require.Contains(t, resp.Header.Get("Access-Control-Allow-Headers"), "Authorization")
}
