package main

import (
	"bytes"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"gopkg.in/yaml.v3"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/session"
)

// demoConfig is the configuration `serve` uses when it is given no --config:
// a provider on localhost with the three demo apps registered. It doubles as
// the annotated reference of the file format.
//
//go:embed demo.yaml
var demoConfig []byte

// Config is the configuration file of idleguard, one YAML document. The
// field comments give the YAML names; demo.yaml is an annotated example.
//
// String values may refer to environment variables as ${NAME}; this is how
// secrets are kept out of the file. The reference is replaced after parsing,
// so a value can never change the structure of the document. A reference to
// an unset variable is an error; a variable set to "" expands to "".
type Config struct {
	// Issuer is the provider's URL, exactly as it appears in the iss claim:
	// https, or http for localhost and loopback addresses only.
	Issuer string `yaml:"issuer"`
	Listen string `yaml:"listen"` // host:port to serve on
	// Database is the path of a SQLite file, or a postgres:// (or
	// postgresql://) URL of a PostgreSQL database shared by replicas.
	Database string `yaml:"database"`
	// TrustedProxies are the CIDRs (or single addresses) of the reverse
	// proxies in front of the provider: only a request from one of them has
	// its X-Forwarded-For or Forwarded header believed, to find the client
	// address that sign-in throttling and the audit trail use. Empty (the
	// default): the peer's address is the client's.
	TrustedProxies []string `yaml:"trusted_proxies"`

	Session     SessionConfig     `yaml:"session"`
	Keys        KeysConfig        `yaml:"keys"`
	Tokens      TokensConfig      `yaml:"tokens"`
	Admin       AdminConfig       `yaml:"admin"`
	Backchannel BackchannelConfig `yaml:"backchannel"`
	SSF         SSFConfig         `yaml:"ssf"`
	Login       LoginConfig       `yaml:"login"`
	Log         LogConfig         `yaml:"log"`
	Clients     []ClientConfig    `yaml:"clients"`

	// problems found while decoding and expanding, reported by Validate
	// together with everything else; badPaths are the fields they name, so
	// that Validate does not complain about them twice.
	problems []string
	badPaths map[string]bool
}

// SessionConfig is the idle model's provider-wide part (see
// docs/idle-model.md, "The limit: the strictest app wins").
type SessionConfig struct {
	IdleTimeout   Duration `yaml:"idle_timeout"`   // ceiling of every session's idle limit; required
	MaxLifetime   Duration `yaml:"max_lifetime"`   // absolute limit from sign-in; required, >= idle_timeout
	SweepInterval Duration `yaml:"sweep_interval"` // how late, at most, an expired session is ended; default 1s
	FlushInterval Duration `yaml:"flush_interval"` // how often coalesced activity is written; default 1s
	// Replicas is how many providers share the database; above 1 the
	// activity tracker keeps replicas in step (see README, "Running several
	// replicas"). Default 1.
	Replicas     int      `yaml:"replicas"`
	SyncInterval Duration `yaml:"sync_interval"` // how often a replica polls the change feed; default 250ms
	// DatabaseTimeout bounds how long a request waits on the database before
	// it answers 503; default 5s.
	DatabaseTimeout Duration `yaml:"database_timeout"`
}

// KeysConfig chooses the signing keys.
type KeysConfig struct {
	Algorithm string `yaml:"algorithm"` // one of oidc.SupportedAlgorithms; default RS256
	// SecretKey (32 bytes as 64 hex characters; give it as ${VAR}) seals
	// TOTP secrets and keys recovery code hashes, so that a copy of the
	// database alone reveals neither. Optional; keep it: secrets sealed
	// with it cannot be read without it.
	SecretKey string `yaml:"secret_key"`
}

// TokensConfig holds provider-wide token lifetimes. Access token lifetimes
// are per client.
type TokensConfig struct {
	IDTokenTTL Duration `yaml:"id_token_ttl"` // default 10m
}

// AdminConfig configures the /admin API.
type AdminConfig struct {
	// Token is the bearer token of the admin API; empty disables the API.
	// Give it from the environment (${NAME}), never literally in the file.
	Token string `yaml:"token"`
}

// SSFConfig tunes the Shared Signals transmitter; see oidc.SSFConfig.
type SSFConfig struct {
	MaxStreams           int      `yaml:"max_streams"`           // per receiver; default 5
	PollWait             Duration `yaml:"poll_wait"`             // longest a long poll is held; default 20s
	VerificationInterval Duration `yaml:"verification_interval"` // min_verification_interval; default 10s
}

// serverWriteTimeout is the HTTP server's WriteTimeout: a long poll must
// answer before it.
const serverWriteTimeout = 30 * time.Second

// BackchannelConfig tunes back-channel logout delivery; see
// oidc.BackchannelConfig.
type BackchannelConfig struct {
	Timeout        Duration `yaml:"timeout"`         // one POST; default 5s
	Concurrency    int      `yaml:"concurrency"`     // deliveries in flight in one process; default 8
	PerDestination int      `yaml:"per_destination"` // deliveries in flight to one backchannel_logout_uri; default 2
	Retention      Duration `yaml:"retention"`       // keep delivered and abandoned rows this long; default 168h
	RetryFor       Duration `yaml:"retry_for"`       // abandon a delivery after this long; default 24h
	InitialBackoff Duration `yaml:"initial_backoff"` // first retry delay, then doubled; default 1s
	MaxBackoff     Duration `yaml:"max_backoff"`     // default 5m
	PollInterval   Duration `yaml:"poll_interval"`   // outbox poll when nothing woke the worker; default 1s
}

