package oidc

import (
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

func discoveryDocument(t *testing.T, e *env) map[string]any {
	t.Helper()
	resp, err := http.Get(e.issuer + "/.well-known/openid-configuration")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var doc map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	return doc
}

// strings of a JSON array
func stringList(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, s := range list {
		out = append(out, s.(string))
	}
	return out
}

// Finding 16: discovery advertised response types, a grant and claims that
// the provider refuses or never fills. Every field is pinned here, and the
// ones that describe behaviour are checked against it below.
func TestDiscoveryAdvertisesExactlyWhatWorks(t *testing.T) {
	e := newEnv(t)
	doc := discoveryDocument(t, e)
	iss := e.issuer
	want := map[string]any{
		"issuer":                                        iss,
		"authorization_endpoint":                        iss + "/authorize",
		"token_endpoint":                                iss + "/oauth/token",
		"userinfo_endpoint":                             iss + "/userinfo",
		"introspection_endpoint":                        iss + "/oauth/introspect",
		"revocation_endpoint":                           iss + "/revoke",
		"end_session_endpoint":                          iss + "/end_session",
		"jwks_uri":                                      iss + "/keys",
		"idleguard_activity_endpoint":                   iss + "/activity",
		"idleguard_session_endpoint":                    iss + "/session",
		"response_types_supported":                      []string{"code"},
		"response_modes_supported":                      []string{"query", "fragment", "form_post"},
		"grant_types_supported":                         []string{"authorization_code", "refresh_token", "client_credentials"},
		"token_endpoint_auth_methods_supported":         []string{"client_secret_basic", "client_secret_post", "none"},
		"revocation_endpoint_auth_methods_supported":    []string{"client_secret_basic", "client_secret_post", "none"},
		"introspection_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"scopes_supported":                              []string{"openid", "profile", "email", "offline_access"},
		"claims_supported":                              issuedClaims,
		"code_challenge_methods_supported":              []string{"S256"},
		"id_token_signing_alg_values_supported":         []string{"RS256"},
		"subject_types_supported":                       []string{"public"},
		"request_parameter_supported":                   false,
		"request_uri_parameter_supported":               false,
		"claims_parameter_supported":                    true, // an essential acr claim is honoured (issue 11)
		"acr_values_supported":                          []string{"pwd", "mfa", "phr"},
		"frontchannel_logout_supported":                 true,
		"frontchannel_logout_session_supported":         true,
		"backchannel_logout_supported":                  true,
		"backchannel_logout_session_supported":          true,
	}
	require.Equal(t, slices.Sorted(maps.Keys(want)), slices.Sorted(maps.Keys(doc)), "every field is pinned, none unvetted")
	for k, v := range want {
		t.Run(k, func(t *testing.T) {
			if list, ok := v.([]string); ok {
				require.ElementsMatch(t, list, stringList(doc[k]))
				return
			}
			require.Equal(t, v, doc[k])
		})
	}

	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")

	t.Run("every response mode delivers the code", func(t *testing.T) {
		formCode := regexp.MustCompile(`name="code" value="([^"]+)"`)
		for _, mode := range stringList(doc["response_modes_supported"]) {
			resp, _, _ := b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("response_mode", mode))
			page := body(t, resp)
			loc, err := url.Parse(resp.Header.Get("Location"))
			require.NoError(t, err)
			frag, err := url.ParseQuery(loc.Fragment)
			require.NoError(t, err)
			got := map[string]string{"query": loc.Query().Get("code"), "fragment": frag.Get("code")}
			if m := formCode.FindStringSubmatch(page); m != nil {
				got["form_post"] = m[1]
			}
			require.NotEmpty(t, got[mode], "%s: %d %s %s", mode, resp.StatusCode, loc, page)
		}
	})

	t.Run("no response type but code", func(t *testing.T) {
		for _, rt := range []string{"id_token", "id_token token", "code id_token", "token"} {
			resp, _, _ := b.authorize(e.rp("mail"), oauth2.SetAuthURLParam("response_type", rt))
			resp.Body.Close()
			loc, err := url.Parse(resp.Header.Get("Location"))
			require.NoError(t, err)
			params := loc.Query()
			if loc.Fragment != "" {
				params, err = url.ParseQuery(loc.Fragment)
				require.NoError(t, err)
			}
			require.Empty(t, params.Get("code"), rt)
			require.Empty(t, params.Get("id_token"), rt)
			require.NotEmpty(t, params.Get("error"), "%s: %d %s", rt, resp.StatusCode, loc)
		}
	})

	t.Run("no grant type but the advertised", func(t *testing.T) {
		for _, g := range []string{"implicit", "password", "urn:ietf:params:oauth:grant-type:jwt-bearer",
			"urn:ietf:params:oauth:grant-type:device_code", "urn:ietf:params:oauth:grant-type:token-exchange"} {
			status, out := tokenRequest(t, e, url.Values{"grant_type": {g}, "assertion": {mail.raw}, "username": {"alice"},
				"password": {testPassword}, "subject_token": {mail.AccessToken}, "device_code": {"x"}}, "mail", "mail-secret")
			require.Equal(t, http.StatusBadRequest, status, "%s: %v", g, out)
			require.Contains(t, []string{"unsupported_grant_type", "unauthorized_client"}, out["error"], "%s: %v", g, out)
			require.NotContains(t, out, "access_token")
		}
	})

	t.Run("only S256 code challenges", func(t *testing.T) {
		resp, err := b.client.Get(e.rp("spa").oauth.AuthCodeURL("st", oauth2.SetAuthURLParam("code_challenge", strings.Repeat("c", 43)),
			oauth2.SetAuthURLParam("code_challenge_method", "plain")))
		require.NoError(t, err)
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		require.Empty(t, loc.Query().Get("code"))
		require.NotEmpty(t, loc.Query().Get("error"))
	})

	t.Run("introspection takes client_secret_post", func(t *testing.T) {
		resp, page := call(t, nil, http.MethodPost, e.issuer+"/oauth/introspect",
			url.Values{"token": {mail.AccessToken}, "client_id": {"api"}, "client_secret": {"api-secret"}}, "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, page)
		require.Contains(t, page, `"active":true`)
	})

	t.Run("a public client revokes its own refresh token", func(t *testing.T) {
		spa := e.browser().login(e.rp("spa"), "alice")
		resp, page := call(t, nil, http.MethodPost, e.issuer+"/revoke",
			url.Values{"token": {spa.RefreshToken}, "client_id": {"spa"}}, "", "")
		require.Equal(t, http.StatusOK, resp.StatusCode, page)
		require.False(t, active(t, e, spa.AccessToken))
	})

	t.Run("claims_supported are the claims issued", func(t *testing.T) {
		nb := e.browser()
		resp, verifier, state := nb.authorize(e.rp("mail"), oauth2.SetAuthURLParam("nonce", "n-0123"))
		tok := nb.exchange(e.rp("mail"), nb.code(nb.submitLogin(body(t, resp), "alice", testPassword), state), verifier)
		var claims map[string]any
		require.NoError(t, tok.id.Claims(&claims))
		_, info := e.userinfo(tok.AccessToken)
		maps.Copy(claims, info)
		require.ElementsMatch(t, stringList(toAny(issuedClaims)), slices.Collect(maps.Keys(claims)))
	})
}

func toAny(list []string) any {
	out := make([]any, len(list))
	for i, s := range list {
		out[i] = s
	}
	return out
}
