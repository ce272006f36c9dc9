// Package rs is idleguard's resource-server kit: net/http middleware for an
// API that accepts the provider's JWT access tokens.
//
// The middleware verifies each token locally (signature against the
// provider's JWKS, cached and refetched when an unknown key id appears
// after a rotation; typ at+jwt; iss; aud among the apps the API serves;
// exp), and refuses at once the tokens of an application session that
// has ended: the kit keeps an OpenID Shared Signals poll stream (RFC 8936)
// at the provider, applies every CAEP session-revoked event it receives,
// and acknowledges only what it has applied, so that a kit restarted while
// events were pending applies every one of them. The requests it lets
// through are activity of the person: they are reported to the provider's
// POST /activity/batch at most once per BatchInterval, one event per
// application session however many requests it made in between, so the
// API's own traffic keeps the person's session alive without heartbeats.
//
// Provider outages are ridden out: tokens keep verifying against the
// cached keys, the poll is retried with a backoff, and unsent activity is
// kept for the next batch.
//
// The API's client must be configured at the provider with
// resource_server: true, a client_secret, the client_credentials grant,
// and serves: the apps whose tokens the API accepts.
package rs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Event type URIs the kit understands.
const (
	eventSessionRevoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	eventVerification   = "https://schemas.openid.net/secevent/ssf/event-type/verification"
	methodPoll          = "urn:ietf:rfc:8936"
	streamDescription   = "idleguard rs kit"
)

// Config configures a Kit.
type Config struct {
	Issuer       string // the provider's issuer URL
	ClientID     string // the API's client (resource_server: true)
	ClientSecret string
	// Audiences are the apps whose tokens the API accepts (a token's aud
	// must name one): the client ids in the API client's serves list.
	Audiences []string
	// BatchInterval is the least time between two activity batches;
	// default 1s.
	BatchInterval time.Duration
	// RevocationTTL is how long an ended application session is
	// remembered: at least the longest access token lifetime of the
	// Audiences; default 24h.
	RevocationTTL time.Duration
	HTTPClient    *http.Client     // default: 30s timeout
	Now           func() time.Time // the clock tokens are judged by; default time.Now
	Logger        *slog.Logger
}

// Claims are the verified claims of a request's access token, in its
// context (ClaimsFrom).
type Claims struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Audience []string `json:"aud"`
	Expiry   int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
	JTI      string   `json:"jti"`
	ClientID string   `json:"client_id"`
	Scope    string   `json:"scope"`
	SID      string   `json:"sid"`
}

type claimsKey struct{}

// ClaimsFrom returns the claims of the token the middleware accepted.
func ClaimsFrom(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok
}

// appSession names one application session: a token's sid and client.
type appSession struct{ sid, client string }

// Kit verifies tokens, enforces session ends and reports activity. Create
// it with New, serve with Middleware, run its background work with Run.
type Kit struct {
	cfg   Config
	keys  *keySet
	token *serviceToken

	tokenEndpoint, configurationEndpoint, batchEndpoint string

	mu       sync.Mutex
	revoked  map[appSession]time.Time // ended at (event_timestamp)
	activity map[appSession]batchEvent
	streamID string
	pollURL  string
	acks     []string // applied, to acknowledge with the next poll
	noBatch  sync.Once
}

