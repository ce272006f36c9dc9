package oidc

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/securecookie"
	"github.com/rs/cors"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/static"
	"github.com/idleguard/idleguard/templates"
)

// SecretStore keeps named secrets generated on first start.
type SecretStore interface {
	Secret(ctx context.Context, name string, gen func() []byte) ([]byte, error)
}

// Store is everything the provider persists, as the union of the small
// interfaces its parts consume.
type Store interface {
	activity.Store
	UserStore
	AuthRequestStore
	RevocationStore
	KeyStore
	SecretStore
	OutboxStore
	AdminStore
	LoginThrottleStore
	SignalStore
	FactorStore
	Ping(ctx context.Context) error
}

// Config configures a Provider. Zero durations take the defaults noted.
type Config struct {
	Issuer  string
	Clients []*Client
	// Now is the clock for every decision. Tests freeze and advance it.
	Now            func() time.Time
	Session        activity.Config // IdleTimeout, MaxLifetime, SweepInterval, FlushInterval
	KeyAlgorithm   string          // RS256 (default), ES256 or EdDSA
	IDTokenTTL     time.Duration   // default 10m
	AuthRequestTTL time.Duration   // default 10m
	// DatabaseTimeout bounds how long a request waits on the database (every
	// store call takes the request's context); past it the request answers
	// 503 temporarily_unavailable. Default DefaultDatabaseTimeout.
	DatabaseTimeout time.Duration
	// HousekeepInterval is how often expired authorization requests,
	// revocations and login failures are purged and keys reloaded; default
	// DefaultHousekeepInterval. With several replicas a rotated key is
	// published for two of these before it signs (KeyPublishDelay).
	HousekeepInterval time.Duration
	// AdminTokenHash is the SHA-256 of the admin API bearer token; empty disables the admin API.
	AdminTokenHash []byte
	Backchannel    BackchannelConfig
	Login          LoginConfig
	// SSF tunes the Shared Signals transmitter; pushed SETs follow
	// Backchannel's timeout, concurrency and retry rules.
	SSF SSFConfig
	MFA MFAConfig
	// TrustedProxies are the networks of the reverse proxies whose
	// X-Forwarded-For or Forwarded header names the client; empty: the
	// peer's address is the client's. See clientAddress.
	TrustedProxies []netip.Prefix
	// Logger gets every log line; records logged with a request's context
	// carry its request_id (see LogHandler).
	Logger *slog.Logger
	// HTTPClient posts back-channel logouts; default has Backchannel.Timeout.
	HTTPClient *http.Client
}

// DefaultDatabaseTimeout is how long a request waits on the database unless
// Config.DatabaseTimeout says otherwise.
const DefaultDatabaseTimeout = 5 * time.Second

// Provider is the whole OpenID provider: protocol endpoints, login pages,
// activity endpoints, logout propagation and admin API.
type Provider struct {
	cfg      Config
	store    Store
	tracker  *activity.Tracker
	keys     *Keys
	clients  map[string]*Client
	refresh  refreshMAC
	cookies  *securecookie.SecureCookie
	tickets  *securecookie.SecureCookie
	devices  *securecookie.SecureCookie
	secure   bool
	op       *op.Provider
	handler  http.Handler
	pages    *template.Template
	limiter  *loginLimiter
	factors  *mfa.Factors
	passkeys *mfa.Passkeys // nil when the issuer's host is an IP address
	revoked  sync.Map      // access token id -> struct{}
	verified *verifiedCache
	signers  signerCache
	counters counters
	wake     chan struct{}
	outbox   *dispatcher[session.OutboxEntry]
	pushes   *dispatcher[session.Signal]
	signals  *signalHub
	// receivers maps each app to the resource servers that serve it: the
	// receivers of its session-revoked events.
	receivers map[string][]string
	// backchannelURIs are the configured clients' back-channel logout URIs,
	// sorted: the destinations the dispatcher serves.
	backchannelURIs []string
	runCancel       context.CancelFunc
	running         sync.WaitGroup
}

func randomBytes(n int) func() []byte {
	return func() []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
}

