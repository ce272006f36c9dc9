package oidc

import (
	"net/http"
	"strings"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

func TestCodeFlowWithPKCEAndSingleSignOn(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := e.rp("mail")

	resp, verifier, state := b.authorize(mail)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, `<label for="username">Username</label>`)
	require.Contains(t, page, `<label for="password">Password</label>`)
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'")
	require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"))

	resp = b.submitLogin(page, "alice", testPassword)
	var sessionCookie *http.Cookie
	for _, c := range b.setCookies {
		if c.Name == sessionCookieName {
			sessionCookie = c
		}
	}
	require.NotNil(t, sessionCookie)
	require.True(t, sessionCookie.HttpOnly)
	require.Equal(t, http.SameSiteLaxMode, sessionCookie.SameSite)
	tok := b.exchange(mail, b.code(resp, state), verifier)

	require.NotEmpty(t, tok.sid, "sid in the ID token")
	require.WithinDuration(t, e.clock.Now(), tok.id.IssuedAt, time.Minute)
	var claims struct {
		AuthTime int64    `json:"auth_time"`
		AMR      []string `json:"amr"`
		Email    string   `json:"email"`
	}
	require.NoError(t, tok.id.Claims(&claims))
	require.Equal(t, e.clock.Now().Unix(), claims.AuthTime)
	require.Equal(t, []string{"pwd"}, claims.AMR)
	require.NotEmpty(t, tok.RefreshToken)

	// A second app in the same browser: no login page, same sid.
	e.clock.Advance(time.Minute)
	bank := e.rp("bank")
	resp, verifier, state = b.authorize(bank)
	require.Equal(t, http.StatusFound, resp.StatusCode, "SSO must not show a login page")
	tok2 := b.exchange(bank, b.code(resp, state), verifier)
	require.Equal(t, tok.sid, tok2.sid)
	require.NoError(t, tok2.id.Claims(&claims))
	require.Equal(t, e.clock.Now().Add(-time.Minute).Unix(), claims.AuthTime, "auth_time is the sign-in, not the SSO")

	// Each (session, client) pair got an application session.
	_, apps, err := e.store.AuthSession(t.Context(), tok.sid)
	require.NoError(t, err)
	require.Len(t, apps, 2)
	require.ElementsMatch(t, []string{"mail", "bank"}, []string{apps[0].ClientID, apps[1].ClientID})
}

func TestUserinfoClaimsFollowScopes(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	for _, tc := range []struct {
		name   string
		scopes []string
		want   map[string]any
		absent []string
	}{
		{"openid only", []string{"openid"}, map[string]any{}, []string{"email", "name"}},
		{"profile", []string{"openid", "profile"}, map[string]any{"name": "Alice", "preferred_username": "alice"}, []string{"email"}},
		{"email", []string{"openid", "email"}, map[string]any{"email": "alice@example.com", "email_verified": true}, []string{"name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.rp("mail")
			r.oauth.Scopes = tc.scopes
			tok := b.login(r, "alice")
			code, info := e.userinfo(tok.AccessToken)
			require.Equal(t, http.StatusOK, code)
			require.NotEmpty(t, info["sub"])
			for k, v := range tc.want {
				require.Equal(t, v, info[k], k)
			}
			for _, k := range tc.absent {
				require.NotContains(t, info, k)
			}
		})
	}
}