// LoginConfig tunes the defence against password guessing; see
// oidc.LoginConfig.
type LoginConfig struct {
	// MFA is when a second factor is asked: when_required (default: only
	// for apps that require or ask for it), always (at every sign-in of a
	// person who has one), required (and a person without one enrolls one
	// at the next sign-in).
	MFA         string   `yaml:"mfa"`
	MaxFailures int      `yaml:"max_failures"` // default 5
	LockoutBase Duration `yaml:"lockout_base"` // default 1s
	LockoutMax  Duration `yaml:"lockout_max"`  // default 15m
}

// LogConfig chooses how the provider logs. Every line logged while serving
// a request carries its request_id (the X-Request-Id response header).
type LogConfig struct {
	Format string `yaml:"format"` // text (default, logfmt) or json
	Level  string `yaml:"level"`  // debug, info (default), warn or error
}

// logLevels are the accepted log.level values.
var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// ClientConfig registers one relying party.
type ClientConfig struct {
	ID string `yaml:"client_id"`
	// Secret is required for client_secret_basic and client_secret_post, and
	// forbidden for public clients (none). Give it from the environment.
	Secret string `yaml:"client_secret"`
	// AuthMethod is client_secret_basic (default), client_secret_post, or
	// none for a public client, which must use PKCE.
	AuthMethod             string   `yaml:"token_endpoint_auth_method"`
	RedirectURIs           []string `yaml:"redirect_uris"`
	PostLogoutRedirectURIs []string `yaml:"post_logout_redirect_uris"`
	BackchannelLogoutURI   string   `yaml:"backchannel_logout_uri"`
	FrontchannelLogoutURI  string   `yaml:"frontchannel_logout_uri"`
	// WebOrigins are the origins (scheme://host[:port]) allowed to call the
	// provider from a browser (CORS) on behalf of this client.
	WebOrigins []string `yaml:"web_origins"`
	// GrantTypes default to authorization_code and refresh_token;
	// client_credentials is for confidential clients only.
	GrantTypes []string `yaml:"grant_types"`
	// Scopes the client may be granted. Default: openid, profile, email,
	// offline_access. A sign-in gets those it asks for and may have, the
	// others left out; client_credentials gets the client's own (non-OpenID)
	// scopes it asks for, and invalid_scope for any it may not have.
	Scopes []string `yaml:"scopes"`

	// IdleTimeout is this app's tolerance for inactivity; it pulls the
	// session's shared limit down unless IdleExempt. 0: none of its own.
	IdleTimeout Duration `yaml:"idle_timeout"`
	// AppIdleTimeout ends this app alone after it has seen no activity for
	// this long, even while the person is active elsewhere. 0: off.
	AppIdleTimeout Duration `yaml:"app_idle_timeout"`
	// IdleExempt apps do not pull the shared limit down and survive the end
	// of the session by idle; they need their own IdleTimeout.
	IdleExempt bool `yaml:"idle_exempt"`
	// AccessTokenTTL defaults to 5m, or to the client's idle limit if that
	// is shorter; it may not exceed that limit.
	AccessTokenTTL    Duration `yaml:"access_token_ttl"`
	AccessTokenFormat string   `yaml:"access_token_format"` // jwt (default, RFC 9068) or opaque
	// Activity lists the sources that count as the person being there; see
	// activity.ParseSources. Absent: all but refresh. login is always on.
	Activity []string `yaml:"activity"`

	// ResourceServer marks a client that stands for APIs: it reports the
	// calls its APIs validated themselves (POST /activity/batch) for the
	// apps it Serves. It needs a client secret.
	ResourceServer bool `yaml:"resource_server"`
	// Serves lists the client ids whose tokens its APIs accept. Absent: its
	// own id.
	Serves []string `yaml:"serves"`

	// RequireMFA: signing in to this app, or arriving by SSO, needs a
	// second factor in the session (asked by step-up when missing).
	RequireMFA bool `yaml:"require_mfa"`
	// RequirePhishingResistant: this app needs a passkey in the session.
	RequirePhishingResistant bool `yaml:"require_phishing_resistant"`
}

// Duration is a time.Duration written as a Go duration string ("90s", "5m",
// "1h30m"); a bare 0 means zero ("off" or "default", depending on the field).
type Duration time.Duration

// UnmarshalYAML parses a duration. A bad value is reported as a type error,
// which lets decoding go on so that every problem is reported at once.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		v, err := time.ParseDuration(n.Value)
		if err == nil {
			*d = Duration(v)
			return nil
		}
	}
	value := n.Value
	if n.Kind != yaml.ScalarNode {
		value = "a " + strings.TrimPrefix(n.ShortTag(), "!!")
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d column %d: %q is not a duration (write it like 90s, 5m or 1h30m)",
		n.Line, n.Column, value)}}
}

// String formats the duration like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// ConfigError lists every problem of a configuration, one per line, each
// starting with the path of the field it is about.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	noun := "problems"
	if len(e.Problems) == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("invalid configuration, %d %s:\n\t%s", len(e.Problems), noun, strings.Join(e.Problems, "\n\t"))
}