// cookieCodec returns a maker of codecs that seal cookies with the keys
// stored as name_hash and name_block, generated on first use: kept in the
// database, so that a cookie set at one replica opens at every other.
func cookieCodec(ctx context.Context, store SecretStore, name string) (func() *securecookie.SecureCookie, error) {
	hashKey, err := store.Secret(ctx, name+"_hash", randomBytes(32))
	if err != nil {
		return nil, err
	}
	blockKey, err := store.Secret(ctx, name+"_block", randomBytes(32))
	if err != nil {
		return nil, err
	}
	return func() *securecookie.SecureCookie { return securecookie.New(hashKey, blockKey) }, nil
}

// replicaName names this process where several share the database: as the
// sweeper lease's holder and the claimant of outbox rows. Host and process
// id tell an operator which replica holds what; the random part keeps a
// restarted process (or a reused pid) apart from its predecessor.
func replicaName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "replica"
	}
	return fmt.Sprintf("%.40s/%d/%s", host, os.Getpid(), session.NewID()[:8])
}

// ReplicaID is this provider's name in the leases and outbox claims it
// takes.
func (p *Provider) ReplicaID() string { return p.cfg.Session.ReplicaID }

// New builds a provider on store. It loads (or creates) the signing keys and
// secrets; call Run to start the background work and Handler to serve.
func New(ctx context.Context, cfg Config, store Store) (*Provider, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Logger = slog.New(LogHandler(cfg.Logger.Handler()))
	if cfg.IDTokenTTL <= 0 {
		cfg.IDTokenTTL = DefaultIDTokenTTL
	}
	if cfg.AuthRequestTTL <= 0 {
		cfg.AuthRequestTTL = 10 * time.Minute
	}
	if cfg.DatabaseTimeout <= 0 {
		cfg.DatabaseTimeout = DefaultDatabaseTimeout
	}
	if cfg.HousekeepInterval <= 0 {
		cfg.HousekeepInterval = DefaultHousekeepInterval
	}
	if cfg.KeyAlgorithm == "" {
		cfg.KeyAlgorithm = "RS256"
	}
	cfg.Backchannel.setDefaults()
	cfg.SSF.setDefaults()
	cfg.Login = cfg.Login.WithDefaults()
	if cfg.Session.ReplicaID == "" {
		cfg.Session.ReplicaID = replicaName()
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: cfg.Backchannel.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	issuer, err := url.Parse(cfg.Issuer)
	if err != nil || issuer.Host == "" {
		return nil, fmt.Errorf("issuer %q is not an absolute URL", cfg.Issuer)
	}
	p := &Provider{cfg: cfg, store: store, clients: make(map[string]*Client), secure: issuer.Scheme == "https",
		wake: make(chan struct{}, 1), verified: newVerifiedCache(200_000, cfg.Now)}
	for _, c := range cfg.Clients {
		if c.IDTokenTTL == 0 {
			c.IDTokenTTL = cfg.IDTokenTTL
		}
		p.clients[c.ID] = c
		if c.BackchannelLogoutURI != "" && !slices.Contains(p.backchannelURIs, c.BackchannelLogoutURI) {
			p.backchannelURIs = append(p.backchannelURIs, c.BackchannelLogoutURI)
		}
	}
	slices.Sort(p.backchannelURIs)
	p.outbox = newDispatcher(p, queue[session.OutboxEntry](logoutQueue{p}))
	p.pushes = newDispatcher(p, queue[session.Signal](pushQueue{p}))
	p.signals = newSignalHub()
	p.receivers = signalReceivers(cfg.Clients)

	if p.keys, err = LoadKeys(ctx, store, KeysConfigOf(cfg)); err != nil {
		return nil, err
	}
	mac, err := store.Secret(ctx, "refresh_mac", randomBytes(32))
	if err != nil {
		return nil, err
	}
	p.refresh = refreshMAC(mac)
	sealed, err := cookieCodec(ctx, store, "cookie")
	if err != nil {
		return nil, err
	}
	p.cookies, p.tickets = sealed(), sealed().MaxAge(600)
	// Device cookies have keys of their own (they live for months).
	device, err := cookieCodec(ctx, store, "device_cookie")
	if err != nil {
		return nil, err
	}
	p.devices = device().MaxAge(int(deviceCookieTTL / time.Second))
	throttleKey, err := store.Secret(ctx, "login_throttle", randomBytes(32))
	if err != nil {
		return nil, err
	}
	p.limiter = newLoginLimiter(store, cfg.Login, cfg.Now, throttleKey)
	if p.cfg.MFA.Mode == "" {
		p.cfg.MFA.Mode = MFAWhenRequired
	}
	if p.factors, err = mfa.NewFactors(ctx, store, cfg.MFA.SecretKey, mfa.IssuerLabel(cfg.Issuer), cfg.Now); err != nil {
		return nil, fmt.Errorf("keys.secret_key: %w", err)
	}
	if p.passkeys, err = mfa.NewPasskeys(cfg.Issuer, store, cfg.Now); err != nil {
		cfg.Logger.WarnContext(ctx, "passkeys are off", "reason", err)
	}
	cryptoKey, err := store.Secret(ctx, "token_crypto", randomBytes(32))
	if err != nil {
		return nil, err
	}
	if err := p.loadRevoked(ctx); err != nil {
		return nil, err
	}

	sess := cfg.Session
	sess.Now = cfg.Now
	sess.Logger = cfg.Logger
	sess.Client = func(id string) (activity.ClientPolicy, bool) {
		c, ok := p.clients[id]
		if !ok {
			return activity.ClientPolicy{}, false
		}
		pol := c.Policy
		pol.SignalReceivers = p.receivers[id]
		return pol, true
	}
	sess.OnEnd = p.signalled
	sess.OnRevoke = func(id string) { p.revoked.Store(id, struct{}{}) }
	for id := range p.clients {
		sess.Clients = append(sess.Clients, id)
	}
	p.tracker = activity.New(sess, store)

	if p.pages, err = templates.Parse(); err != nil {
		return nil, err
	}

	opCfg := &op.Config{
		CryptoKey:                         [32]byte(cryptoKey),
		DefaultLogoutRedirectURI:          "/logged-out",
		CodeMethodS256:                    true,
		AuthMethodPost:                    true,
		GrantTypeRefreshToken:             true,
		SupportedScopes:                   DefaultScopes,
		BackChannelLogoutSupported:        true,
		BackChannelLogoutSessionSupported: true,
	}
	opts := []op.Option{
		op.WithCrypto(op.NewAES256GCMCrypto([32]byte(cryptoKey), "1")),
		op.WithAccessTokenKeySet(p.keys),
		op.WithIDTokenHintKeySet(idTokenKeys{p.keys}),
	}
	if issuer.Scheme == "http" {
		opts = append(opts, op.WithAllowInsecure())
	}
	p.op, err = op.NewProvider(opCfg, storage{p}, op.StaticIssuer(strings.TrimSuffix(cfg.Issuer, "/")), opts...)
	if err != nil {
		return nil, fmt.Errorf("create provider: %w", err)
	}
	p.handler = p.routes()
	return p, nil
}

// Tracker returns the activity tracker (for the CLI and tests).
func (p *Provider) Tracker() *activity.Tracker { return p.tracker }

// Keys returns the signing keys.
func (p *Provider) Keys() *Keys { return p.keys }

func (p *Provider) now() time.Time { return p.cfg.Now() }

func (p *Provider) issuer() string { return strings.TrimSuffix(p.cfg.Issuer, "/") }

func (p *Provider) loginURL(id string) string { return "/login?authRequestID=" + url.QueryEscape(id) }

// ServeHTTP serves every endpoint.
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.handler.ServeHTTP(w, r) }

