package oidc

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2/clientcredentials"
)

// Tests of the protocol edges, each performing an attack from issue 9's
// review against the real handler.

// call sends one request and returns the response with its body read.
func call(t *testing.T, client *http.Client, method, target string, form url.Values, user, pass string) (*http.Response, string) {
	t.Helper()
	var payload io.Reader
	if form != nil {
		payload = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, payload)
	require.NoError(t, err)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	return resp, body(t, resp)
}

// Finding 6: an API that sees a person's access token (typ at+jwt) used it
// as id_token_hint and signed the person out everywhere, exempt apps
// included, without being asked.
func TestEndSessionRefusesAnAccessTokenAsHint(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")

	// The attacker's request carries no cookie of the person's.
	attacker := e.browser()
	for name, hint := range map[string]string{"mail's access token": mail.AccessToken, "video's access token": video.AccessToken} {
		t.Run(name, func(t *testing.T) {
			resp := attacker.endSession(&tokens{raw: hint}, "", "")
			page := body(t, resp)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, page)
			require.Contains(t, page, "id_token_hint invalid")
			require.True(t, active(t, e, mail.AccessToken), "the session goes on")
			require.True(t, active(t, e, video.AccessToken), "the exempt app goes on")
		})
	}

	// A JWT with the ID token's typ, signed by us, but whose audience is
	// not the client it names, is no hint either.
	signer, err := e.p.signers.get(e.p.keys.Signing(), "JWT")
	require.NoError(t, err)
	forged, err := jwt.Signed(signer).Claims(map[string]any{"iss": e.issuer, "sub": mail.id.Subject, "aud": []string{"api"},
		"azp": "mail", "sid": mail.sid, "exp": e.clock.Now().Add(time.Hour).Unix(), "iat": e.clock.Now().Unix()}).Serialize()
	require.NoError(t, err)
	resp := attacker.endSession(&tokens{raw: forged}, "", "")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, body(t, resp))
	require.True(t, active(t, e, mail.AccessToken))

	// The person's own app, with its ID token, signs out as before.
	resp = b.endSession(mail, "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode, body(t, resp))
	require.False(t, active(t, e, mail.AccessToken))
	require.False(t, active(t, e, video.AccessToken), "logout ends exempt apps too")
}

// Finding 7: a state of a few kilobytes ended the session, then the
// response failed with 500 and the text of the internal error.
func TestEndSessionValidatesEveryParameterBeforeActing(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	for name, q := range map[string]url.Values{
		"state of 4 KB":             {"state": {strings.Repeat("s", 4000)}},
		"state of 1025 bytes":       {"state": {strings.Repeat("s", maxLogoutState+1)}},
		"huge logout_hint":          {"logout_hint": {strings.Repeat("h", 3000)}},
		"huge post_logout_redirect": {"post_logout_redirect_uri": {"http://127.0.0.1:1/mail/" + strings.Repeat("p", 3000)}},
	} {
		t.Run(name, func(t *testing.T) {
			q.Set("id_token_hint", mail.raw)
			resp, err := b.client.Get(e.issuer + "/end_session?" + q.Encode())
			require.NoError(t, err)
			page := body(t, resp)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, page)
			require.Contains(t, page, "Sign-out request refused")
			require.NotContains(t, page, "securecookie")
			require.True(t, active(t, e, mail.AccessToken), "nothing ends on a refused request")
		})
	}

	// The longest state allowed comes back to the app.
	state := strings.Repeat("s", maxLogoutState)
	resp := b.endSession(mail, "http://127.0.0.1:1/mail/", state)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), `href="http://127.0.0.1:1/mail/?state=`+state+`"`)
	require.False(t, active(t, e, mail.AccessToken))
}

