package rs_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/oidc/rs"
	"github.com/idleguard/idleguard/session"
)

// clock is the test's controllable time, shared by provider and kit.
// provider is a real idleguard provider on a SQLite file behind a real
// HTTP server.
type provider struct {
	t     *testing.T
	clock *oidctest.Clock
	db    string
	cfg   oidc.Config
	srv   *httptest.Server

	mu    sync.RWMutex
	p     *oidc.Provider
	store *session.SQLite
	stop  context.CancelFunc
}

const password = "correct horse battery"

func newProvider(t *testing.T) *provider {
	pr := &provider{t: t, clock: oidctest.NewClock(), db: filepath.Join(t.TempDir(), "idleguard.db")}
	pr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pr.mu.RLock()
		p := pr.p
		pr.mu.RUnlock()
		if p == nil {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(pr.srv.Close)
	app := func(id string) *oidc.Client {
		return &oidc.Client{ID: id, SecretHash: oidc.HashSecret(id + "-secret"), AuthMethod: zoidc.AuthMethodBasic,
			RedirectURIs: []string{"http://127.0.0.1:1/" + id + "/callback"}, AccessTokenTTL: 30 * time.Minute,
			GrantTypes: []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken},
			Policy:     activity.ClientPolicy{IdleTimeout: 30 * time.Minute, Sources: activity.DefaultSources}}
	}
	api := &oidc.Client{ID: "orders-api", SecretHash: oidc.HashSecret("orders-api-secret"), AuthMethod: zoidc.AuthMethodBasic,
		GrantTypes: []zoidc.GrantType{zoidc.GrantTypeClientCredentials}, ResourceServer: true, Serves: []string{"shop", "admin"},
		AccessTokenTTL: time.Hour, Policy: activity.ClientPolicy{Sources: activity.DefaultSources}}
	pr.cfg = oidc.Config{Issuer: pr.srv.URL, Now: pr.clock.Now, Clients: []*oidc.Client{app("shop"), app("admin"), app("mail"), api},
		Session: activity.Config{IdleTimeout: time.Hour, MaxLifetime: 12 * time.Hour, SweepInterval: time.Hour},
		Logger:  slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))}
	pr.start()
	hash, err := session.HashPasswordWithParams(password, 1, 1024, 1)
	require.NoError(t, err)
	require.NoError(t, pr.store.CreateUser(t.Context(), &session.User{Username: "alice", PasswordHash: hash, CreatedAt: pr.clock.Now()}))
	t.Cleanup(pr.shutdown)
	return pr
}

func (pr *provider) start() {
	store, err := session.OpenSQLite(pr.t.Context(), pr.db)
	require.NoError(pr.t, err)
	p, err := oidc.New(pr.t.Context(), pr.cfg, store)
	require.NoError(pr.t, err)
	ctx, stop := context.WithCancel(context.Background())
	p.Run(ctx)
	pr.mu.Lock()
	pr.p, pr.store, pr.stop = p, store, stop
	pr.mu.Unlock()
}

func (pr *provider) shutdown() {
	pr.mu.Lock()
	p, store, stop := pr.p, pr.store, pr.stop
	pr.p = nil
	pr.mu.Unlock()
	if p == nil {
		return
	}
	stop()
	require.NoError(pr.t, p.Close(context.Background()))
	require.NoError(pr.t, store.Close())
}

func (pr *provider) provider() *oidc.Provider {
	pr.mu.RLock()
	defer pr.mu.RUnlock()
	return pr.p
}

// signIn signs alice in to app and returns the token response.
func (pr *provider) signIn(browser *http.Client, app string) *oauth2.Token {
	pr.t.Helper()
	cfg := &oauth2.Config{ClientID: app, ClientSecret: app + "-secret", RedirectURL: "http://127.0.0.1:1/" + app + "/callback",
		Endpoint: oauth2.Endpoint{AuthURL: pr.srv.URL + "/authorize", TokenURL: pr.srv.URL + "/oauth/token"}, Scopes: []string{"openid"}}
	tok, err := oidctest.Login(pr.t.Context(), browser, pr.srv.URL, cfg, "alice", password)
	require.NoError(pr.t, err)
	return tok
}

// sid reads the sid claim of an access token (already verified by the kit
// in the tests that use it).
func sid(t *testing.T, token string) string {
	parts := strings.Split(token, ".")
	require.Len(t, parts, 3)
	var c struct {
		SID string `json:"sid"`
	}
	data, err := jsonSegment(parts[1])
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &c))
	return c.SID
}

// api is an API behind the kit.
type api struct {
	kit  *rs.Kit
	srv  *httptest.Server
	stop context.CancelFunc
	done chan struct{}
}