// routes registers every route in one place.
func (p *Provider) routes() http.Handler {
	endpoints := *op.DefaultEndpoints
	endpoints.DeviceAuthorization = nil // the device flow is not offered
	srv := &server{LegacyServer: op.NewLegacyServer(p.op, endpoints), p: p}
	protocol := op.RegisterLegacyServer(srv, p.authorizeCallback,
		op.WithServerCORSOptions(&cors.Options{
			AllowOriginFunc: func(string) bool { return true },
			AllowedHeaders:  []string{"Authorization", "Content-Type", "Accept"},
			AllowedMethods:  []string{http.MethodGet, http.MethodPost},
		}))

	mux := http.NewServeMux()
	page := func(h http.HandlerFunc) http.Handler { return p.browserPage(h) }
	mux.Handle("GET /login", page(p.loginPage))
	mux.Handle("POST /login", page(p.loginSubmit))
	mux.Handle("GET /login/factor", page(p.factorPage))
	mux.Handle("POST /login/factor", page(p.factorSubmit))
	mux.Handle("POST /login/enroll", page(p.enrollSubmit))
	mux.Handle("GET /account", page(p.accountPage))
	mux.Handle("POST /account/confirm", page(p.accountConfirm))
	mux.Handle("POST /account/confirm/passkey", page(p.accountConfirmPasskey))
	mux.Handle("POST /account/totp", page(p.accountTOTPStart))
	mux.Handle("POST /account/totp/confirm", page(p.accountTOTPConfirm))
	mux.Handle("POST /account/passkeys/delete", page(p.accountPasskeyDelete))
	mux.Handle("POST /account/passkeys", page(p.accountPasskeyAdd))
	mux.Handle("POST /login/passkey", page(p.loginPasskey))
	mux.HandleFunc("POST /passkey/begin", p.passkeyBegin)
	mux.HandleFunc("POST /activity", p.bearerCORS(p.postActivity))
	mux.HandleFunc("GET /session", p.bearerCORS(p.getSession))
	mux.HandleFunc("POST /activity/batch", p.activityBatch)
	mux.Handle("/activity/batch", postOnly(http.NotFoundHandler())) // no browser calls it: no preflight
	mux.HandleFunc("/forward-auth", p.forwardAuth)                  // any method: gateways forward the API call's
	mux.HandleFunc("OPTIONS /activity", p.preflight)
	mux.HandleFunc("OPTIONS /session", p.preflight)
	mux.Handle("GET /logged-out", page(p.loggedOut))
	mux.Handle("GET /logout/confirm", page(p.logoutConfirm))
	mux.Handle("POST /logout/confirm", page(p.logoutConfirmed))
	mux.HandleFunc("GET /admin/sessions", p.admin(p.adminListSessions))
	mux.HandleFunc("POST /admin/sessions/{sid}/end", p.admin(p.adminEndSession))
	mux.HandleFunc("POST /admin/users/{user}/sessions/end", p.admin(p.adminEndUserSessions))
	mux.HandleFunc("GET /admin/audit", p.admin(p.adminAudit))
	mux.HandleFunc("GET /admin/deliveries", p.admin(p.adminDeliveries))
	mux.HandleFunc("GET /metrics", p.admin(p.metricsHandler().ServeHTTP))
	mux.Handle("GET /static/", http.StripPrefix("/static/", static.Handler()))
	mux.HandleFunc("GET /.well-known/ssf-configuration", p.ssfConfiguration)
	mux.HandleFunc("POST /ssf/streams", p.receiverAPI(p.createStream))
	mux.HandleFunc("GET /ssf/streams", p.receiverAPI(p.readStreams))
	mux.HandleFunc("PATCH /ssf/streams", p.receiverAPI(p.changeStream))
	mux.HandleFunc("PUT /ssf/streams", p.receiverAPI(p.changeStream))
	mux.HandleFunc("DELETE /ssf/streams", p.receiverAPI(p.deleteStream))
	mux.HandleFunc("GET /ssf/status", p.receiverAPI(p.readStatus))
	mux.HandleFunc("POST /ssf/status", p.receiverAPI(p.updateStatus))
	mux.HandleFunc("POST /ssf/verify", p.receiverAPI(p.verifyStream))
	mux.HandleFunc("POST /ssf/poll/{stream}", p.receiverAPI(p.poll))
	protocol = p.hideInternalErrors(protocol)
	mux.Handle("/authorize", p.browserPage(p.boundAuthorize(p.authorizeErrorPage(protocol))))
	mux.Handle("/authorize/callback", p.browserPage(protocol))
	mux.Handle("POST /oauth/token", credentialEndpoint(invalidClient401(protocol)))
	mux.Handle("POST /oauth/introspect", credentialEndpoint(requireClientAuth(invalidClient401(protocol))))
	mux.Handle("POST /revoke", credentialEndpoint(invalidClient401(protocol)))
	for _, path := range []string{"/oauth/token", "/oauth/introspect", "/revoke"} {
		mux.Handle(path, postOnly(protocol))
	}
	mux.Handle("/userinfo", p.userinfoEdge(protocol))
	endSession := p.browserPage(p.errorPage("Sign-out request refused", "The application sent an invalid sign-out request.", protocol))
	mux.Handle("GET /end_session", endSession)
	mux.Handle("POST /end_session", endSession)
	mux.Handle("/", protocol)
	return p.edge(mux)
}