// LoadConfig reads, parses and validates the configuration file at path.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses a configuration document, expands ${NAME} references to
// environment variables, sets defaults and validates it. Every problem is
// reported at once, in a *ConfigError; only YAML that cannot be parsed at all
// fails early.
func ParseConfig(data []byte) (*Config, error) {
	// The node tree only serves to name fields in the decoder's errors,
	// which carry line numbers.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("parse config: %w", err)
	}
	paths := newFieldPaths(&root)

	c := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	err := dec.Decode(c)
	var typeErr *yaml.TypeError
	switch {
	case err == nil, errors.Is(err, io.EOF):
	case errors.As(err, &typeErr):
		for _, msg := range typeErr.Errors {
			path, problem := paths.locate(msg)
			c.addProblem(path, problem)
			if parent := parentPath(path); parent != "" && strings.HasPrefix(problem, "mapping key ") {
				// The decoder drops a mapping with a duplicate key: do not
				// also report its fields as missing.
				c.badPaths[parent] = true
			}
		}
	default:
		return nil, fmt.Errorf("parse config: %w", err)
	}
	if err == nil {
		var extra yaml.Node
		if dec.Decode(&extra) == nil {
			c.addProblem("", "the file holds more than one YAML document")
		}
	}

	expandEnv(reflect.ValueOf(c).Elem(), "", os.LookupEnv, c.addProblem)
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) addProblem(path, problem string) {
	if path == "" {
		c.problems = append(c.problems, problem)
		return
	}
	if c.badPaths == nil {
		c.badPaths = make(map[string]bool)
	}
	c.badPaths[path] = true
	c.problems = append(c.problems, path+": "+problem)
}

// Defaults of the fields that have one.
const (
	defaultAccessTokenTTL = 5 * time.Minute
	defaultAccessFormat   = "jwt"
	defaultAuthMethod     = zoidc.AuthMethodBasic
	minSecretLength       = 16
)

// setDefaults fills in every field that has a default. It is the one place
// defaults are set; a zero value means "not given". Negative values are left
// for Validate to report.
func (c *Config) setDefaults() {
	setDuration := func(d *Duration, def time.Duration) {
		if *d == 0 {
			*d = Duration(def)
		}
	}
	setDuration(&c.Session.SweepInterval, activity.DefaultSweepInterval)
	setDuration(&c.Session.FlushInterval, activity.DefaultFlushInterval)
	setDuration(&c.Session.SyncInterval, activity.DefaultSyncInterval)
	setDuration(&c.Session.DatabaseTimeout, oidc.DefaultDatabaseTimeout)
	if c.Session.Replicas == 0 {
		c.Session.Replicas = 1
	}
	if c.Login.MFA == "" {
		c.Login.MFA = string(oidc.MFAWhenRequired)
	}
	if c.Keys.Algorithm == "" {
		c.Keys.Algorithm = oidc.DefaultAlgorithm
	}
	setDuration(&c.Tokens.IDTokenTTL, oidc.DefaultIDTokenTTL)

	bc := oidc.DefaultBackchannel
	setDuration(&c.Backchannel.Timeout, bc.Timeout)
	if c.Backchannel.Concurrency == 0 {
		c.Backchannel.Concurrency = bc.Concurrency
	}
	if c.Backchannel.PerDestination == 0 {
		c.Backchannel.PerDestination = bc.PerDestination
	}
	setDuration(&c.Backchannel.Retention, bc.Retention)
	setDuration(&c.Backchannel.RetryFor, bc.RetryFor)
	setDuration(&c.Backchannel.InitialBackoff, bc.InitialBackoff)
	setDuration(&c.Backchannel.MaxBackoff, bc.MaxBackoff)
	setDuration(&c.Backchannel.PollInterval, bc.PollInterval)
	if c.SSF.MaxStreams == 0 {
		c.SSF.MaxStreams = oidc.DefaultSSF.MaxStreams
	}
	setDuration(&c.SSF.PollWait, oidc.DefaultSSF.PollWait)
	setDuration(&c.SSF.VerificationInterval, oidc.DefaultSSF.VerificationInterval)

	lp := session.DefaultLoginPolicy
	if c.Login.MaxFailures == 0 {
		c.Login.MaxFailures = lp.MaxFailures
	}
	setDuration(&c.Login.LockoutBase, lp.LockoutBase)
	setDuration(&c.Login.LockoutMax, lp.LockoutMax)
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}

	for i := range c.Clients {
		cl := &c.Clients[i]
		if cl.AuthMethod == "" {
			// RFC 7591's default. Never inferred from a missing secret: a
			// confidential client whose secret variable is empty must fail,
			// not silently become public.
			cl.AuthMethod = string(defaultAuthMethod)
		}
		if len(cl.GrantTypes) == 0 {
			cl.GrantTypes = []string{string(zoidc.GrantTypeCode), string(zoidc.GrantTypeRefreshToken)}
		}
		if cl.Scopes == nil {
			cl.Scopes = slices.Clone(oidc.DefaultScopes)
		}
		if cl.AccessTokenFormat == "" {
			cl.AccessTokenFormat = defaultAccessFormat
		}
		if cl.Activity == nil { // an explicit empty list means login only
			cl.Activity = strings.Split(activity.DefaultSources.String(), ",")
		}
		if cl.AccessTokenTTL == 0 {
			ttl := defaultAccessTokenTTL
			if limit, _ := c.tokenLimit(cl); limit > 0 && limit < ttl {
				ttl = limit
			}
			cl.AccessTokenTTL = Duration(ttl)
		}
	}
}

