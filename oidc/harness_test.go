package oidc

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

// TestMain quiets the protocol library's own logging (it logs through the
// process-wide slog default); each provider logs to its test's output.
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(pgtest.Main(m))
}

// clock is the controllable time source every test injects.
type clock = oidctest.Clock

func newClock() *clock { return oidctest.NewClock() }

// env is a provider on a real SQLite file behind a real HTTP server.
type env struct {
	t      *testing.T
	clock  *clock
	dbPath string
	store  *session.SQLite
	mu     sync.RWMutex // guards p, which restart replaces
	users  userCreator  // where addUser adds people, when not store
	p      *Provider
	srv    *httptest.Server
	issuer string
	cfg    Config
	// browsers lets table-driven tests reach the browser that signed in.
	browsers []*browser
}

const testPassword = "correct horse battery"

// testClients are the relying parties most tests use. Secrets are
// "<id>-secret". Redirect URIs need no server: the test browser stops at them.
func testClients() []*Client {
	mk := func(id string, idle time.Duration, mod func(*Client)) *Client {
		c := &Client{ID: id, SecretHash: HashSecret(id + "-secret"), AuthMethod: zoidc.AuthMethodBasic,
			RedirectURIs:           []string{"http://127.0.0.1:1/" + id + "/callback"},
			PostLogoutRedirectURIs: []string{"http://127.0.0.1:1/" + id + "/"},
			GrantTypes:             []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken, zoidc.GrantTypeClientCredentials},
			AccessTokenTTL:         time.Hour, // capped by the idle limit in force
			Policy:                 activity.ClientPolicy{IdleTimeout: idle, Sources: activity.DefaultSources}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	return []*Client{
		mk("mail", 30*time.Minute, nil),
		mk("bank", 5*time.Minute, nil),
		mk("video", 2*time.Hour, func(c *Client) { c.Policy.Exempt = true; c.AccessTokenTTL = time.Hour }),
		mk("spa", 15*time.Minute, func(c *Client) {
			c.SecretHash, c.AuthMethod = nil, zoidc.AuthMethodNone
			c.GrantTypes = []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken}
			c.WebOrigins = []string{"http://127.0.0.1:2"}
		}),
		mk("refresher", 30*time.Minute, func(c *Client) { c.Policy.Sources |= activity.Refresh }),
		mk("opaque", 30*time.Minute, func(c *Client) { c.OpaqueAccessTokens = true }),
		mk("lonely", 30*time.Minute, func(c *Client) { c.Policy.AppIdleTimeout = 3 * time.Minute }),
		mk("api", 0, nil), // a resource server that introspects
	}
}

type envOption func(*Config)

func newEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return newEnvOn(t, httptest.NewServer, opts...)
}

// newTLSEnv is newEnv served over https (httptest's own certificate), as a
// provider is in production: its browsers and relying parties trust that
// certificate.
func newTLSEnv(t *testing.T, opts ...envOption) *env {
	t.Helper()
	return newEnvOn(t, httptest.NewTLSServer, opts...)
}

func newEnvOn(t *testing.T, serve func(http.Handler) *httptest.Server, opts ...envOption) *env {
	t.Helper()
	e := &env{t: t, clock: newClock(), dbPath: filepath.Join(t.TempDir(), "idleguard.db")}
	e.srv = serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.RLock()
		p := e.p
		e.mu.RUnlock()
		if p == nil {
			http.NotFound(w, r)
			return
		}
		p.ServeHTTP(w, r) // the provider in force: restart replaces it
	}))
	t.Cleanup(e.srv.Close)
	e.issuer = e.srv.URL
	e.cfg = Config{
		Issuer: e.issuer, Clients: testClients(), Now: e.clock.Now,
		Session: activity.Config{IdleTimeout: time.Hour, MaxLifetime: 12 * time.Hour, SweepInterval: time.Second},
		Logger:  slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
		Login:   LoginConfig{MaxFailures: 3},
	}
	for _, o := range opts {
		o(&e.cfg)
	}
	e.issuer = e.cfg.Issuer
	e.open()
	e.addUser("alice")
	return e
}

// open (re)creates store and provider on the same database file, as a
// restart of the process would.
func (e *env) open() {
	t := e.t
	var err error
	e.store, err = session.OpenSQLite(t.Context(), e.dbPath)
	require.NoError(t, err)
	t.Cleanup(func() { e.store.Close() })
	p, err := New(t.Context(), e.cfg, e.store)
	require.NoError(t, err)
	e.mu.Lock()
	e.p = p
	e.mu.Unlock()
}

// restart flushes and closes the provider (a graceful stop) and starts a
// new one on the same file.
func (e *env) restart(handler *http.Handler) {
	require.NoError(e.t, e.p.Close(e.t.Context()))
	require.NoError(e.t, e.store.Close())
	e.open()
}