// Run starts the sweeper, the activity flusher, the back-channel delivery
// worker and housekeeping; Close stops them.
func (p *Provider) Run(ctx context.Context) {
	ctx, p.runCancel = context.WithCancel(ctx)
	p.tracker.Run(ctx)
	// The tracker now follows the change feed from its end; a revocation
	// at another replica since New loaded them is in the store.
	if err := p.loadRevoked(ctx); err != nil {
		p.cfg.Logger.ErrorContext(ctx, "load revoked tokens", "error", err)
	}
	p.running.Add(3)
	go func() { defer p.running.Done(); p.deliveryLoop(ctx) }()
	go func() { defer p.running.Done(); p.housekeeping(ctx) }()
	go func() { defer p.running.Done(); p.signalLoop(ctx) }()
}

// Close stops background work and flushes unwritten activity.
func (p *Provider) Close(ctx context.Context) error {
	p.signals.close()
	if p.runCancel != nil {
		p.runCancel()
	}
	p.running.Wait()
	return p.tracker.Close(ctx)
}

func (p *Provider) housekeeping(ctx context.Context) {
	tick := time.NewTicker(p.cfg.HousekeepInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := p.keys.Reload(ctx); err != nil {
				p.cfg.Logger.ErrorContext(ctx, "reload keys", "error", err)
			}
			if err := p.purge(ctx); err != nil {
				p.cfg.Logger.ErrorContext(ctx, "purge", "error", err)
			}
		}
	}
}