func startAPI(t *testing.T, pr *provider) *api {
	t.Helper()
	kit, err := rs.New(t.Context(), rs.Config{Issuer: pr.srv.URL, ClientID: "orders-api", ClientSecret: "orders-api-secret",
		Audiences: []string{"shop", "admin"}, Now: pr.clock.Now, BatchInterval: time.Hour,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelError}))})
	require.NoError(t, err)
	a := &api{kit: kit, done: make(chan struct{})}
	a.srv = httptest.NewServer(kit.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := rs.ClaimsFrom(r.Context())
		_, _ = io.WriteString(w, c.Subject)
	})))
	t.Cleanup(a.srv.Close)
	ctx, stop := context.WithCancel(context.Background())
	a.stop = stop
	go func() { defer close(a.done); kit.Run(ctx) }()
	t.Cleanup(a.close)
	return a
}

func (a *api) close() {
	a.stop()
	<-a.done
}

func (a *api) call(t *testing.T, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, a.srv.URL+"/orders", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// refusedSoon waits for the kit to apply an event the provider has sent
// (a network round trip, not a timeout of the idle model).
func (a *api) refusedSoon(t *testing.T, token string) {
	t.Helper()
	require.Eventually(t, func() bool { return a.call(t, token) == http.StatusUnauthorized }, 10*time.Second, 5*time.Millisecond)
}

func TestKitVerifiesTokens(t *testing.T) {
	pr := newProvider(t)
	a := startAPI(t, pr)
	browser := oidctest.NewBrowser(pr.srv.URL, nil)
	shop := pr.signIn(browser, "shop")
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))

	mail := pr.signIn(browser, "mail")
	require.Equal(t, http.StatusUnauthorized, a.call(t, mail.AccessToken), "a token for an app the API does not serve")
	require.Equal(t, http.StatusUnauthorized, a.call(t, ""), "no token")
	require.Equal(t, http.StatusUnauthorized, a.call(t, shop.AccessToken[:len(shop.AccessToken)-4]+"AAAA"), "a forged signature")
	idToken, _ := shop.Extra("id_token").(string)
	require.Equal(t, http.StatusUnauthorized, a.call(t, idToken), "an ID token is not an access token")

	pr.clock.Advance(31 * time.Minute)
	require.Equal(t, http.StatusUnauthorized, a.call(t, shop.AccessToken), "expired")
}

// TestKitRefusesAnEndedSessionAtOnce: an end at the provider reaches the
// kit through its poll stream, and the API refuses that app session's
// tokens while the JWT is still unexpired; another app of the same
// session, still live, is served.
func TestKitRefusesAnEndedSessionAtOnce(t *testing.T) {
	pr := newProvider(t)
	a := startAPI(t, pr)
	browser := oidctest.NewBrowser(pr.srv.URL, nil)
	shop, admin := pr.signIn(browser, "shop"), pr.signIn(browser, "admin")
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))
	require.Equal(t, http.StatusOK, a.call(t, admin.AccessToken))

	_, apps, err := pr.store.AuthSession(t.Context(), sid(t, shop.AccessToken))
	require.NoError(t, err)
	for _, app := range apps {
		if app.ClientID == "shop" {
			require.NoError(t, pr.provider().Tracker().EndApp(t.Context(), app.ID, session.ReasonAdmin, "admin"))
		}
	}
	a.refusedSoon(t, shop.AccessToken)
	require.Equal(t, http.StatusOK, a.call(t, admin.AccessToken), "the other app of the session is live")

	// A new sign-in to shop in the same session is a new app session.
	pr.clock.Advance(time.Second)
	again := pr.signIn(browser, "shop")
	require.Equal(t, sid(t, shop.AccessToken), sid(t, again.AccessToken))
	require.Equal(t, http.StatusOK, a.call(t, again.AccessToken))
}

// TestKitRestartedAppliesEveryPendingEvent: ends that happen while the
// API is down wait in its stream, and the restarted kit finds that stream
// and applies every one of them at its first poll.
func TestKitRestartedAppliesEveryPendingEvent(t *testing.T) {
	pr := newProvider(t)
	a := startAPI(t, pr)
	var tokens []string
	for range 3 {
		tokens = append(tokens, pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "shop").AccessToken)
	}
	live := pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "shop").AccessToken
	a.close()

	for _, tok := range tokens {
		require.NoError(t, pr.provider().Tracker().End(t.Context(), sid(t, tok), session.ReasonLogout, "user"))
	}
	b := startAPI(t, pr)
	for _, tok := range tokens {
		b.refusedSoon(t, tok)
	}
	require.Equal(t, http.StatusOK, b.call(t, live))

	// Everything applied was acknowledged: the stream is empty once the kit
	// polled again, and there is still one stream.
	token := serviceToken(t, pr)
	require.Eventually(t, func() bool {
		streams := ssfGet[[]map[string]any](t, pr, token, "/ssf/streams")
		if len(streams) != 1 {
			return false
		}
		return pending(t, pr, streams[0]["stream_id"].(string)) == 0
	}, 10*time.Second, 5*time.Millisecond)
}

