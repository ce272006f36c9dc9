package demoapps

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/session"
)

const backchannelEvent = "http://schemas.openid.net/event/backchannel-logout"

// env is the real provider (SQLite, real handler) and the portal, each
// behind its own httptest server.
type env struct {
	t         *testing.T
	p         *oidc.Provider
	issuer    string
	portal    *ServerApp
	portalURL string
}

// lateHandler serves a handler that is set after the server's URL is known.
type lateHandler struct {
	mu sync.RWMutex
	h  http.Handler
}

func (l *lateHandler) set(h http.Handler) { l.mu.Lock(); l.h = h; l.mu.Unlock() }

func (l *lateHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.RLock()
	h := l.h
	l.mu.RUnlock()
	h.ServeHTTP(w, r)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	idpH, appH := &lateHandler{h: http.NotFoundHandler()}, &lateHandler{h: http.NotFoundHandler()}
	idp, app := httptest.NewServer(idpH), httptest.NewServer(appH)
	t.Cleanup(idp.Close)
	t.Cleanup(app.Close)

	store, err := session.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "idleguard.db"))
	require.NoError(t, err)
	t.Cleanup(func() { store.Close() })
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := oidc.New(t.Context(), oidc.Config{
		Issuer: idp.URL,
		Clients: []*oidc.Client{{
			ID: "portal", SecretHash: oidc.HashSecret("portal-test-secret"), AuthMethod: zoidc.AuthMethodBasic,
			RedirectURIs: []string{app.URL + "/callback"}, PostLogoutRedirectURIs: []string{app.URL + "/"},
			BackchannelLogoutURI: app.URL + "/backchannel-logout", FrontchannelLogoutURI: app.URL + "/frontchannel-logout",
			GrantTypes:     []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken},
			AccessTokenTTL: time.Minute,
			Policy: activity.ClientPolicy{IdleTimeout: 5 * time.Minute, Sources: activity.DefaultSources,
				BackchannelLogoutURI: app.URL + "/backchannel-logout"},
		}, {
			ID: "portal-api", SecretHash: oidc.HashSecret("portal-api-test-secret"), AuthMethod: zoidc.AuthMethodBasic,
			GrantTypes: []zoidc.GrantType{zoidc.GrantTypeClientCredentials}, ResourceServer: true, Serves: []string{"portal"},
			AccessTokenTTL: time.Hour,
		}},
		Session:     activity.Config{IdleTimeout: time.Hour, MaxLifetime: 12 * time.Hour, SweepInterval: time.Second},
		Backchannel: oidc.BackchannelConfig{PollInterval: 100 * time.Millisecond, InitialBackoff: 100 * time.Millisecond},
		Logger:      logger,
	}, store)
	require.NoError(t, err)
	p.Run(t.Context())
	t.Cleanup(func() { _ = p.Close(t.Context()) })
	idpH.set(p)

	hash, err := session.HashPasswordWithParams("demo-password", 1, 8*1024, 1)
	require.NoError(t, err)
	require.NoError(t, store.CreateUser(t.Context(), &session.User{Username: "demo", PasswordHash: hash, Name: "Demo User",
		Email: "demo@example.com", EmailVerified: true, CreatedAt: time.Now()}))

	portalApp := App{ClientID: "portal", ClientSecret: "portal-test-secret", URL: app.URL, IdleTimeout: 5 * time.Minute,
		API: APIClient{ClientID: "portal-api", ClientSecret: "portal-api-test-secret"}}
	portal, err := NewServerApp(t.Context(), Config{Issuer: idp.URL, SessionIdleTimeout: time.Hour, Portal: portalApp, Logger: logger},
		portalApp, portalCopy)
	require.NoError(t, err)
	appH.set(portal)
	return &env{t: t, p: p, issuer: idp.URL, portal: portal, portalURL: app.URL}
}

var formField = regexp.MustCompile(`name="(authRequestID|csrf)" value="([^"]*)"`)