// tokenLimit is the longest an access token of cl may live: its own
// idle_timeout if it is exempt, else the strictest of its idle_timeout and
// the provider's. what names the limit for error messages.
func (c *Config) tokenLimit(cl *ClientConfig) (limit time.Duration, what string) {
	own, provider := time.Duration(cl.IdleTimeout), time.Duration(c.Session.IdleTimeout)
	switch {
	case cl.IdleExempt:
		return own, "the client's idle_timeout"
	case own > 0 && (provider <= 0 || own <= provider):
		return own, "the client's idle_timeout"
	default:
		return provider, "session.idle_timeout"
	}
}

// check is one row of a validation table: when bad, the field at path has
// the problem msg.
type check struct {
	bad  bool
	path string
	msg  string
}

// Validate checks the whole configuration and returns a *ConfigError listing
// every problem, or nil. It includes the problems found while decoding
// (unknown fields, bad durations, unset environment variables). Call it after
// setDefaults.
func (c *Config) Validate() error {
	problems := slices.Clone(c.problems)
	add := func(path, msg string) {
		for p := path; p != ""; p = parentPath(p) {
			if c.badPaths[p] {
				return // already reported while decoding
			}
		}
		problems = append(problems, path+": "+msg)
	}
	run := func(checks []check) {
		for _, ck := range checks {
			if ck.bad {
				add(ck.path, ck.msg)
			}
		}
	}

	s, bc, lg := c.Session, c.Backchannel, c.Login
	issuerMsg := ifSet(c.Issuer, func(v string) string { return urlProblem(v, issuerURL) })
	listenMsg := ifSet(c.Listen, listenProblem)
	databaseMsg := ifSet(c.Database, databaseProblem)
	_, knownLevel := logLevels[c.Log.Level]
	run([]check{
		{c.Issuer == "", "issuer", "is required: the provider's public URL, as in the iss claim"},
		{issuerMsg != "", "issuer", issuerMsg},
		{c.Listen == "", "listen", "is required: host:port to serve on, e.g. 127.0.0.1:8080"},
		{listenMsg != "", "listen", listenMsg},
		{c.Database == "", "database", "is required: path of the SQLite database file, or a postgres:// URL"},
		{databaseMsg != "", "database", databaseMsg},

		{s.IdleTimeout == 0, "session.idle_timeout", "is required: the longest anyone may be inactive before being signed out everywhere"},
		{s.IdleTimeout < 0, "session.idle_timeout", "must be positive"},
		{s.MaxLifetime == 0, "session.max_lifetime", "is required: the longest a sign-in lasts, active or not"},
		{s.MaxLifetime < 0, "session.max_lifetime", "must be positive"},
		{s.MaxLifetime > 0 && s.MaxLifetime < s.IdleTimeout, "session.max_lifetime",
			fmt.Sprintf("%s is shorter than session.idle_timeout (%s)", s.MaxLifetime, s.IdleTimeout)},
		{s.SweepInterval <= 0, "session.sweep_interval", "must be positive"},
		{s.FlushInterval <= 0, "session.flush_interval", "must be positive"},
		{s.Replicas < 0, "session.replicas", "must be 1 or more: how many providers share the database"},
		{s.SyncInterval <= 0, "session.sync_interval", "must be positive"},
		{s.DatabaseTimeout <= 0, "session.database_timeout", "must be positive: how long a request waits on the database before it answers 503"},

		{!slices.Contains(oidc.SupportedAlgorithms, c.Keys.Algorithm), "keys.algorithm",
			fmt.Sprintf("%q is not supported (want %s)", c.Keys.Algorithm, strings.Join(oidc.SupportedAlgorithms, ", "))},
		{c.Tokens.IDTokenTTL <= 0, "tokens.id_token_ttl", "must be positive"},
		{c.Admin.Token != "" && len(c.Admin.Token) < minSecretLength, "admin.token",
			fmt.Sprintf("is too short: use at least %d random characters", minSecretLength)},

		{bc.Timeout <= 0, "backchannel.timeout", "must be positive"},
		{bc.Concurrency <= 0, "backchannel.concurrency", "must be positive"},
		{bc.PerDestination <= 0, "backchannel.per_destination", "must be positive"},
		{bc.Retention <= 0, "backchannel.retention", "must be positive"},
		{bc.RetryFor <= 0, "backchannel.retry_for", "must be positive"},
		{bc.InitialBackoff <= 0, "backchannel.initial_backoff", "must be positive"},
		{bc.MaxBackoff < bc.InitialBackoff, "backchannel.max_backoff",
			fmt.Sprintf("%s is shorter than backchannel.initial_backoff (%s)", bc.MaxBackoff, bc.InitialBackoff)},
		{bc.PollInterval <= 0, "backchannel.poll_interval", "must be positive"},
		{c.SSF.MaxStreams <= 0, "ssf.max_streams", "must be positive"},
		{c.SSF.PollWait <= 0 || time.Duration(c.SSF.PollWait) >= serverWriteTimeout, "ssf.poll_wait",
			fmt.Sprintf("must be positive and below the server's write timeout (%s)", serverWriteTimeout)},
		{c.SSF.VerificationInterval <= 0, "ssf.verification_interval", "must be positive"},

		{!slices.Contains(oidc.MFAModes, oidc.MFAMode(lg.MFA)), "login.mfa", fmt.Sprintf("%q is not a mode (want when_required, always or required)", lg.MFA)},
		{c.Keys.SecretKey != "" && !isHexKey(c.Keys.SecretKey), "keys.secret_key", "must be 32 bytes written as 64 hexadecimal characters (openssl rand -hex 32)"},
		{lg.MaxFailures <= 0, "login.max_failures", "must be positive"},
		{lg.LockoutBase <= 0, "login.lockout_base", "must be positive"},
		{lg.LockoutMax < lg.LockoutBase, "login.lockout_max",
			fmt.Sprintf("%s is shorter than login.lockout_base (%s)", lg.LockoutMax, lg.LockoutBase)},

		{c.Log.Format != "text" && c.Log.Format != "json", "log.format", fmt.Sprintf("%q is not supported (want text or json)", c.Log.Format)},
		{!knownLevel, "log.level",
			fmt.Sprintf("%q is not a level (want debug, info, warn or error)", c.Log.Level)},
	})
	for i, v := range c.TrustedProxies {
		if _, msg := parseProxy(v); msg != "" {
			add(fmt.Sprintf("trusted_proxies[%d]", i), msg)
		}
	}

	firstUse := make(map[string]int)
	for i := range c.Clients {
		c.validateClient(i, firstUse, add, run)
	}
	for i := range c.Clients {
		c.validateServes(i, firstUse, add)
	}

	if len(problems) > 0 {
		return &ConfigError{Problems: problems}
	}
	return nil
}