// purge drops what can no longer matter: expired authorization requests,
// revocations of tokens that have expired anyway (memory and database), and
// finished outbox rows older than Backchannel.Retention. It also re-reads
// the revocations on record: a backstop to the change feed, which brings
// another replica's revocation within one sync interval.
func (p *Provider) purge(ctx context.Context) error {
	now := p.now()
	if err := p.store.PurgeAuthRequests(ctx, now); err != nil {
		return err
	}
	p.revoked.Range(func(k, _ any) bool {
		if id, err := parseTokenID(k.(string)); err != nil || now.After(id.expires) {
			p.revoked.Delete(k)
		}
		return true
	})
	if _, err := p.store.PurgeRevokedTokens(ctx, now); err != nil {
		return err
	}
	if err := p.loadRevoked(ctx); err != nil {
		return err
	}
	if _, err := p.store.PurgeDeliveries(ctx, now.Add(-p.cfg.Backchannel.Retention)); err != nil {
		return err
	}
	n, err := p.store.PurgeSignals(ctx, now.Add(-p.cfg.Backchannel.RetryFor))
	if err != nil {
		return err
	}
	if n > 0 {
		p.cfg.Logger.WarnContext(ctx, "signals nobody collected within backchannel.retry_for were dropped", "count", n)
	}
	if err := p.store.PurgeCeremonies(ctx, now); err != nil {
		return err
	}
	return p.limiter.purge(ctx)
}

// loadRevoked reads the revocations of unexpired access tokens into memory,
// where every use of a token checks them.
func (p *Provider) loadRevoked(ctx context.Context) error {
	revoked, err := p.store.RevokedTokens(ctx, p.now())
	if err != nil {
		return fmt.Errorf("load revoked tokens: %w", err)
	}
	for _, id := range revoked {
		p.revoked.Store(id, struct{}{})
	}
	return nil
}