// signIn signs in to the portal as a browser does (cookie jar, redirects,
// the provider's login form) and returns the browser and the session's sid.
func (e *env) signIn() (*http.Client, string) {
	t := e.t
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	browser := &http.Client{Jar: jar}
	resp, err := browser.Get(e.portalURL + "/login")
	require.NoError(t, err)
	page := readBody(t, resp)
	require.Contains(t, resp.Request.URL.String(), e.issuer+"/login")
	fields := url.Values{"username": {"demo"}, "password": {"demo-password"}}
	for _, m := range formField.FindAllStringSubmatch(page, -1) {
		fields.Set(m[1], m[2])
	}
	resp, err = browser.PostForm(e.issuer+"/login", fields)
	require.NoError(t, err)
	page = readBody(t, resp)
	require.Equal(t, e.portalURL+"/", resp.Request.URL.String())
	require.Contains(t, page, `data-testid="signed-in"`)
	require.Contains(t, page, "Hello, <span id=\"name\">Demo User</span>")
	sid := regexp.MustCompile(`<code id="sid">([^<]+)</code>`).FindStringSubmatch(page)
	require.Len(t, sid, 2)
	return browser, sid[1]
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

func (e *env) get(browser *http.Client, path string) (*http.Response, string) {
	e.t.Helper()
	resp, err := browser.Get(e.portalURL + path)
	require.NoError(e.t, err)
	return resp, readBody(e.t, resp)
}

// accessToken returns the access token the portal holds for browser's
// sign-in (GET /api/token).
func (e *env) accessToken(browser *http.Client) string {
	e.t.Helper()
	resp, body := e.get(browser, "/api/token")
	require.Equal(e.t, http.StatusOK, resp.StatusCode)
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(e.t, json.Unmarshal([]byte(body), &tok))
	require.NotEmpty(e.t, tok.AccessToken)
	return tok.AccessToken
}

// sign signs claims as a logout token with key (kid, alg) and header typ.
func sign(t *testing.T, key any, kid string, alg jose.SignatureAlgorithm, typ string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ))
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: &jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	require.NoError(t, err)
	raw, err := jwt.Signed(signer).Claims(claims).Serialize()
	require.NoError(t, err)
	return raw
}

func postLogout(t *testing.T, portalURL, token string) int {
	t.Helper()
	resp, err := http.PostForm(portalURL+"/backchannel-logout", url.Values{"logout_token": {token}})
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestBackchannelLogoutVerifiesTheToken(t *testing.T) {
	e := newEnv(t)
	browser, sid := e.signIn()
	key := e.p.Keys().Signing()
	now := time.Now()
	valid := func() map[string]any {
		return map[string]any{"iss": e.issuer, "aud": []string{"portal"}, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
			"jti": "jti-" + random(6), "sid": sid, "sub": "someone", "events": map[string]any{backchannelEvent: map[string]any{}},
			"reason": "admin"}
	}
	with := func(mod func(map[string]any)) map[string]any { c := valid(); mod(c); return c }
	foreign, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)

	forged := []struct {
		name  string
		token string
	}{
		{"empty", ""},
		{"not a JWT", "hello"},
		{"signed by another key", sign(t, foreign, key.ID(), jose.RS256, "logout+jwt", valid())},
		{"typ JWT", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "JWT", valid())},
		{"no typ", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "", valid())},
		{"other issuer", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["iss"] = "https://evil.example" }))},
		{"other audience", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["aud"] = []string{"video"} }))},
		{"with a nonce", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["nonce"] = "n" }))},
		{"no events", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { delete(c, "events") }))},
		{"other event", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["events"] = map[string]any{"urn:other": map[string]any{}} }))},
		{"no sid nor sub", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { delete(c, "sid"); delete(c, "sub") }))},
		{"no jti", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { delete(c, "jti") }))},
		{"expired", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() }))},
		{"stale iat", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["iat"] = now.Add(-time.Hour).Unix() }))},
		{"iat in the future", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() }))},
		{"no iat", sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt",
			with(func(c map[string]any) { delete(c, "iat") }))},
	}
	for _, tc := range forged {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, http.StatusBadRequest, postLogout(t, e.portalURL, tc.token))
		})
	}
	require.Empty(t, e.portal.Logouts(), "no forged token was accepted")
	_, page := e.get(browser, "/")
	require.Contains(t, page, `data-testid="signed-in"`, "the session survived every forged token")

	// The genuine article is accepted once, and a repeat (same jti) is acknowledged, not applied twice.
	good := sign(t, key.Key(), key.ID(), key.SignatureAlgorithm(), "logout+jwt", valid())
	require.Equal(t, http.StatusOK, postLogout(t, e.portalURL, good))
	require.Equal(t, http.StatusOK, postLogout(t, e.portalURL, good))
	require.Len(t, e.portal.Logouts(), 1)
	_, page = e.get(browser, "/")
	require.Contains(t, page, `data-testid="signed-out"`)
	require.Contains(t, page, `<code id="reason">admin</code>`)
}