func (c *Config) validateClient(i int, firstUse map[string]int, add func(path, msg string), run func([]check)) {
	cl := &c.Clients[i]
	p := func(field string) string { return fmt.Sprintf("clients[%d].%s", i, field) }

	if cl.ID != "" {
		if j, dup := firstUse[cl.ID]; dup {
			add(p("client_id"), fmt.Sprintf("%q is already used by clients[%d]", cl.ID, j))
		} else {
			firstUse[cl.ID] = i
		}
	}

	method := zoidc.AuthMethod(cl.AuthMethod)
	knownMethod := method == zoidc.AuthMethodBasic || method == zoidc.AuthMethodPost || method == zoidc.AuthMethodNone
	public := method == zoidc.AuthMethodNone
	hasCode := slices.Contains(cl.GrantTypes, string(zoidc.GrantTypeCode))
	own, provider := cl.IdleTimeout, c.Session.IdleTimeout
	limit, limitName := c.tokenLimit(cl)
	endpoint := func(v string) string { return urlProblem(v, endpointURL) }
	backMsg, frontMsg := ifSet(cl.BackchannelLogoutURI, endpoint), ifSet(cl.FrontchannelLogoutURI, endpoint)

	run([]check{
		{cl.ID == "", p("client_id"), "is required"},
		{strings.ContainsFunc(cl.ID, func(r rune) bool { return r <= ' ' || r == 0x7f }), p("client_id"),
			"must not contain spaces or control characters"},

		{!knownMethod, p("token_endpoint_auth_method"),
			fmt.Sprintf("%q is not supported (want client_secret_basic, client_secret_post or none)", cl.AuthMethod)},
		{knownMethod && !public && cl.Secret == "", p("client_secret"),
			fmt.Sprintf("is required for %s (or set token_endpoint_auth_method: none for a public client)", method)},
		{!public && cl.Secret != "" && len(cl.Secret) < minSecretLength, p("client_secret"),
			fmt.Sprintf("is too short: use at least %d random characters", minSecretLength)},
		{public && cl.Secret != "", p("client_secret"), "must not be set for a public client (token_endpoint_auth_method: none)"},

		{hasCode && len(cl.RedirectURIs) == 0, p("redirect_uris"), "at least one is required for authorization_code"},
		{backMsg != "", p("backchannel_logout_uri"), backMsg},
		{frontMsg != "", p("frontchannel_logout_uri"), frontMsg},

		{public && slices.Contains(cl.GrantTypes, string(zoidc.GrantTypeClientCredentials)), p("grant_types"),
			"client_credentials needs a confidential client (a client_secret)"},
		{slices.Contains(cl.GrantTypes, string(zoidc.GrantTypeRefreshToken)) && !hasCode, p("grant_types"),
			"refresh_token needs authorization_code"},
		{hasCode && !slices.Contains(cl.Scopes, zoidc.ScopeOpenID), p("scopes"),
			"must include openid for authorization_code: every sign-in is OpenID Connect"},
		{slices.Contains(cl.GrantTypes, string(zoidc.GrantTypeRefreshToken)) && !slices.Contains(cl.Scopes, zoidc.ScopeOfflineAccess), p("scopes"),
			"must include offline_access for the refresh_token grant (refresh tokens are issued only for it), or leave refresh_token out of grant_types"},

		{own < 0, p("idle_timeout"), "must not be negative (0: none of its own)"},
		{cl.IdleExempt && own == 0, p("idle_timeout"),
			"is required for an idle_exempt client: otherwise it would stay signed in until session.max_lifetime"},
		{!cl.IdleExempt && own > 0 && provider > 0 && own > provider, p("idle_timeout"),
			fmt.Sprintf("%s is above session.idle_timeout (%s), the ceiling of every non-exempt client, so it has no effect", own, provider)},
		{own > 0 && c.Session.MaxLifetime > 0 && own > c.Session.MaxLifetime, p("idle_timeout"),
			fmt.Sprintf("%s is above session.max_lifetime (%s)", own, c.Session.MaxLifetime)},

		{cl.AppIdleTimeout < 0, p("app_idle_timeout"), "must not be negative (0: off)"},
		{cl.IdleExempt && cl.AppIdleTimeout != 0, p("app_idle_timeout"),
			"has no meaning for an idle_exempt client, whose application session already ends by its own idle_timeout"},
		{!cl.IdleExempt && own > 0 && cl.AppIdleTimeout > own, p("app_idle_timeout"),
			fmt.Sprintf("%s is above the client's idle_timeout (%s)", cl.AppIdleTimeout, own)},

		{cl.AccessTokenTTL <= 0, p("access_token_ttl"), "must be positive"},
		{cl.AccessTokenTTL > 0 && limit > 0 && time.Duration(cl.AccessTokenTTL) > limit, p("access_token_ttl"),
			fmt.Sprintf("%s is above %s (%s): a token must not outlive the idle limit", cl.AccessTokenTTL, limitName, limit)},
		{cl.AccessTokenFormat != "jwt" && cl.AccessTokenFormat != "opaque", p("access_token_format"),
			fmt.Sprintf("%q is not supported (want jwt or opaque)", cl.AccessTokenFormat)},
	})

	for j, u := range cl.RedirectURIs {
		if msg := urlProblem(u, redirectURL); msg != "" {
			add(fmt.Sprintf("%s[%d]", p("redirect_uris"), j), msg)
		}
	}
	for j, u := range cl.PostLogoutRedirectURIs {
		if msg := urlProblem(u, redirectURL); msg != "" {
			add(fmt.Sprintf("%s[%d]", p("post_logout_redirect_uris"), j), msg)
		}
	}
	for j, o := range cl.WebOrigins {
		if msg := urlProblem(o, originURL); msg != "" {
			add(fmt.Sprintf("%s[%d]", p("web_origins"), j), msg)
		}
	}
	for j, g := range cl.GrantTypes {
		switch zoidc.GrantType(g) {
		case zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken, zoidc.GrantTypeClientCredentials:
		default:
			add(fmt.Sprintf("%s[%d]", p("grant_types"), j),
				fmt.Sprintf("%q is not supported (want authorization_code, refresh_token or client_credentials)", g))
		}
	}
	for j, sc := range cl.Scopes {
		if msg := scopeProblem(sc, cl.Scopes[:j]); msg != "" {
			add(fmt.Sprintf("%s[%d]", p("scopes"), j), msg)
		}
	}
	for j, name := range cl.Activity {
		if _, err := activity.ParseSources([]string{name}); err != nil {
			add(fmt.Sprintf("%s[%d]", p("activity"), j), err.Error())
		}
	}
}