// revokeTokenID revokes an access token here at once, and at every other
// replica through the change feed (within one sync interval).
func (p *Provider) revokeTokenID(ctx context.Context, id string, exp time.Time) error {
	if err := p.store.RevokeToken(ctx, id, exp); err != nil {
		return err
	}
	p.revoked.Store(id, struct{}{})
	return nil
}

// Token errors, mapped to 401 / {"active":false} at the edge.
var (
	errTokenInvalid = errors.New("access token is invalid")
	errTokenExpired = errors.New("access token has expired")
	errTokenRevoked = errors.New("access token was revoked")
)

// useToken checks a person's access token id against the clock and the
// session, recording activity from src where the token's client counts it.
func (p *Provider) useToken(ctx context.Context, tokenID string, src activity.Source, at time.Time) (activity.Status, error) {
	return p.useTokenFor(ctx, tokenID, src, at, nil)
}

// useTokenFor is useToken for a use that only the tokens of some clients may
// make (accept; nil: any): the activity is recorded only for those, and the
// caller refuses the others by the returned status's ClientID.
func (p *Provider) useTokenFor(ctx context.Context, tokenID string, src activity.Source, at time.Time,
	accept func(clientID string) bool) (activity.Status, error) {
	id, err := parseTokenID(tokenID)
	if err != nil || id.appSessionID == "" {
		return activity.Status{}, errTokenInvalid
	}
	if _, revoked := p.revoked.Load(tokenID); revoked {
		return activity.Status{}, errTokenRevoked
	}
	if !p.now().Before(id.expires) {
		return activity.Status{}, errTokenExpired
	}
	st, err := p.tracker.TouchFor(ctx, id.appSessionID, src, at, accept)
	if err != nil {
		if errors.Is(err, session.ErrNotFound) {
			return activity.Status{}, errTokenInvalid
		}
		return activity.Status{}, err
	}
	if !st.Active {
		return st, &activity.SessionOverError{Reason: st.EndReason}
	}
	return st, nil
}

// introspection is the RFC 7662 answer, flat so that it is encoded once.
type introspection struct {
	Active    bool     `json:"active"`
	Scope     string   `json:"scope,omitempty"`
	ClientID  string   `json:"client_id,omitempty"`
	TokenType string   `json:"token_type,omitempty"`
	Exp       int64    `json:"exp,omitempty"`
	AuthTime  int64    `json:"auth_time,omitempty"`
	Subject   string   `json:"sub,omitempty"`
	Audience  []string `json:"aud,omitempty"`
	Issuer    string   `json:"iss,omitempty"`
	SID       string   `json:"sid,omitempty"`
}

// introspect answers RFC 7662 for a token id, counting introspection
// activity for a person's token.
func (p *Provider) introspect(ctx context.Context, tokenID string) (introspection, error) {
	id, err := parseTokenID(tokenID)
	if err != nil {
		return introspection{}, errTokenInvalid
	}
	if id.appSessionID == "" {
		if _, revoked := p.revoked.Load(tokenID); revoked || !p.now().Before(id.expires) {
			return introspection{}, errTokenExpired
		}
		if _, ok := p.clients[id.clientID]; !ok {
			return introspection{}, errTokenInvalid
		}
		return introspection{ClientID: id.clientID, Subject: id.clientID, Audience: []string{id.clientID},
			Exp: id.expires.Unix(), TokenType: zoidc.BearerToken, Issuer: p.issuer()}, nil
	}
	st, err := p.useToken(ctx, tokenID, activity.Introspection, time.Time{})
	if err != nil {
		return introspection{}, err
	}
	return introspection{Scope: strings.Join(st.Scopes, " "), ClientID: st.ClientID, Subject: st.UserID,
		Audience: []string{st.ClientID}, Exp: id.expires.Unix(), AuthTime: st.AuthTime.Unix(),
		TokenType: zoidc.BearerToken, Issuer: p.issuer(), SID: st.SID}, nil
}
