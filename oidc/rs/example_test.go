package rs_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/oidc/rs"
	"github.com/idleguard/idleguard/session"
)

// An API protected by the kit. The provider's configuration has the API
// as a client of its own:
//
//   - client_id: orders-api
//     client_secret: ${ORDERS_API_SECRET}
//     grant_types: [client_credentials]
//     resource_server: true
//     serves: [shop]          # the apps whose tokens the API accepts
//
// The API accepts the shop's access tokens while the person's session
// lasts, and refuses them as soon as the provider ends it.
func Example() {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	issuer, shutdown := exampleProvider(ctx)
	defer shutdown()

	kit, err := rs.New(ctx, rs.Config{
		Issuer:       issuer,
		ClientID:     "orders-api",
		ClientSecret: "orders-api-secret",
		Audiences:    []string{"shop"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	go kit.Run(ctx) // session ends in, activity out
	orders := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := rs.ClaimsFrom(r.Context())
		fmt.Fprintf(w, "orders of %s", claims.Subject)
	})
	api := httptest.NewServer(kit.Middleware(orders))
	defer api.Close()

	// A person signs in to the shop, whose pages call the API.
	token := exampleSignIn(ctx, issuer)
	fmt.Println(call(api.URL, token))

	// The person signs out (or walks away until the idle limit): the API
	// refuses the token at once, though the JWT itself has not expired.
	claims, _ := kit.Verify(ctx, token)
	_ = exampleProviderEnd(ctx, claims.SID)
	status := call(api.URL, token)
	for deadline := time.Now().Add(5 * time.Second); status == http.StatusOK && time.Now().Before(deadline); status = call(api.URL, token) {
		time.Sleep(10 * time.Millisecond) // the event is on its way over the network
	}
	fmt.Println(status)
	// Output:
	// 200
	// 401
}

func call(url, token string) int {
	req, _ := http.NewRequest(http.MethodGet, url+"/orders", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// exampleProviderEnd ends a session at the example's provider.
var exampleProviderEnd func(ctx context.Context, sid string) error

// exampleProvider runs an idleguard provider with a shop app, its API and
// a user, and returns its issuer.
func exampleProvider(ctx context.Context) (string, func()) {
	dir, _ := os.MkdirTemp("", "rs-example")
	var p *oidc.Provider
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.ServeHTTP(w, r) }))
	store, err := session.OpenSQLite(ctx, filepath.Join(dir, "idleguard.db"))
	if err != nil {
		panic(err)
	}
	shop := &oidc.Client{ID: "shop", SecretHash: oidc.HashSecret("shop-secret"), AuthMethod: zoidc.AuthMethodBasic,
		RedirectURIs: []string{"http://127.0.0.1:1/callback"}, GrantTypes: []zoidc.GrantType{zoidc.GrantTypeCode},
		AccessTokenTTL: 5 * time.Minute, Policy: activity.ClientPolicy{Sources: activity.DefaultSources}}
	api := &oidc.Client{ID: "orders-api", SecretHash: oidc.HashSecret("orders-api-secret"), AuthMethod: zoidc.AuthMethodBasic,
		GrantTypes: []zoidc.GrantType{zoidc.GrantTypeClientCredentials}, ResourceServer: true, Serves: []string{"shop"},
		AccessTokenTTL: time.Hour}
	p, err = oidc.New(ctx, oidc.Config{Issuer: idp.URL, Clients: []*oidc.Client{shop, api},
		Session: activity.Config{IdleTimeout: 15 * time.Minute, MaxLifetime: 8 * time.Hour},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil))}, store)
	if err != nil {
		panic(err)
	}
	p.Run(ctx)
	hash, _ := session.HashPasswordWithParams("demo-password", 1, 1024, 1)
	_ = store.CreateUser(ctx, &session.User{Username: "demo", PasswordHash: hash, CreatedAt: time.Now()})
	exampleProviderEnd = func(ctx context.Context, sid string) error {
		return p.Tracker().End(ctx, sid, session.ReasonLogout, "user")
	}
	return idp.URL, func() {
		_ = p.Close(context.Background())
		idp.Close()
		store.Close()
		os.RemoveAll(dir)
	}
}

// exampleSignIn signs the demo user in to the shop and returns the access
// token the shop's pages send to the API.
func exampleSignIn(ctx context.Context, issuer string) string {
	cfg := &oauth2.Config{ClientID: "shop", ClientSecret: "shop-secret", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: issuer + "/authorize", TokenURL: issuer + "/oauth/token"}, Scopes: []string{"openid"}}
	tok, err := oidctest.Login(ctx, oidctest.NewBrowser(issuer, nil), issuer, cfg, "demo", "demo-password")
	if err != nil {
		panic(err)
	}
	return tok.AccessToken
}