func TestPortalIsToldOfAnIdleEndByBackchannel(t *testing.T) {
	e := newEnv(t)
	browser, sid := e.signIn()
	e.accessToken(browser)

	// What the sweeper does when the deadline passes.
	require.NoError(t, e.p.Tracker().End(t.Context(), sid, session.ReasonIdleTimeout, "sweeper"))
	require.Eventually(t, func() bool { return len(e.portal.Logouts()) == 1 }, 10*time.Second, 50*time.Millisecond)
	got := e.portal.Logouts()[0]
	require.Equal(t, sid, got.SID)
	require.Equal(t, "idle_timeout", got.Reason)

	_, page := e.get(browser, "/")
	require.Contains(t, page, `data-testid="signed-out"`)
	require.Contains(t, page, `<code id="reason">idle_timeout</code>`)
	require.Contains(t, page, "back-channel logout")
	require.Contains(t, page, `href="/login"`, "a link to sign in again")

	resp, body := e.get(browser, "/api/token")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.JSONEq(t, `{"error":"signed_out","reason":"idle_timeout"}`, body)

	resp, body = e.get(browser, "/debug/logouts")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, `"reason":"idle_timeout"`)
}

func TestFrontchannelLogoutChecksIssuer(t *testing.T) {
	e := newEnv(t)
	browser, sid := e.signIn()

	resp, _ := e.get(browser, "/frontchannel-logout?iss="+url.QueryEscape("https://evil.example")+"&sid="+sid)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	_, page := e.get(browser, "/")
	require.Contains(t, page, `data-testid="signed-in"`)

	resp, _ = e.get(browser, "/frontchannel-logout?iss="+url.QueryEscape(e.issuer)+"&sid="+sid)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Security-Policy"), "frame-ancestors "+e.issuer)
	_, page = e.get(browser, "/")
	require.Contains(t, page, `data-testid="signed-out"`)
	require.Contains(t, page, "front-channel logout")
}

func TestLogoutRoute(t *testing.T) {
	e := newEnv(t)
	browser, _ := e.signIn()
	noFollow := &http.Client{Jar: browser.Jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	_, page := e.get(browser, "/")
	csrf := regexp.MustCompile(`"logoutUrl":"/logout\?csrf=([^"]+)"`).FindStringSubmatch(page)
	require.Len(t, csrf, 2, page)

	t.Run("without the page's csrf token nothing happens", func(t *testing.T) {
		resp, err := noFollow.Get(e.portalURL + "/logout?reason=logout&csrf=forged")
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, "/", resp.Header.Get("Location"))
		_, page := e.get(browser, "/")
		require.Contains(t, page, `data-testid="signed-in"`)
	})
	t.Run("sign out goes through end_session", func(t *testing.T) {
		resp, err := noFollow.Get(e.portalURL + "/logout?reason=logout&csrf=" + csrf[1])
		require.NoError(t, err)
		resp.Body.Close()
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		require.Equal(t, e.issuer+"/end_session", loc.Scheme+"://"+loc.Host+loc.Path)
		require.NotEmpty(t, loc.Query().Get("id_token_hint"))
		require.Equal(t, e.portalURL+"/", loc.Query().Get("post_logout_redirect_uri"))

		resp, err = browser.Get(loc.String()) // the provider ends the session and comes back
		require.NoError(t, err)
		page := readBody(t, resp)
		require.True(t, strings.HasPrefix(resp.Request.URL.String(), e.issuer+"/logged-out"), resp.Request.URL.String())
		require.Contains(t, page, e.portalURL+"/frontchannel-logout?")
		require.Eventually(t, func() bool { return len(e.portal.Logouts()) == 1 }, 10*time.Second, 50*time.Millisecond)
		require.Equal(t, "logout", e.portal.Logouts()[0].Reason)
		_, page = e.get(browser, "/")
		require.Contains(t, page, `<code id="reason">logout</code>`)
	})
}

// TestPortalAPIRefusesAnEndedSessionAtOnce: the portal's API checks the
// portal's JWT access tokens itself (the resource-server kit) and refuses
// one as soon as the provider ends its session, though the token has not
// expired.
func TestPortalAPIRefusesAnEndedSessionAtOnce(t *testing.T) {
	e := newEnv(t)
	browser, sid := e.signIn()
	token := e.accessToken(browser)
	orders := func() int {
		req, err := http.NewRequest(http.MethodGet, e.portalURL+"/api/orders", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, orders())
	resp, _ := e.get(browser, "/api/orders")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "no token, no orders")

	require.NoError(t, e.p.Tracker().End(t.Context(), sid, session.ReasonAdmin, "admin"))
	require.Eventually(t, func() bool { return orders() == http.StatusUnauthorized }, 10*time.Second, 5*time.Millisecond)
}