// The class of finding 7: the protocol library answers an error that is
// not an OAuth error with its text as error_description. A failing
// database must not show a client its messages.
func TestInternalErrorsNeverReachTheClient(t *testing.T) {
	t.Run("userinfo and end_session", func(t *testing.T) {
		e := newEnv(t)
		b := e.browser()
		mail := b.login(e.rp("mail"), "alice")
		require.NoError(t, e.store.Close())

		req, err := http.NewRequest(http.MethodGet, e.issuer+"/userinfo", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+mail.AccessToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		requireHiddenError(t, resp, body(t, resp))

		// end_session is a browser route: the person gets a readable page
		// naming only the request id.
		resp = b.endSession(mail, "", "")
		page := body(t, resp)
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode, page)
		require.Contains(t, page, "Something went wrong")
		require.Contains(t, page, resp.Header.Get("X-Request-Id"))
		require.NotContains(t, page, "database is closed")
	})

	// The authorization callback answered the person's browser in plain
	// text: "... Parent=sql: database is closed".
	t.Run("authorization callback", func(t *testing.T) {
		e := newEnv(t)
		b := e.browser()
		resp, _, _ := b.authorize(e.rp("mail"))
		follow := b.client.CheckRedirect
		b.client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
			if req.URL.Path == "/authorize/callback" {
				require.NoError(t, e.store.Close())
			}
			return follow(req, via)
		}
		resp = b.submitLogin(body(t, resp), "alice", testPassword)
		page := body(t, resp)
		require.Equal(t, http.StatusInternalServerError, resp.StatusCode, page)
		require.Contains(t, resp.Header.Get("Content-Type"), "text/html")
		require.Contains(t, page, "Something went wrong", "an outage is not a stale link")
		require.NotContains(t, page, "sql")
		require.NotContains(t, page, "Parent")
	})

	// A server_error that the protocol library redirects to the client
	// carries the internal error's text as error_description.
	t.Run("server_error redirected to the client", func(t *testing.T) {
		e := newEnv(t)
		for _, mode := range []zoidc.ResponseMode{zoidc.ResponseModeQuery, zoidc.ResponseModeFragment} {
			a := &authRequest{ClientID: "mail", RedirectURI: "http://127.0.0.1:1/mail/callback", State: "st",
				ResponseType: zoidc.ResponseTypeCode, ResponseMode: mode}
			h := e.p.edge(e.p.hideInternalErrors(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				op.AuthRequestError(w, r, a, errors.New("sql: database is closed"), e.p.op)
			})))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/authorize/callback?id=x", nil))
			require.Equal(t, http.StatusFound, rec.Code)
			loc, err := url.Parse(rec.Header().Get("Location"))
			require.NoError(t, err)
			params := loc.Query()
			if mode == zoidc.ResponseModeFragment {
				params, err = url.ParseQuery(loc.Fragment)
				require.NoError(t, err)
			}
			require.Equal(t, "server_error", params.Get("error"), loc.String())
			require.Equal(t, "st", params.Get("state"))
			require.Equal(t, "internal error, request id "+rec.Header().Get("X-Request-Id"), params.Get("error_description"))
			require.NotContains(t, loc.String(), "sql")
		}
	})
}

func requireHiddenError(t *testing.T, resp *http.Response, page string) {
	t.Helper()
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode, page)
	var out oauthError
	require.NoError(t, json.Unmarshal([]byte(page), &out), page)
	require.Equal(t, "server_error", out.Error)
	require.Equal(t, "internal error, request id "+resp.Header.Get("X-Request-Id"), out.Description)
}

// Finding 8: /logged-out without a valid ticket cleared the SSO cookie and
// said "signed out" while the session went on. The same with a valid
// ticket from someone else's sign-out, which anyone can get.
func TestSignedOutPageNeedsTheTicketOfThisBrowsersSession(t *testing.T) {
	e := newEnv(t)
	e.addUser("mallory")
	attacker := e.browser()
	own := attacker.login(e.rp("mail"), "mallory")
	attacker.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp := attacker.endSession(own, "", "")
	resp.Body.Close()
	ticketLink := resp.Header.Get("Location")
	require.Contains(t, ticketLink, "/logged-out?t=")

	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	for name, link := range map[string]string{
		"no ticket":                e.issuer + "/logged-out",
		"forged ticket":            e.issuer + "/logged-out?t=forged",
		"another sign-in's ticket": ticketLink,
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := b.client.Get(link)
			require.NoError(t, err)
			page := body(t, resp)
			require.Equal(t, http.StatusBadRequest, resp.StatusCode)
			require.NotContains(t, page, "You have been signed out")
			require.Contains(t, page, "was not changed")
			for _, c := range resp.Cookies() {
				require.NotEqual(t, sessionCookieName, c.Name, "the session cookie is left alone")
			}
			require.True(t, active(t, e, mail.AccessToken))
			again, _, state := b.authorize(e.rp("bank"))
			require.NotEmpty(t, b.code(again, state), "single sign-on still works in this browser")
		})
	}
}