// validateServes checks the resource server fields of client i against
// every configured client id (known).
func (c *Config) validateServes(i int, known map[string]int, add func(path, msg string)) {
	cl := &c.Clients[i]
	p := fmt.Sprintf("clients[%d].", i)
	switch {
	case cl.ResourceServer && cl.AuthMethod == string(zoidc.AuthMethodNone):
		add(p+"resource_server", "needs a confidential client (a client_secret): resource servers authenticate")
	case !cl.ResourceServer && cl.Serves != nil:
		add(p+"serves", "has no meaning without resource_server: true")
	}
	for j, id := range cl.Serves {
		path := fmt.Sprintf("%sserves[%d]", p, j)
		if _, ok := known[id]; !ok {
			add(path, fmt.Sprintf("%q is not a configured client_id", id))
		} else if slices.Contains(cl.Serves[:j], id) {
			add(path, fmt.Sprintf("%q is listed twice", id))
		}
	}
}

// databaseProblem checks a PostgreSQL URL (a file path is SQLite's and
// needs no check); the message never repeats the password.
//
// A server beyond this host must be given an explicit sslmode: libpq's
// default, prefer, falls back to plaintext and never verifies the server,
// so an attacker on the path could read every session and key.
func databaseProblem(v string) string {
	if !session.IsPostgresURL(v) {
		return ""
	}
	cfg, err := session.PostgresConfig(v)
	if err != nil {
		return "is not a usable PostgreSQL URL: " + err.Error()
	}
	u, _ := url.Parse(v) // PostgresConfig parsed it
	if u.Query().Has("sslmode") {
		return ""
	}
	host := cfg.ConnConfig.Host
	if strings.HasPrefix(host, "/") || oidc.IsLoopback(host) {
		return ""
	}
	return fmt.Sprintf("names the server %q without sslmode: add ?sslmode=verify-full (with sslrootcert if your CA is private), "+
		"or sslmode=disable only on a network you trust", host)
}

// scopeProblem returns what is wrong with scope sc of a client whose
// earlier scopes are before, or "".
func scopeProblem(sc string, before []string) string {
	// RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
	bad := func(r rune) bool { return r < 0x21 || r > 0x7e || r == '"' || r == '\\' }
	switch {
	case sc == "" || strings.ContainsFunc(sc, bad):
		return fmt.Sprintf("%q is not a scope: printable ASCII without spaces, quotes or backslashes (RFC 6749 section 3.3)", sc)
	case slices.Contains(before, sc):
		return fmt.Sprintf("%q is listed twice", sc)
	case sc == zoidc.ScopePhone || sc == zoidc.ScopeAddress:
		return fmt.Sprintf("%q is not supported: the provider issues %s, and scopes of your own", sc, strings.Join(oidc.DefaultScopes, ", "))
	}
	return ""
}

// ifSet returns problem(v), or "" when v is empty (absent is checked apart).
func ifSet(v string, problem func(string) string) string {
	if v == "" {
		return ""
	}
	return problem(v)
}

// urlKind says what a URL is for, and so which rules it must follow.
type urlKind int