func TestRefreshRotationAndReuseDetection(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := e.rp("mail")
	tok := b.login(mail, "alice")

	first := tok.RefreshToken
	next, err := mail.refresh(t, first)
	require.NoError(t, err)
	require.NotEqual(t, first, next.RefreshToken, "rotated on every use")
	require.NotEmpty(t, next.AccessToken)
	raw, _ := next.Extra("id_token").(string)
	require.NotEmpty(t, raw)

	third, err := mail.refresh(t, next.RefreshToken)
	require.NoError(t, err)

	// Replaying the first (rotated) token is theft: the app session ends.
	_, err = mail.refresh(t, first)
	requireOAuthError(t, err, "invalid_grant")
	_, err = mail.refresh(t, third.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	require.Equal(t, false, e.introspect(third.AccessToken)["active"])

	events, err := e.store.Audit(t.Context(), sessionFilter(tok.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, "app_end", "refresh_reuse"), "audit: %+v", events)

	// The refresh token is never stored: no table holds it or a hash of it.
	var n int
	require.NoError(t, e.store.ReaderForTest().QueryRow(`SELECT COUNT(*) FROM app_sessions WHERE scopes LIKE ?`, "%"+first+"%").Scan(&n))
	require.Zero(t, n)
}

func TestClientCredentialsAndIntrospection(t *testing.T) {
	e := newEnv(t)
	cc := clientcredentials.Config{ClientID: "mail", ClientSecret: "mail-secret", TokenURL: e.issuer + "/oauth/token"}
	tok, err := cc.Token(t.Context())
	require.NoError(t, err)
	got := e.introspect(tok.AccessToken)
	require.Equal(t, true, got["active"])
	require.Equal(t, "mail", got["client_id"])

	bad := clientcredentials.Config{ClientID: "mail", ClientSecret: "wrong", TokenURL: e.issuer + "/oauth/token"}
	_, err = bad.Token(t.Context())
	requireOAuthError(t, err, "invalid_client")

	e.clock.Advance(61 * time.Minute)
	require.Equal(t, false, e.introspect(tok.AccessToken)["active"], "expired by the provider's clock")
}

func TestIntrospectionActiveThenInactiveAfterRevocation(t *testing.T) {
	for _, client := range []string{"mail", "opaque"} {
		t.Run(client, func(t *testing.T) {
			e := newEnv(t)
			r := e.rp(client)
			tok := e.browser().login(r, "alice")
			if client == "opaque" {
				require.Equal(t, 4, strings.Count(tok.AccessToken, "."), "opaque tokens are sealed (JWE), not JWTs")
			}
			got := e.introspect(tok.AccessToken)
			require.Equal(t, true, got["active"])
			require.Equal(t, client, got["client_id"])
			require.Equal(t, tok.sid, got["sid"])
			require.NotEmpty(t, got["sub"])

			revoke(t, e, client, tok.AccessToken, "access_token")
			require.Equal(t, false, e.introspect(tok.AccessToken)["active"])
			code, _ := e.userinfo(tok.AccessToken)
			require.Equal(t, http.StatusUnauthorized, code)

			// Revoking the refresh token ends the grant: its access tokens die too.
			fresh, err := r.refresh(t, tok.RefreshToken)
			require.NoError(t, err)
			revoke(t, e, client, fresh.RefreshToken, "refresh_token")
			require.Equal(t, false, e.introspect(fresh.AccessToken)["active"])
		})
	}
}

func revoke(t *testing.T, e *env, client, token, hint string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/revoke", strings.NewReader("token="+token+"&token_type_hint="+hint))
	require.NoError(t, err)
	req.SetBasicAuth(client, client+"-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, body(t, resp))
	resp.Body.Close()
}

func TestKeyRotationKeepsOldTokensVerifiable(t *testing.T) {
	e := newEnv(t)
	mail := e.rp("mail")
	old := e.browser().login(mail, "alice")
	_, err := e.p.keys.Rotate(t.Context())
	require.NoError(t, err)

	fresh := e.browser().login(mail, "alice")
	oldKid := kid(t, old.raw)
	newKid := kid(t, fresh.raw)
	require.NotEqual(t, oldKid, newKid, "new tokens are signed with the new key")

	// A fresh verifier (fetching the JWKS now) still verifies the old token.
	ks := gooidc.NewRemoteKeySet(t.Context(), e.issuer+"/keys")
	v := gooidc.NewVerifier(e.issuer, ks, &gooidc.Config{ClientID: "mail", Now: e.clock.Now})
	_, err = v.Verify(t.Context(), old.raw)
	require.NoError(t, err)
	require.Equal(t, true, e.introspect(old.AccessToken)["active"])

	// Once the retention has passed the old key leaves the JWKS.
	e.clock.Advance(KeyRetention(e.cfg) + time.Minute)
	require.NoError(t, e.p.keys.Reload(t.Context()))
	_, ok := e.p.keys.VerifyKey(oldKid)
	require.False(t, ok)
}

func kid(t *testing.T, raw string) string {
	t.Helper()
	parts := strings.Split(raw, ".")
	require.Len(t, parts, 3)
	hdr := decodeSegment(t, parts[0])
	return hdr["kid"].(string)
}

func requireOAuthError(t *testing.T, err error, code string) {
	t.Helper()
	require.Error(t, err)
	var re *oauth2.RetrieveError
	require.ErrorAs(t, err, &re)
	require.Equal(t, code, re.ErrorCode, "%s", re.ErrorDescription)
}

func TestDeletedUserCannotRefresh(t *testing.T) {
	e := newEnv(t)
	e.addUser("carol")
	tok := e.browser().login(e.rp("mail"), "carol")
	require.NoError(t, e.store.DeleteUser(t.Context(), "carol"))
	_, err := tok.rp.refresh(t, tok.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	code, _ := e.userinfo(tok.AccessToken)
	require.Equal(t, http.StatusUnauthorized, code)
}