// Finding 11: secrets were accepted in the query string, and GET worked on
// the token and introspection endpoints.
func TestCredentialEndpointsTakeSecretsOnlyInAPostBody(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("mail"), "alice")
	for _, tc := range []struct {
		name, method, path string
		query, form        url.Values
		status             int
	}{
		{"GET token", http.MethodGet, "/oauth/token",
			url.Values{"grant_type": {"client_credentials"}, "client_id": {"mail"}, "client_secret": {"mail-secret"}}, nil, http.StatusMethodNotAllowed},
		{"GET introspect", http.MethodGet, "/oauth/introspect",
			url.Values{"token": {tok.AccessToken}, "client_id": {"api"}, "client_secret": {"api-secret"}}, nil, http.StatusMethodNotAllowed},
		{"GET revoke", http.MethodGet, "/revoke",
			url.Values{"token": {tok.AccessToken}, "client_id": {"mail"}, "client_secret": {"mail-secret"}}, nil, http.StatusMethodNotAllowed},
		{"POST token, secret in the query", http.MethodPost, "/oauth/token",
			url.Values{"client_id": {"mail"}, "client_secret": {"mail-secret"}}, url.Values{"grant_type": {"client_credentials"}}, http.StatusBadRequest},
		{"POST introspect, secret in the query", http.MethodPost, "/oauth/introspect",
			url.Values{"client_secret": {"api-secret"}}, url.Values{"token": {tok.AccessToken}, "client_id": {"api"}}, http.StatusBadRequest},
		{"POST revoke, secret in the query", http.MethodPost, "/revoke",
			url.Values{"client_id": {"mail"}, "client_secret": {"mail-secret"}}, url.Values{"token": {tok.AccessToken}}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, page := call(t, nil, tc.method, e.issuer+tc.path+"?"+tc.query.Encode(), tc.form, "", "")
			require.Equal(t, tc.status, resp.StatusCode, page)
			var out map[string]any
			require.NoError(t, json.Unmarshal([]byte(page), &out))
			require.Equal(t, "invalid_request", out["error"])
			require.NotContains(t, out, "access_token")
			require.NotContains(t, out, "active")
			if tc.status == http.StatusMethodNotAllowed {
				require.Equal(t, http.MethodPost, resp.Header.Get("Allow"))
			}
			require.True(t, active(t, e, tok.AccessToken), "nothing was revoked")
		})
	}

	// A browser app's CORS preflight still reaches the token endpoint.
	req, err := http.NewRequest(http.MethodOptions, e.issuer+"/oauth/token", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "http://127.0.0.1:2")
	req.Header.Set("Access-Control-Request-Method", http.MethodPost)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Less(t, resp.StatusCode, 300)
	require.Equal(t, "http://127.0.0.1:2", resp.Header.Get("Access-Control-Allow-Origin"))
}