// New reads the provider's metadata (OpenID Connect discovery and the SSF
// transmitter configuration) and its keys.
func New(ctx context.Context, cfg Config) (*Kit, error) {
	if cfg.Issuer == "" || cfg.ClientID == "" || cfg.ClientSecret == "" || len(cfg.Audiences) == 0 {
		return nil, errors.New("rs: Issuer, ClientID, ClientSecret and Audiences are required")
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	if cfg.BatchInterval <= 0 {
		cfg.BatchInterval = time.Second
	}
	if cfg.RevocationTTL <= 0 {
		cfg.RevocationTTL = 24 * time.Hour
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	k := &Kit{cfg: cfg, revoked: map[appSession]time.Time{}, activity: map[appSession]batchEvent{}, batchEndpoint: cfg.Issuer + "/activity/batch"}
	var oidcMeta struct {
		TokenEndpoint string `json:"token_endpoint"`
		JWKS          string `json:"jwks_uri"`
	}
	if err := getJSON(ctx, cfg.HTTPClient, cfg.Issuer+"/.well-known/openid-configuration", &oidcMeta); err != nil {
		return nil, fmt.Errorf("rs: discovery: %w", err)
	}
	var ssfMeta struct {
		Issuer        string `json:"issuer"`
		Configuration string `json:"configuration_endpoint"`
	}
	if err := getJSON(ctx, cfg.HTTPClient, cfg.Issuer+"/.well-known/ssf-configuration", &ssfMeta); err != nil {
		return nil, fmt.Errorf("rs: SSF metadata: %w", err)
	}
	if ssfMeta.Issuer != cfg.Issuer || ssfMeta.Configuration == "" {
		return nil, fmt.Errorf("rs: SSF metadata names issuer %q, want %q", ssfMeta.Issuer, cfg.Issuer)
	}
	k.tokenEndpoint, k.configurationEndpoint = oidcMeta.TokenEndpoint, ssfMeta.Configuration
	k.keys = &keySet{url: oidcMeta.JWKS, client: cfg.HTTPClient}
	k.token = &serviceToken{k: k}
	if err := k.keys.refresh(ctx); err != nil {
		return nil, fmt.Errorf("rs: keys: %w", err)
	}
	return k, nil
}

// Middleware lets through requests with a valid access token of a live
// application session, with its claims in the context; any other request
// gets 401 with an RFC 6750 challenge, and never counts as activity.
func (k *Kit) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := k.Verify(r.Context(), bearer(r))
		if err != nil {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, err.Error()))
			http.Error(w, "invalid token: "+err.Error(), http.StatusUnauthorized)
			return
		}
		k.record(c)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), claimsKey{}, c)))
	})
}

func bearer(r *http.Request) string {
	h := r.Header.Get("Authorization")
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// Errors of Verify.
var (
	ErrNoToken      = errors.New("no bearer token")
	ErrInvalidToken = errors.New("token is invalid")
	ErrExpired      = errors.New("token has expired")
	ErrAudience     = errors.New("token is for another audience")
	ErrSessionEnded = errors.New("the token's session has ended")
)

// Verify checks a JWT access token (RFC 9068) and its session.
func (k *Kit) Verify(ctx context.Context, token string) (*Claims, error) {
	if token == "" {
		return nil, ErrNoToken
	}
	payload, err := k.keys.verifyJWT(ctx, token, "at+jwt")
	if err != nil {
		return nil, ErrInvalidToken
	}
	var c Claims
	if err := json.Unmarshal(payload, &c); err != nil || c.Issuer != k.cfg.Issuer || c.JTI == "" {
		return nil, ErrInvalidToken
	}
	now := k.cfg.Now()
	switch {
	case !now.Before(time.Unix(c.Expiry, 0)):
		return nil, ErrExpired
	case !slices.ContainsFunc(c.Audience, func(a string) bool { return slices.Contains(k.cfg.Audiences, a) }):
		return nil, ErrAudience
	case k.ended(appSession{c.SID, c.ClientID}, time.Unix(c.IssuedAt, 0)):
		return nil, ErrSessionEnded
	}
	return &c, nil
}

// ended reports whether a token issued at iat in app session s was
// issued before that session ended (a later token belongs to a new one).
func (k *Kit) ended(s appSession, iat time.Time) bool {
	if s.sid == "" {
		return false // a client's own token: no person, no session
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	at, ok := k.revoked[s]
	return ok && !iat.After(at)
}

// revoke records the end of app session s at at.
func (k *Kit) revoke(s appSession, at time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if prev, ok := k.revoked[s]; !ok || at.After(prev) {
		k.revoked[s] = at
	}
	delete(k.activity, s)
}

// prune forgets ends older than RevocationTTL: every token they revoked
// has expired.
func (k *Kit) prune() {
	k.mu.Lock()
	defer k.mu.Unlock()
	limit := k.cfg.Now().Add(-k.cfg.RevocationTTL)
	for s, at := range k.revoked {
		if at.Before(limit) {
			delete(k.revoked, s)
		}
	}
}

// Run polls the provider for session ends and sends activity batches until
// ctx is done.
func (k *Kit) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); k.pollLoop(ctx) }()
	go func() { defer wg.Done(); k.batchLoop(ctx) }()
	wg.Wait()
}