func (e *env) addUser(name string) *session.User {
	// A cheap argon2id cost keeps the suite fast; the hash records its cost,
	// so the login path is the real one (session tests cover the defaults).
	hash, err := session.HashPasswordWithParams(testPassword, 1, 1024, 1)
	require.NoError(e.t, err)
	u := &session.User{Username: name, PasswordHash: hash, Name: strings.ToUpper(name[:1]) + name[1:], Email: name + "@example.com", EmailVerified: true, CreatedAt: e.clock.Now()}
	require.NoError(e.t, e.userStore().CreateUser(e.t.Context(), u))
	return u
}

type userCreator interface {
	CreateUser(ctx context.Context, u *session.User) error
}

// userStore is where addUser adds people: the env's store, or users when
// set (a cluster of replicas on any backend).
func (e *env) userStore() userCreator {
	if e.users != nil {
		return e.users
	}
	return e.store
}

// sweep runs one sweep and delivers due logouts, as the background loops would.
func (e *env) sweep() int {
	n, err := e.p.tracker.Sweep(e.t.Context())
	require.NoError(e.t, err)
	return n
}

// browser is a person's browser: a cookie jar, and no automatic redirects
// off the provider, so that the authorization response can be read.
type browser struct {
	t          *testing.T
	e          *env
	client     *http.Client
	setCookies []*http.Cookie // every cookie the provider set, with its attributes
}

type recordingTransport struct {
	b    *browser
	base http.RoundTripper
}

func (rt recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := rt.base.RoundTrip(req)
	if err == nil {
		rt.b.setCookies = append(rt.b.setCookies, resp.Cookies()...)
	}
	return resp, err
}

func (e *env) browser() *browser {
	jar, err := cookiejar.New(nil)
	require.NoError(e.t, err)
	issuer, err := url.Parse(e.issuer)
	require.NoError(e.t, err)
	issuerHost := issuer.Host
	b := &browser{t: e.t, e: e}
	b.client = &http.Client{Jar: jar, Transport: recordingTransport{b, e.transport()}, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if req.URL.Host != issuerHost {
			return http.ErrUseLastResponse
		}
		return nil
	}}
	return b
}

// transport is how browsers and relying parties reach the provider: one
// that trusts its test certificate when it is served over https.
func (e *env) transport() http.RoundTripper {
	if e.srv.TLS != nil {
		return e.srv.Client().Transport
	}
	return http.DefaultTransport
}

// rpContext is the context relying parties call the provider with: one
// that carries a client trusting its certificate when it is served over https.
func (e *env) rpContext() context.Context {
	if e.srv.TLS != nil {
		return gooidc.ClientContext(e.t.Context(), e.srv.Client())
	}
	return e.t.Context()
}

// rp is a relying party built from go-oidc and x/oauth2, verifying ID tokens
// by the test clock.
type rp struct {
	id       string
	oauth    *oauth2.Config
	verifier *gooidc.IDTokenVerifier
	provider *gooidc.Provider
}

func (e *env) rp(clientID string) *rp {
	e.t.Helper()
	prov, err := gooidc.NewProvider(e.rpContext(), e.issuer)
	require.NoError(e.t, err)
	var c *Client
	for _, x := range e.cfg.Clients {
		if x.ID == clientID {
			c = x
		}
	}
	require.NotNil(e.t, c, clientID)
	secret := ""
	if !c.Public() {
		secret = clientID + "-secret"
	}
	return &rp{id: clientID, provider: prov,
		oauth: &oauth2.Config{ClientID: clientID, ClientSecret: secret, Endpoint: prov.Endpoint(), RedirectURL: c.RedirectURIs[0],
			Scopes: []string{gooidc.ScopeOpenID, "profile", "email", gooidc.ScopeOfflineAccess}},
		verifier: prov.Verifier(&gooidc.Config{ClientID: clientID, Now: e.clock.Now}),
	}
}

// tokens is what an RP holds after a code exchange.
type tokens struct {
	*oauth2.Token
	id     *gooidc.IDToken
	raw    string
	sid    string
	client string
	rp     *rp
}

// fresh renews the access token with the refresh token, as an app does when
// its access token expires, and returns the new access token; if the
// refresh fails it returns the old one (which will then be refused).
func (tk *tokens) fresh(e *env) string {
	e.t.Helper()
	next, err := tk.rp.refresh(e.t, tk.RefreshToken)
	if err == nil {
		tk.Token = next
	}
	return tk.AccessToken
}

var hiddenInput = regexp.MustCompile(`name="(authRequestID|csrf)" value="([^"]*)"`)

// authorize starts a code flow with PKCE and returns the final response of
// the provider (a redirect to the RP, or a page).
func (b *browser) authorize(r *rp, extra ...oauth2.AuthCodeOption) (*http.Response, string, string) {
	verifier := oauth2.GenerateVerifier()
	state := randomB64(8)
	opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}, extra...)
	resp, err := b.client.Get(r.oauth.AuthCodeURL(state, opts...))
	require.NoError(b.t, err)
	return resp, verifier, state
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(data)
}