// Finding 14: token responses must not be cached (RFC 6749 section 5.1),
// errors included; nor introspection and userinfo answers.
func TestTokenAnswersAreNeverCached(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	resp, verifier, state := b.authorize(e.rp("mail"))
	code := b.code(b.submitLogin(body(t, resp), "alice", testPassword), state)

	var refresh, access string
	for _, tc := range []struct {
		name   string
		path   string
		form   func() url.Values
		user   string
		status int
		keep   func(map[string]any)
	}{
		{"code exchange", "/oauth/token", func() url.Values {
			return url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://127.0.0.1:1/mail/callback"}, "code_verifier": {verifier}}
		}, "mail", http.StatusOK, func(out map[string]any) {
			refresh, access = out["refresh_token"].(string), out["access_token"].(string)
		}},
		{"refresh", "/oauth/token", func() url.Values {
			return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}
		}, "mail", http.StatusOK, nil},
		{"client credentials", "/oauth/token", func() url.Values { return url.Values{"grant_type": {"client_credentials"}} }, "mail", http.StatusOK, nil},
		{"token error", "/oauth/token", func() url.Values { return url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}} }, "mail", http.StatusBadRequest, nil},
		{"token error, bad client", "/oauth/token", func() url.Values { return url.Values{"grant_type": {"client_credentials"}} }, "nobody", http.StatusUnauthorized, nil},
		{"introspection", "/oauth/introspect", func() url.Values { return url.Values{"token": {access}} }, "api", http.StatusOK, nil},
		{"introspection error", "/oauth/introspect", func() url.Values { return url.Values{"token": {access}} }, "nobody", http.StatusUnauthorized, nil},
		{"revocation", "/revoke", func() url.Values { return url.Values{"token": {"unknown"}} }, "mail", http.StatusOK, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, page := call(t, nil, http.MethodPost, e.issuer+tc.path, tc.form(), tc.user, tc.user+"-secret")
			require.Equal(t, tc.status, resp.StatusCode, page)
			require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
			require.Equal(t, "no-cache", resp.Header.Get("Pragma"))
			if tc.keep != nil {
				var out map[string]any
				require.NoError(t, json.Unmarshal([]byte(page), &out))
				tc.keep(out)
			}
		})
	}
	for _, token := range []string{access, "bad"} {
		req, err := http.NewRequest(http.MethodGet, e.issuer+"/userinfo", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), token)
		require.Equal(t, "no-cache", resp.Header.Get("Pragma"), token)
	}
}

// Finding 17: bearer errors carry a WWW-Authenticate challenge with an RFC
// 6750 code (never access_denied), on userinfo and on idleguard's own
// bearer endpoints alike.
func TestBearerErrorsFollowRFC6750(t *testing.T) {
	e := newEnv(t)
	bank := e.browser().login(e.rp("bank"), "alice")
	live := e.browser().login(e.rp("mail"), "alice")
	e.clock.Advance(5 * time.Minute) // bank's session is over by idle
	cc := clientcredentials.Config{ClientID: "mail", ClientSecret: "mail-secret", TokenURL: e.issuer + "/oauth/token"}
	service, err := cc.Token(t.Context())
	require.NoError(t, err)

	for _, tc := range []struct {
		name, token string
		status      int
		challenge   string
		code        string
	}{
		{"no token", "", http.StatusUnauthorized, `Bearer realm="idleguard"`, "invalid_request"},
		{"garbage", "garbage", http.StatusUnauthorized, `Bearer realm="idleguard", error="invalid_token"`, "invalid_token"},
		{"an ID token", live.raw, http.StatusUnauthorized, `Bearer realm="idleguard", error="invalid_token"`, "invalid_token"},
		{"session over", bank.AccessToken, http.StatusUnauthorized, `Bearer realm="idleguard", error="invalid_token"`, "invalid_token"},
	} {
		for _, ep := range []struct{ method, path string }{{"GET", "/userinfo"}, {"POST", "/userinfo"}, {"GET", "/session"}, {"POST", "/activity"}} {
			if tc.name == "session over" && ep.path == "/session" {
				continue // the status of an ended session is an answer, not an error
			}
			t.Run(tc.name+" "+ep.method+" "+ep.path, func(t *testing.T) {
				req, err := http.NewRequest(ep.method, e.issuer+ep.path, nil)
				require.NoError(t, err)
				if tc.token != "" {
					req.Header.Set("Authorization", "Bearer "+tc.token)
				}
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				var out map[string]any
				require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
				resp.Body.Close()
				require.Equal(t, tc.status, resp.StatusCode, "%v", out)
				require.True(t, strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), tc.challenge), resp.Header.Get("WWW-Authenticate"))
				if tc.code == "invalid_request" {
					require.NotContains(t, resp.Header.Get("WWW-Authenticate"), "error=", "no error code without credentials (RFC 6750 section 3.1)")
				}
				require.Equal(t, tc.code, out["error"])
			})
		}
	}

	// A token in the URL (logged on the way) or sent twice is a bad request.
	resp, page := call(t, nil, http.MethodGet, e.issuer+"/userinfo?access_token="+url.QueryEscape(live.AccessToken), nil, "", "")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, page)
	require.Contains(t, resp.Header.Get("WWW-Authenticate"), `error="invalid_request"`)
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/userinfo", strings.NewReader("access_token="+live.AccessToken))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+live.AccessToken)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	// The form body works, as OpenID Connect Core section 5.3.1 requires.
	resp, page = call(t, nil, http.MethodPost, e.issuer+"/userinfo", url.Values{"access_token": {live.AccessToken}}, "", "")
	require.Equal(t, http.StatusOK, resp.StatusCode, page)

	// A client's own token has no person: userinfo refuses it as invalid_token.
	code, out := e.userinfo(service.AccessToken)
	require.Equal(t, http.StatusUnauthorized, code)
	require.Equal(t, "invalid_token", out["error"])
}