// getJSON GETs url into v.
func getJSON(ctx context.Context, client *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v)
}

// call sends a JSON request with the kit's service token and decodes the
// answer into out (when not nil), refetching the token once on 401.
func (k *Kit) call(ctx context.Context, method, url string, in, out any) (int, error) {
	for attempt := 0; ; attempt++ {
		tok, err := k.token.get(ctx)
		if err != nil {
			return 0, err
		}
		var body io.Reader
		if in != nil {
			data, err := json.Marshal(in)
			if err != nil {
				return 0, err
			}
			body = strings.NewReader(string(data))
		}
		req, err := http.NewRequestWithContext(ctx, method, url, body)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := k.cfg.HTTPClient.Do(req)
		if err != nil {
			return 0, err
		}
		status, err := decodeAnswer(resp, out)
		if status == http.StatusUnauthorized && attempt == 0 {
			k.token.reset()
			continue
		}
		return status, err
	}
}

func decodeAnswer(resp *http.Response, out any) (int, error) {
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: %s", resp.Request.Method, resp.Request.URL.Path, resp.Status)
	}
	if out == nil || len(data) == 0 {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, json.Unmarshal(data, out)
}

// serviceToken is the kit's own access token (client_credentials grant),
// kept until shortly before it expires.
type serviceToken struct {
	k       *Kit
	mu      sync.Mutex
	value   string
	expires time.Time
}

func (t *serviceToken) get(ctx context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.value != "" && t.k.cfg.Now().Before(t.expires) {
		return t.value, nil
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.k.tokenEndpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(url.QueryEscape(t.k.cfg.ClientID), url.QueryEscape(t.k.cfg.ClientSecret))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := t.k.cfg.HTTPClient.Do(req)
	if err != nil {
		return "", err
	}
	var out struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if _, err := decodeAnswer(resp, &out); err != nil {
		return "", fmt.Errorf("client_credentials: %w", err)
	}
	t.value = out.AccessToken
	t.expires = t.k.cfg.Now().Add(time.Duration(out.ExpiresIn)*time.Second - 30*time.Second)
	return t.value, nil
}

func (t *serviceToken) reset() {
	t.mu.Lock()
	t.value = ""
	t.mu.Unlock()
}

// keySet is the provider's JWKS, cached. A key id it does not know makes
// it fetch the set again (a rotation), at most once per refetchEvery.
type keySet struct {
	url    string
	client *http.Client

	mu      sync.RWMutex
	keys    jose.JSONWebKeySet
	fetched time.Time // by the wall clock: this is about network load
}

const refetchEvery = 5 * time.Second

func (s *keySet) refresh(ctx context.Context) error {
	var set jose.JSONWebKeySet
	if err := getJSON(ctx, s.client, s.url, &set); err != nil {
		return err
	}
	s.mu.Lock()
	s.keys, s.fetched = set, time.Now()
	s.mu.Unlock()
	return nil
}

func (s *keySet) key(kid string) (jose.JSONWebKey, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	keys := s.keys.Key(kid)
	if len(keys) == 0 {
		return jose.JSONWebKey{}, false
	}
	return keys[0], true
}

// verifyJWT checks a compact JWT of header typ signed by a key of the set
// and returns its payload.
func (s *keySet) verifyJWT(ctx context.Context, raw, typ string) ([]byte, error) {
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	if err != nil || len(jws.Signatures) != 1 {
		return nil, errors.New("not a signed JWT")
	}
	if t, _ := jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType].(string); !strings.EqualFold(t, typ) {
		return nil, fmt.Errorf("not a JWT of typ %s", typ)
	}
	return s.verify(ctx, jws)
}

// verify checks jws's signature by the key its kid names.
func (s *keySet) verify(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	kid := jws.Signatures[0].Header.KeyID
	key, ok := s.key(kid)
	if !ok {
		s.mu.RLock()
		recent := time.Since(s.fetched) < refetchEvery
		s.mu.RUnlock()
		if recent {
			return nil, fmt.Errorf("unknown key id %q", kid)
		}
		if err := s.refresh(ctx); err != nil {
			return nil, err
		}
		if key, ok = s.key(kid); !ok {
			return nil, fmt.Errorf("unknown key id %q", kid)
		}
	}
	return jws.Verify(key)
}