const (
	issuerURL   urlKind = iota // no query, no fragment
	redirectURL                // browser is sent there: no fragment, https or loopback http
	endpointURL                // logout endpoints: no fragment, https or loopback http
	originURL                  // scheme://host[:port] only
)

// urlProblem returns what is wrong with raw as a URL of the given kind, or "".
// Plain http is accepted only for localhost and loopback addresses, where
// nobody else can read the traffic.
func urlProblem(raw string, kind urlKind) string {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Sprintf("%q is not a URL", raw)
	}
	switch {
	case u.Scheme == "" || u.Host == "":
		return fmt.Sprintf("%q is not an absolute URL", raw)
	case u.Scheme != "https" && u.Scheme != "http":
		return fmt.Sprintf("%q: scheme must be https", raw)
	case u.Scheme == "http" && !oidc.IsLoopback(u.Hostname()):
		return fmt.Sprintf("%q: plain http is allowed only for localhost and loopback addresses; use https", raw)
	case u.User != nil:
		return fmt.Sprintf("%q must not contain user info", raw)
	case u.Fragment != "" || strings.Contains(raw, "#"):
		return fmt.Sprintf("%q must not contain a fragment", raw)
	case kind == issuerURL && (u.RawQuery != "" || u.ForceQuery):
		return fmt.Sprintf("%q must not contain a query", raw)
	case kind == originURL && (u.Path != "" || u.RawQuery != "" || u.ForceQuery):
		return fmt.Sprintf("%q is not an origin: write scheme://host[:port], without a path", raw)
	}
	return ""
}

func listenProblem(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Sprintf("%q is not host:port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Sprintf("%q: port must be a number from 0 to 65535", addr)
	}
	return ""
}

// parseProxy reads one trusted_proxies entry: a CIDR, or one address.
func parseProxy(v string) (netip.Prefix, string) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		a, aerr := netip.ParseAddr(v)
		if aerr != nil {
			return netip.Prefix{}, fmt.Sprintf("%q is not a CIDR or an address (write 10.0.0.0/8, 2001:db8::/32 or 192.0.2.1)", v)
		}
		p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
	}
	if p.Bits() == 0 {
		return netip.Prefix{}, fmt.Sprintf("%q trusts every address: any client could then choose the address it is counted under", v)
	}
	return p.Masked(), ""
}

// Logger builds the provider's logger from log.format and log.level,
// writing to w; every record logged with a request's context carries its
// request_id.
func (c *Config) Logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: logLevels[c.Log.Level]}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if c.Log.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(oidc.LogHandler(h))
}

// ProviderConfig converts the configuration into the provider's. Secrets are
// hashed; Now, Logger and HTTPClient are left for the caller to set.
func (c *Config) ProviderConfig() (oidc.Config, error) {
	if err := c.Validate(); err != nil {
		return oidc.Config{}, err
	}
	d := func(v Duration) time.Duration { return time.Duration(v) }
	pc := oidc.Config{
		Issuer: c.Issuer,
		Session: activity.Config{
			IdleTimeout:   d(c.Session.IdleTimeout),
			MaxLifetime:   d(c.Session.MaxLifetime),
			SweepInterval: d(c.Session.SweepInterval),
			FlushInterval: d(c.Session.FlushInterval),
			Replicas:      c.Session.Replicas,
			SyncInterval:  d(c.Session.SyncInterval),
		},
		KeyAlgorithm:    c.Keys.Algorithm,
		IDTokenTTL:      d(c.Tokens.IDTokenTTL),
		DatabaseTimeout: d(c.Session.DatabaseTimeout),
		Backchannel: oidc.BackchannelConfig{
			Timeout:        d(c.Backchannel.Timeout),
			Concurrency:    c.Backchannel.Concurrency,
			PerDestination: c.Backchannel.PerDestination,
			Retention:      d(c.Backchannel.Retention),
			RetryFor:       d(c.Backchannel.RetryFor),
			InitialBackoff: d(c.Backchannel.InitialBackoff),
			MaxBackoff:     d(c.Backchannel.MaxBackoff),
			PollInterval:   d(c.Backchannel.PollInterval),
		},
		SSF: oidc.SSFConfig{MaxStreams: c.SSF.MaxStreams, PollWait: d(c.SSF.PollWait), VerificationInterval: d(c.SSF.VerificationInterval)},
		Login: oidc.LoginConfig{
			MaxFailures: c.Login.MaxFailures,
			LockoutBase: d(c.Login.LockoutBase),
			LockoutMax:  d(c.Login.LockoutMax),
		},
		MFA: oidc.MFAConfig{Mode: oidc.MFAMode(c.Login.MFA), SecretKey: c.secretKey()},
	}
	if c.Admin.Token != "" {
		pc.AdminTokenHash = oidc.HashSecret(c.Admin.Token)
	}
	for _, v := range c.TrustedProxies {
		p, _ := parseProxy(v) // validated above
		pc.TrustedProxies = append(pc.TrustedProxies, p)
	}
	for i := range c.Clients {
		cl := &c.Clients[i]
		sources, err := activity.ParseSources(cl.Activity)
		if err != nil {
			return oidc.Config{}, fmt.Errorf("clients[%d].activity: %w", i, err)
		}
		client := &oidc.Client{
			ID:                       cl.ID,
			AuthMethod:               zoidc.AuthMethod(cl.AuthMethod),
			RedirectURIs:             slices.Clone(cl.RedirectURIs),
			PostLogoutRedirectURIs:   slices.Clone(cl.PostLogoutRedirectURIs),
			BackchannelLogoutURI:     cl.BackchannelLogoutURI,
			FrontchannelLogoutURI:    cl.FrontchannelLogoutURI,
			WebOrigins:               slices.Clone(cl.WebOrigins),
			AccessTokenTTL:           d(cl.AccessTokenTTL),
			OpaqueAccessTokens:       cl.AccessTokenFormat == "opaque",
			Scopes:                   slices.Clone(cl.Scopes),
			RequireMFA:               cl.RequireMFA || cl.RequirePhishingResistant,
			RequirePhishingResistant: cl.RequirePhishingResistant,
			ResourceServer:           cl.ResourceServer,
			Serves:                   slices.Clone(cl.Serves),
			Policy: activity.ClientPolicy{
				IdleTimeout:          d(cl.IdleTimeout),
				AppIdleTimeout:       d(cl.AppIdleTimeout),
				Exempt:               cl.IdleExempt,
				Sources:              sources,
				BackchannelLogoutURI: cl.BackchannelLogoutURI,
			},
		}
		if cl.Secret != "" {
			client.SecretHash = oidc.HashSecret(cl.Secret)
		}
		for _, g := range cl.GrantTypes {
			client.GrantTypes = append(client.GrantTypes, zoidc.GrantType(g))
		}
		pc.Clients = append(pc.Clients, client)
	}
	return pc, nil
}