// Finding 10: client_credentials granted any scope asked for.
func TestGrantsOnlyTheScopesAClientMayHave(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == "mail" {
				cl.Scopes = []string{"openid", "email", "reports:read"}
			}
		}
	})
	service := func(client, scope string) (int, map[string]any) {
		return tokenRequest(t, e, url.Values{"grant_type": {"client_credentials"}, "scope": {scope}}, client, client+"-secret")
	}
	for _, tc := range []struct {
		client, scope string
		status        int
		granted       string
	}{
		{"bank", "openid admin superuser", http.StatusBadRequest, ""},
		{"bank", "admin", http.StatusBadRequest, ""},
		{"bank", "reports:read", http.StatusBadRequest, ""}, // mail's, not bank's
		{"bank", "openid profile", http.StatusOK, ""},       // about a person: none here
		{"bank", "", http.StatusOK, ""},
		{"mail", "openid reports:read", http.StatusOK, "reports:read"},
		{"mail", "reports:read admin", http.StatusBadRequest, ""},
	} {
		t.Run(tc.client+" "+tc.scope, func(t *testing.T) {
			status, out := service(tc.client, tc.scope)
			require.Equal(t, tc.status, status, "%v", out)
			if status != http.StatusOK {
				require.Equal(t, "invalid_scope", out["error"])
				require.NotContains(t, out, "access_token")
				return
			}
			require.Equal(t, tc.granted, scopeOf(out["scope"]))
			claims := decodeSegment(t, strings.Split(out["access_token"].(string), ".")[1])
			require.Equal(t, tc.granted, scopeOf(claims["scope"]))
		})
	}

	// A sign-in gets what it asks for and the client may have; the rest is
	// left out (OpenID Connect Core section 3.1.2.1).
	for _, tc := range []struct {
		client  string
		granted string
		refresh bool
		name    bool
	}{
		{"mail", "openid email reports:read", false, false},
		{"bank", "openid profile email offline_access", true, true},
	} {
		t.Run("sign-in to "+tc.client, func(t *testing.T) {
			r := e.rp(tc.client)
			r.oauth.Scopes = []string{"openid", "profile", "email", "offline_access", "reports:read", "phone", "admin"}
			tok := e.browser().login(r, "alice")
			require.Equal(t, tc.granted, scopeOf(tok.Extra("scope")))
			require.Equal(t, tc.granted, scopeOf(decodeSegment(t, strings.Split(tok.AccessToken, ".")[1])["scope"]))
			require.Equal(t, tc.refresh, tok.RefreshToken != "", "offline_access only where granted")
			code, info := e.userinfo(tok.AccessToken)
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, tc.name, info["name"] != nil, "profile claims only where granted")
			require.Equal(t, "alice@example.com", info["email"])
		})
	}
}

// scopeOf reads a scope value (a string, or a list) as a space-separated string.
func scopeOf(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []any:
		parts := make([]string, len(s))
		for i, p := range s {
			parts[i], _ = p.(string)
		}
		return strings.Join(parts, " ")
	}
	return ""
}