// loginForm fills in the login form on page with the given credentials.
func (b *browser) loginForm(page, username, password string) url.Values {
	b.t.Helper()
	fields := map[string]string{}
	for _, m := range hiddenInput.FindAllStringSubmatch(page, -1) {
		fields[m[1]] = m[2]
	}
	require.NotEmpty(b.t, fields["authRequestID"], "no login form in page:\n%s", page)
	return url.Values{"authRequestID": {fields["authRequestID"]}, "csrf": {fields["csrf"]}, "username": {username}, "password": {password}}
}

// submitLogin posts the login form on page with the given credentials.
func (b *browser) submitLogin(page, username, password string) *http.Response {
	b.t.Helper()
	resp, err := b.client.PostForm(b.e.issuer+"/login", b.loginForm(page, username, password))
	require.NoError(b.t, err)
	return resp
}

// code reads the authorization code from the redirect to the RP.
func (b *browser) code(resp *http.Response, state string) string {
	b.t.Helper()
	require.Equal(b.t, http.StatusFound, resp.StatusCode, "want a redirect to the RP, got page:\n%s", body(b.t, resp))
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(b.t, err)
	q := loc.Query()
	require.Empty(b.t, q.Get("error"), "authorization error: %s %s", q.Get("error"), q.Get("error_description"))
	require.Equal(b.t, state, q.Get("state"))
	return q.Get("code")
}

// login runs the whole code flow for r, signing in with the form when the
// provider asks, and exchanges the code.
func (b *browser) login(r *rp, username string) *tokens {
	b.t.Helper()
	resp, verifier, state := b.authorize(r)
	if resp.StatusCode == http.StatusOK {
		resp = b.submitLogin(body(b.t, resp), username, testPassword)
	}
	return b.exchange(r, b.code(resp, state), verifier)
}

func (b *browser) exchange(r *rp, code, verifier string) *tokens {
	b.t.Helper()
	tok, err := r.oauth.Exchange(b.e.rpContext(), code, oauth2.VerifierOption(verifier))
	require.NoError(b.t, err)
	return r.verify(b.t, tok)
}

func (r *rp) verify(t *testing.T, tok *oauth2.Token) *tokens {
	t.Helper()
	raw, _ := tok.Extra("id_token").(string)
	require.NotEmpty(t, raw, "no id_token")
	id, err := r.verifier.Verify(t.Context(), raw)
	require.NoError(t, err)
	var claims struct {
		SID string `json:"sid"`
	}
	require.NoError(t, id.Claims(&claims))
	return &tokens{Token: tok, id: id, raw: raw, sid: claims.SID, client: r.id, rp: r}
}

// refresh uses the refresh token grant directly (no caching TokenSource).
func (r *rp) refresh(t *testing.T, refreshToken string) (*oauth2.Token, error) {
	return r.oauth.TokenSource(t.Context(), &oauth2.Token{RefreshToken: refreshToken, Expiry: time.Unix(1, 0)}).Token()
}

// introspect asks as the "api" resource server.
func (e *env) introspect(token string) map[string]any {
	e.t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/oauth/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	require.NoError(e.t, err)
	req.SetBasicAuth("api", "api-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	require.Equal(e.t, http.StatusOK, resp.StatusCode)
	var out map[string]any
	require.NoError(e.t, json.NewDecoder(resp.Body).Decode(&out))
	resp.Body.Close()
	return out
}

// bearerCall calls one of idleguard's bearer endpoints.
func (e *env) bearerCall(method, path, token, payload string, header ...string) (int, map[string]any) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.issuer+path, strings.NewReader(payload))
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if payload != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &out)
	return resp.StatusCode, out
}

func (e *env) heartbeat(token string) int {
	code, _ := e.bearerCall(http.MethodPost, "/activity", token, "")
	return code
}

func (e *env) status(token string) map[string]any {
	e.t.Helper()
	code, out := e.bearerCall(http.MethodGet, "/session", token, "")
	require.Equal(e.t, http.StatusOK, code, "%v", out)
	return out
}

func (e *env) userinfo(token string) (int, map[string]any) {
	return e.bearerCall(http.MethodGet, "/userinfo", token, "")
}

func pkceChallenge(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

var _ = fmt.Sprintf
var _ context.Context

func decodeSegment(t *testing.T, seg string) map[string]any {
	t.Helper()
	data, err := base64.RawURLEncoding.DecodeString(seg)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(data, &out))
	return out
}

func sessionFilter(sid string) session.AuditFilter { return session.AuditFilter{SID: sid} }

func hasEvent(events []session.AuditEvent, kind, reason string) bool {
	for _, ev := range events {
		if ev.Kind == kind && (reason == "" || ev.Reason == reason) {
			return true
		}
	}
	return false
}