func isHexKey(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 32
}

// secretKey is keys.secret_key decoded (validated), or nil.
func (c *Config) secretKey() []byte {
	b, _ := hex.DecodeString(c.Keys.SecretKey)
	if len(b) != 32 {
		return nil
	}
	return b
}

// envRef matches a ${NAME} reference to an environment variable.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} in every string of v (a decoded config value),
// naming fields by their YAML paths. It runs on decoded values, never on the
// file's text, so a variable's value is data and cannot change structure.
// Expanded values are not expanded again.
func expandEnv(v reflect.Value, path string, lookup func(string) (string, bool), problem func(path, msg string)) {
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			if path != "" {
				name = path + "." + name
			}
			expandEnv(v.Field(i), name, lookup, problem)
		}
	case reflect.Slice:
		for i := range v.Len() {
			expandEnv(v.Index(i), fmt.Sprintf("%s[%d]", path, i), lookup, problem)
		}
	case reflect.String:
		s := v.String()
		if !strings.Contains(s, "${") {
			return
		}
		var missing []string
		s = envRef.ReplaceAllStringFunc(s, func(ref string) string {
			name := ref[2 : len(ref)-1]
			val, ok := lookup(name)
			if !ok && !slices.Contains(missing, name) {
				missing = append(missing, name)
			}
			return val
		})
		for _, name := range missing {
			problem(path, fmt.Sprintf("environment variable %s is not set", name))
		}
		v.SetString(s)
	}
}

// parentPath returns the path of the mapping or sequence holding path:
// "clients[0]" for "clients[0].redirect_uris", "clients" for "clients[0]".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// fieldPaths names the fields of a YAML document by position, to turn the
// decoder's "line N: ..." messages into "clients[0].idle_timeout: ...".
type fieldPaths struct {
	keys   map[int][]string    // line -> paths of the mapping keys on it
	values map[[2]int]string   // line, column -> path of the value there
	walked map[*yaml.Node]bool // guards against alias cycles
}

func newFieldPaths(root *yaml.Node) *fieldPaths {
	fp := &fieldPaths{keys: make(map[int][]string), values: make(map[[2]int]string), walked: make(map[*yaml.Node]bool)}
	fp.walk(root, "")
	return fp
}

func (fp *fieldPaths) walk(n *yaml.Node, path string) {
	if n == nil || fp.walked[n] {
		return
	}
	fp.walked[n] = true
	if path != "" {
		fp.values[[2]int{n.Line, n.Column}] = path
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			fp.walk(c, path)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			p := key.Value
			if path != "" {
				p = path + "." + key.Value
			}
			fp.keys[key.Line] = append(fp.keys[key.Line], p)
			fp.walk(val, p)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			fp.walk(c, fmt.Sprintf("%s[%d]", path, i))
		}
	}
}

var (
	decodeMsg    = regexp.MustCompile(`^line (\d+)(?: column (\d+))?: (.*)$`)
	unknownField = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
)

// locate splits a decoder message into the path of the field it is about
// and the problem, keeping the line for reference. It returns an empty path
// when the field cannot be told.
func (fp *fieldPaths) locate(msg string) (path, problem string) {
	m := decodeMsg.FindStringSubmatch(msg)
	if m == nil {
		return "", msg
	}
	line, _ := strconv.Atoi(m[1])
	problem = m[3]
	if m[2] != "" {
		col, _ := strconv.Atoi(m[2])
		if p, ok := fp.values[[2]int{line, col}]; ok {
			return p, fmt.Sprintf("%s (line %d)", problem, line)
		}
	}
	candidates := fp.keys[line]
	if u := unknownField.FindStringSubmatch(problem); u != nil {
		problem = "unknown field"
		var named []string
		for _, p := range candidates {
			if p == u[1] || strings.HasSuffix(p, "."+u[1]) {
				named = append(named, p)
			}
		}
		candidates = named
	}
	if len(candidates) == 1 {
		return candidates[0], fmt.Sprintf("%s (line %d)", problem, line)
	}
	return "", msg
}