// TestKitKeepsWorkingThroughAProviderRestart: tokens verify while the
// provider is down (cached keys), and an end after its restart reaches
// the kit.
func TestKitKeepsWorkingThroughAProviderRestart(t *testing.T) {
	pr := newProvider(t)
	a := startAPI(t, pr)
	shop := pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "shop")
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))

	pr.shutdown()
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken), "the provider is down; the cached keys verify")
	pr.start()
	require.NoError(t, pr.provider().Tracker().End(t.Context(), sid(t, shop.AccessToken), session.ReasonAdmin, "admin"))
	a.refusedSoon(t, shop.AccessToken)
}

// TestKitBatchesActivity checks the client side of POST /activity/batch
// against the fixed interface: at most one batch per flush, one
// event per application session however many requests it made, client
// authentication by client_secret_basic, and a session the provider says
// is over is refused at once.
func TestKitBatchesActivity(t *testing.T) {
	pr := newProvider(t)
	var mu sync.Mutex
	var batches [][]map[string]any
	batch := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, ok := r.BasicAuth()
		if !ok || id != "orders-api" || secret != "orders-api-secret" || r.URL.Path != "/activity/batch" {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		var body struct {
			Events []map[string]any `json:"events"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		batches = append(batches, body.Events)
		mu.Unlock()
		results := make([]map[string]any, len(body.Events))
		for i := range results {
			results[i] = map[string]any{"live": false, "reason": "idle_timeout"}
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"results": results})
	}))
	t.Cleanup(batch.Close)
	a := startAPI(t, pr)
	rs.SetBatchEndpoint(a.kit, batch.URL+"/activity/batch")

	shop := pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "shop")
	for range 5 {
		require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))
	}
	pr.clock.Advance(3 * time.Second)
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))
	require.NoError(t, a.kit.Flush(t.Context()))
	require.NoError(t, a.kit.Flush(t.Context()), "nothing new: no batch")

	mu.Lock()
	require.Len(t, batches, 1)
	require.Len(t, batches[0], 1, "six requests of one app session are one event")
	ev := batches[0][0]
	mu.Unlock()
	require.Equal(t, sid(t, shop.AccessToken), ev["sid"])
	require.Equal(t, "shop", ev["client_id"])
	require.NotEmpty(t, ev["jti"])
	require.EqualValues(t, pr.clock.Now().Unix(), ev["at"], "the time of the latest request")
	require.Equal(t, http.StatusUnauthorized, a.call(t, shop.AccessToken), "the provider said it is over")

	t.Run("a provider without the endpoint", func(t *testing.T) {
		rs.SetBatchEndpoint(a.kit, pr.srv.URL+"/no-such-endpoint")
		admin := pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "admin")
		require.Equal(t, http.StatusOK, a.call(t, admin.AccessToken))
		require.NoError(t, a.kit.Flush(t.Context()), "404: activity is dropped, not kept and resent every second")
		require.Equal(t, http.StatusOK, a.call(t, admin.AccessToken), "and the API goes on")
	})
}

// TestKitActivityKeepsTheSessionAlive: the API's traffic, batched to the
// provider's real POST /activity/batch, is the person's activity: no
// heartbeat, yet the session outlives its idle limit counted from sign-in,
// and ends that limit after the last call.
func TestKitActivityKeepsTheSessionAlive(t *testing.T) {
	pr := newProvider(t)
	a := startAPI(t, pr)
	shop := pr.signIn(oidctest.NewBrowser(pr.srv.URL, nil), "shop") // shop: 30m idle limit
	live := func() bool {
		st, err := pr.provider().Tracker().Session(t.Context(), sid(t, shop.AccessToken))
		require.NoError(t, err)
		return st.Active
	}
	pr.clock.Advance(25 * time.Minute)
	require.Equal(t, http.StatusOK, a.call(t, shop.AccessToken))
	require.NoError(t, a.kit.Flush(t.Context()))
	pr.clock.Advance(25 * time.Minute)
	require.True(t, live(), "50 minutes after sign-in, 25 after the last API call")
	pr.clock.Advance(6 * time.Minute)
	require.False(t, live(), "31 minutes after the last API call")
}

func jsonSegment(seg string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(seg) }

func serviceToken(t *testing.T, pr *provider) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, pr.srv.URL+"/oauth/token", strings.NewReader("grant_type=client_credentials"))
	require.NoError(t, err)
	req.SetBasicAuth("orders-api", "orders-api-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out.AccessToken
}

func ssfGet[T any](t *testing.T, pr *provider, token, path string) T {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, pr.srv.URL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var out T
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func pending(t *testing.T, pr *provider, stream string) int {
	t.Helper()
	pr.mu.RLock()
	store := pr.store
	pr.mu.RUnlock()
	rows, err := store.PendingSignals(t.Context(), "orders-api", stream, 100)
	require.NoError(t, err)
	return len(rows)
}

// TestMain quiets the protocol library's own logging (it logs through the
// process-wide slog default).
func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}
