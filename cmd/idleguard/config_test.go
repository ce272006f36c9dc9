package main

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc"
)

// minimalConfig is a valid configuration with only the required fields.
const minimalConfig = `
issuer: https://id.example.com
listen: :8080
database: test.db
session:
  idle_timeout: 15m
  max_lifetime: 8h
clients:
  - client_id: app
    client_secret: app-secret-0123456789
    redirect_uris: [https://app.example.com/callback]
`

// problemsOf returns the problems listed by a *ConfigError.
func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	require.Error(t, err)
	var ce *ConfigError
	require.True(t, errors.As(err, &ce), "want a *ConfigError, got %T: %v", err, err)
	return ce.Problems
}

// requireProblems checks that every want (a "path: text" prefix) matches
// exactly one problem, and that there are no others.
func requireProblems(t *testing.T, err error, want ...string) {
	t.Helper()
	got := problemsOf(t, err)
	for _, w := range want {
		path, text, _ := strings.Cut(w, ": ")
		n := 0
		for _, g := range got {
			if strings.HasPrefix(g, path+": ") && strings.Contains(g, text) {
				n++
			}
		}
		require.Equal(t, 1, n, "want one problem %q in:\n%s", w, strings.Join(got, "\n"))
	}
	require.Len(t, got, len(want), "problems:\n%s", strings.Join(got, "\n"))
}

// unsetEnv makes sure name is unset for the test, restoring it afterwards.
func unsetEnv(t *testing.T, name string) {
	t.Helper()
	t.Setenv(name, "")
	require.NoError(t, os.Unsetenv(name))
}

func TestConfigDemoParses(t *testing.T) {
	cfg, err := ParseConfig(demoConfig)
	require.NoError(t, err)
	require.Equal(t, "http://localhost:8080", cfg.Issuer)
	require.Equal(t, "127.0.0.1:8080", cfg.Listen)
	require.Equal(t, "idleguard.db", cfg.Database)
	require.Equal(t, Duration(2*time.Minute), cfg.Session.IdleTimeout)
	require.Equal(t, Duration(8*time.Hour), cfg.Session.MaxLifetime)

	pc, err := cfg.ProviderConfig()
	require.NoError(t, err)
	require.Len(t, pc.Clients, 4)
	byID := make(map[string]*oidc.Client)
	for _, c := range pc.Clients {
		byID[c.ID] = c
	}

	portal := byID["portal"]
	require.NotNil(t, portal)
	require.True(t, portal.CheckSecret("portal-demo-secret"))
	require.Equal(t, zoidc.AuthMethodBasic, portal.AuthMethod)
	require.Equal(t, "http://localhost:9001/backchannel-logout", portal.Policy.BackchannelLogoutURI)
	require.Equal(t, 2*time.Minute, portal.Policy.IdleTimeout)
	require.Equal(t, time.Minute, portal.AccessTokenTTL)
	require.Equal(t, activity.DefaultSources, portal.Policy.Sources)

	spa := byID["spa"]
	require.NotNil(t, spa)
	require.True(t, spa.Public())
	require.Empty(t, spa.SecretHash)
	require.Equal(t, []string{"http://localhost:9002"}, spa.WebOrigins)
	require.Equal(t, time.Minute, spa.Policy.IdleTimeout)
	require.Equal(t, 30*time.Second, spa.AccessTokenTTL)
	require.Zero(t, spa.Policy.Sources&activity.Refresh)

	video := byID["video"]
	require.NotNil(t, video)
	require.True(t, video.CheckSecret("video-demo-secret"))
	require.True(t, video.Policy.Exempt)
	require.Equal(t, 10*time.Minute, video.Policy.IdleTimeout)
	require.Equal(t, 5*time.Minute, video.AccessTokenTTL)

	require.Equal(t, oidc.SSFConfig{MaxStreams: 5, PollWait: 20 * time.Second, VerificationInterval: 10 * time.Second}, pc.SSF)

	api := byID["portal-api"]
	require.NotNil(t, api)
	require.True(t, api.ResourceServer)
	require.Equal(t, []string{"portal"}, api.Serves)
	require.Equal(t, []zoidc.GrantType{zoidc.GrantTypeClientCredentials}, api.GrantTypes)
}

func TestConfigEnvExpansion(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		unset   []string
		client  string // lines appended to the client of minimalConfig's shape
		check   func(t *testing.T, c *ClientConfig)
		problem string
	}{
		{
			name:   "secret from the environment",
			env:    map[string]string{"IG_TEST_SECRET": "from-the-environment-0123"},
			client: "    client_secret: ${IG_TEST_SECRET}\n",
			check: func(t *testing.T, c *ClientConfig) {
				require.Equal(t, "from-the-environment-0123", c.Secret)
			},
		},
		{
			// A value is data: YAML syntax in it must not change the document.
			name:   "secret with YAML syntax keeps the structure",
			env:    map[string]string{"IG_TEST_SECRET": "x: y\n  - [z] # not a comment\nidle_exempt: true"},
			client: "    client_secret: ${IG_TEST_SECRET}\n",
			check: func(t *testing.T, c *ClientConfig) {
				require.Equal(t, "x: y\n  - [z] # not a comment\nidle_exempt: true", c.Secret)
				require.False(t, c.IdleExempt)
			},
		},
		{
			name:   "several references in one value",
			env:    map[string]string{"IG_TEST_HOST": "app.example.com", "IG_TEST_PORT": "8443"},
			client: "    client_secret: app-secret-0123456789\n    redirect_uris: [\"https://${IG_TEST_HOST}:${IG_TEST_PORT}/cb\"]\n",
			check: func(t *testing.T, c *ClientConfig) {
				require.Equal(t, []string{"https://app.example.com:8443/cb"}, c.RedirectURIs)
			},
		},
		{
			name:   "only the ${NAME} form is expanded",
			env:    map[string]string{"IG_TEST_HOST": "nope"},
			client: "    client_secret: $IG_TEST_HOST-0123456789abcdef\n",
			check: func(t *testing.T, c *ClientConfig) {
				require.Equal(t, "$IG_TEST_HOST-0123456789abcdef", c.Secret)
			},
		},
		{
			name:   "expanded values are not expanded again",
			env:    map[string]string{"IG_TEST_SECRET": "${IG_TEST_OTHER}-0123456789"},
			unset:  []string{"IG_TEST_OTHER"},
			client: "    client_secret: ${IG_TEST_SECRET}\n",
			check: func(t *testing.T, c *ClientConfig) {
				require.Equal(t, "${IG_TEST_OTHER}-0123456789", c.Secret)
			},
		},
		{
			name:    "unset variable",
			unset:   []string{"IG_TEST_MISSING"},
			client:  "    client_secret: ${IG_TEST_MISSING}\n",
			problem: "clients[0].client_secret: environment variable IG_TEST_MISSING is not set",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			for _, k := range tt.unset {
				unsetEnv(t, k)
			}
			doc := `
issuer: https://id.example.com
listen: :8080
database: test.db
session: {idle_timeout: 15m, max_lifetime: 8h}
clients:
  - client_id: app
`
			if !strings.Contains(tt.client, "redirect_uris") {
				doc += "    redirect_uris: [https://app.example.com/callback]\n"
			}
			doc += tt.client
			cfg, err := ParseConfig([]byte(doc))
			if tt.problem != "" {
				requireProblems(t, err, tt.problem)
				return
			}
			require.NoError(t, err)
			require.Len(t, cfg.Clients, 1)
			tt.check(t, &cfg.Clients[0])
		})
	}

	t.Run("variable set to empty", func(t *testing.T) {
		t.Setenv("IG_TEST_EMPTY", "")
		cfg, err := ParseConfig([]byte(minimalConfig + "admin:\n  token: ${IG_TEST_EMPTY}\n"))
		require.NoError(t, err)
		require.Empty(t, cfg.Admin.Token)
		pc, err := cfg.ProviderConfig()
		require.NoError(t, err)
		require.Empty(t, pc.AdminTokenHash, "an empty token disables the admin API")
	})
}

// TestConfigReportsEveryProblem pins the promise that one run names every
// mistake in the file, each with its field.
func TestConfigReportsEveryProblem(t *testing.T) {
	unsetEnv(t, "IG_TEST_UNSET_ADMIN")
	doc := `
issuer: http://id.example.com
listen: 127.0.0.1:8080
database: x.db
sesion: {}
session:
  idle_timeout: 10m
  max_lifetime: 8h
keys:
  algorithm: HS256
admin:
  token: ${IG_TEST_UNSET_ADMIN}
clients:
  - client_id: bank
    client_secret: bank-secret-0123456789
    redirect_uris:
      - https://bank.example.com/callback
      - https://bank.example.com/callback#frag
    idle_timeout: 5m
    access_token_ttl: 6m
  - client_id: bank
    client_secret: other-secret-0123456789
    redirect_uris: [http://bank.example.com/callback]
    idle_timeout: 5 minutes
  - client_id: spa
    token_endpoint_auth_method: none
    client_secret: should-not-be-here-0123
    redirect_uris: [http://localhost:9002/cb]
    activity: [sso, clicks]
  - client_id: api
    token_endpoint_auth_method: client_secret_post
    redirect_uris: [https://api.example.com/cb]
    idel_timeout: 5m
`
	_, err := ParseConfig([]byte(doc))
	requireProblems(t, err,
		"sesion: unknown field (line 5)",
		"clients[1].idle_timeout: \"5 minutes\" is not a duration",
		"clients[3].idel_timeout: unknown field (line 33)",
		"admin.token: environment variable IG_TEST_UNSET_ADMIN is not set",
		"issuer: plain http is allowed only for localhost",
		"keys.algorithm: \"HS256\" is not supported",
		"clients[0].redirect_uris[1]: must not contain a fragment",
		"clients[0].access_token_ttl: 6m0s is above the client's idle_timeout (5m0s)",
		"clients[1].client_id: \"bank\" is already used by clients[0]",
		"clients[1].redirect_uris[0]: plain http is allowed only for localhost",
		"clients[2].client_secret: must not be set for a public client",
		"clients[2].activity[1]: unknown activity source \"clicks\"",
		"clients[3].client_secret: is required for client_secret_post",
	)
	require.Contains(t, err.Error(), "13 problems")
	require.NotContains(t, err.Error(), "should-not-be-here", "secrets are never echoed")
}

func TestConfigDecodeProblemsNameTheirField(t *testing.T) {
	base := "issuer: https://id.example.com\nlisten: :8080\ndatabase: x.db\n"
	tests := []struct {
		name string
		doc  string
		want string
	}{
		{"bad duration in flow style", "session: {idle_timeout: 15m, max_lifetime: 8 hours}\n",
			`session.max_lifetime: "8 hours" is not a duration`},
		{"integer is not a duration", "session: {idle_timeout: 900, max_lifetime: 8h}\n",
			`session.idle_timeout: "900" is not a duration`},
		{"unknown nested field", "session:\n  idle_timeout: 15m\n  max_lifetime: 8h\n  idle: 5m\n",
			"session.idle: unknown field (line 7)"},
		{"wrong type", "session: {idle_timeout: 15m, max_lifetime: 8h}\nbackchannel:\n  concurrency: many\n",
			"backchannel.concurrency: cannot unmarshal"},
		{"duplicate key", "session:\n  max_lifetime: 8h\n  idle_timeout: 15m\n  idle_timeout: 20m\n",
			`session.idle_timeout: mapping key "idle_timeout" already defined`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(base + tt.doc))
			requireProblems(t, err, tt.want)
		})
	}

	t.Run("unparsable YAML fails at once", func(t *testing.T) {
		_, err := ParseConfig([]byte("issuer: [unclosed\n"))
		require.Error(t, err)
		var ce *ConfigError
		require.False(t, errors.As(err, &ce))
	})
}

func TestConfigDurations(t *testing.T) {
	_, err := ParseConfig([]byte(minimalConfig + `    idle_timeout: 1h30m
    app_idle_timeout: 0
    access_token_ttl: "45s"
`))
	// 1h30m is above session.idle_timeout; check the parse, then the rule.
	requireProblems(t, err, "clients[0].idle_timeout: 1h30m0s is above session.idle_timeout (15m0s)")

	cfg, err := ParseConfig([]byte(strings.Replace(minimalConfig, "idle_timeout: 15m", "idle_timeout: 2h", 1) + `    idle_timeout: 1h30m
    app_idle_timeout: 0
    access_token_ttl: "45s"
`))
	require.NoError(t, err)
	c := cfg.Clients[0]
	require.Equal(t, Duration(90*time.Minute), c.IdleTimeout)
	require.Equal(t, Duration(0), c.AppIdleTimeout)
	require.Equal(t, Duration(45*time.Second), c.AccessTokenTTL)
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig))
	require.NoError(t, err)
	require.Equal(t, Duration(time.Second), cfg.Session.SweepInterval)
	require.Equal(t, Duration(time.Second), cfg.Session.FlushInterval)
	require.Equal(t, "RS256", cfg.Keys.Algorithm)
	require.Equal(t, Duration(10*time.Minute), cfg.Tokens.IDTokenTTL)
	require.Equal(t, BackchannelConfig{Timeout: Duration(5 * time.Second), Concurrency: 8, PerDestination: 2, Retention: Duration(7 * 24 * time.Hour),
		RetryFor: Duration(24 * time.Hour), InitialBackoff: Duration(time.Second), MaxBackoff: Duration(5 * time.Minute),
		PollInterval: Duration(time.Second)}, cfg.Backchannel)
	require.Equal(t, LoginConfig{MFA: "when_required", MaxFailures: 5, LockoutBase: Duration(time.Second), LockoutMax: Duration(15 * time.Minute)}, cfg.Login)
	require.Equal(t, LogConfig{Format: "text", Level: "info"}, cfg.Log)
	require.Empty(t, cfg.TrustedProxies, "no proxy is trusted unless configured")

	c := cfg.Clients[0]
	require.Equal(t, "client_secret_basic", c.AuthMethod)
	require.Equal(t, []string{"authorization_code", "refresh_token"}, c.GrantTypes)
	require.Equal(t, "jwt", c.AccessTokenFormat)
	require.Equal(t, Duration(5*time.Minute), c.AccessTokenTTL)
	sources, err := activity.ParseSources(c.Activity)
	require.NoError(t, err)
	require.Equal(t, activity.DefaultSources, sources)

	t.Run("access token TTL defaults to a shorter idle limit", func(t *testing.T) {
		cfg, err := ParseConfig([]byte(minimalConfig + "    idle_timeout: 2m\n"))
		require.NoError(t, err)
		require.Equal(t, Duration(2*time.Minute), cfg.Clients[0].AccessTokenTTL)
	})
	t.Run("an empty activity list means login only", func(t *testing.T) {
		cfg, err := ParseConfig([]byte(minimalConfig + "    activity: []\n"))
		require.NoError(t, err)
		pc, err := cfg.ProviderConfig()
		require.NoError(t, err)
		require.Equal(t, activity.Login, pc.Clients[0].Policy.Sources)
	})
}

// TestConfigValidateRules changes one thing in a valid configuration and
// checks the problem it causes (or that it is accepted).
func TestConfigValidateRules(t *testing.T) {
	d := func(s string) Duration {
		v, err := time.ParseDuration(s)
		require.NoError(t, err)
		return Duration(v)
	}
	tests := []struct {
		name   string
		change func(c *Config, cl *ClientConfig)
		want   string // "" means valid
	}{
		{"http issuer on localhost", func(c *Config, _ *ClientConfig) { c.Issuer = "http://localhost:8080" }, ""},
		{"http issuer on 127.0.0.1", func(c *Config, _ *ClientConfig) { c.Issuer = "http://127.0.0.1:8080/idp" }, ""},
		{"http issuer on ::1", func(c *Config, _ *ClientConfig) { c.Issuer = "http://[::1]:8080" }, ""},
		{"issuer with query", func(c *Config, _ *ClientConfig) { c.Issuer = "https://id.example.com/?tenant=1" },
			"issuer: must not contain a query"},
		{"issuer with fragment", func(c *Config, _ *ClientConfig) { c.Issuer = "https://id.example.com/#x" },
			"issuer: must not contain a fragment"},
		{"relative issuer", func(c *Config, _ *ClientConfig) { c.Issuer = "id.example.com" },
			"issuer: is not an absolute URL"},
		{"missing issuer", func(c *Config, _ *ClientConfig) { c.Issuer = "" }, "issuer: is required"},
		{"listen without port", func(c *Config, _ *ClientConfig) { c.Listen = "localhost" }, "listen: \"localhost\" is not host:port"},
		{"listen with bad port", func(c *Config, _ *ClientConfig) { c.Listen = "localhost:http9" }, "listen: \"localhost:http9\": port must be a number"},
		{"missing database", func(c *Config, _ *ClientConfig) { c.Database = "" }, "database: is required"},
		{"postgres database", func(c *Config, _ *ClientConfig) {
			c.Database = "postgres://idleguard:pw@db.internal:5432/idleguard?sslmode=verify-full"
		}, ""},
		{"postgresql scheme", func(c *Config, _ *ClientConfig) { c.Database = "postgresql://db.internal/idleguard?sslmode=require" }, ""},
		{"postgres on loopback without sslmode", func(c *Config, _ *ClientConfig) { c.Database = "postgres://127.0.0.1:5432/idleguard" }, ""},
		{"postgres on a unix socket without sslmode", func(c *Config, _ *ClientConfig) { c.Database = "postgres:///idleguard?host=/run/postgresql" }, ""},
		{"remote postgres without sslmode", func(c *Config, _ *ClientConfig) { c.Database = "postgres://idleguard:pw@db.internal:5432/idleguard" },
			"database: names the server \"db.internal\" without sslmode"},
		{"postgres url with a bad port", func(c *Config, _ *ClientConfig) {
			c.Database = "postgres://idleguard:s3cret@db.internal:port/idleguard"
		},
			"database: is not a usable PostgreSQL URL"},
		{"postgres url with a bad option", func(c *Config, _ *ClientConfig) { c.Database = "postgres://db.internal/idleguard?sslmode=sometimes" },
			"database: is not a usable PostgreSQL URL"},
		{"missing idle timeout", func(c *Config, _ *ClientConfig) { c.Session.IdleTimeout = 0 }, "session.idle_timeout: is required"},
		{"max lifetime below idle timeout", func(c *Config, _ *ClientConfig) { c.Session.MaxLifetime = d("5m") },
			"session.max_lifetime: 5m0s is shorter than session.idle_timeout (15m0s)"},
		{"negative sweep interval", func(c *Config, _ *ClientConfig) { c.Session.SweepInterval = d("-1s") },
			"session.sweep_interval: must be positive"},
		{"negative replicas", func(c *Config, _ *ClientConfig) { c.Session.Replicas = -2 }, "session.replicas: must be 1 or more"},
		{"zero sync interval", func(c *Config, _ *ClientConfig) { c.Session.SyncInterval = d("-1ms") }, "session.sync_interval: must be positive"},
		{"negative database timeout", func(c *Config, _ *ClientConfig) { c.Session.DatabaseTimeout = d("-1s") },
			"session.database_timeout: must be positive"},
		{"ES256 keys", func(c *Config, _ *ClientConfig) { c.Keys.Algorithm = "ES256" }, ""},
		{"EdDSA keys", func(c *Config, _ *ClientConfig) { c.Keys.Algorithm = "EdDSA" }, ""},
		{"short admin token", func(c *Config, _ *ClientConfig) { c.Admin.Token = "admin" }, "admin.token: is too short"},
		{"max backoff below initial", func(c *Config, _ *ClientConfig) { c.Backchannel.MaxBackoff = d("500ms") },
			"backchannel.max_backoff: 500ms is shorter than backchannel.initial_backoff (1s)"},
		{"negative per-destination limit", func(c *Config, _ *ClientConfig) { c.Backchannel.PerDestination = -1 },
			"backchannel.per_destination: must be positive"},
		{"negative retention", func(c *Config, _ *ClientConfig) { c.Backchannel.Retention = d("-1h") },
			"backchannel.retention: must be positive"},
		{"no login attempts", func(c *Config, _ *ClientConfig) { c.Login.MaxFailures = -1 }, "login.max_failures: must be positive"},
		{"json logs", func(c *Config, _ *ClientConfig) { c.Log = LogConfig{Format: "json", Level: "debug"} }, ""},
		{"unknown log format", func(c *Config, _ *ClientConfig) { c.Log.Format = "xml" }, "log.format: \"xml\" is not supported (want text or json)"},
		{"unknown log level", func(c *Config, _ *ClientConfig) { c.Log.Level = "verbose" }, "log.level: \"verbose\" is not a level"},
		{"trusted proxies", func(c *Config, _ *ClientConfig) {
			c.TrustedProxies = []string{"10.0.0.0/8", "192.0.2.1", "2001:db8::/32"}
		}, ""},
		{"trusted proxy not a CIDR", func(c *Config, _ *ClientConfig) { c.TrustedProxies = []string{"10.0.0.0/8", "10.0.0.0/33"} },
			"trusted_proxies[1]: \"10.0.0.0/33\" is not a CIDR or an address"},
		{"trusted proxy host name", func(c *Config, _ *ClientConfig) { c.TrustedProxies = []string{"proxy.internal"} },
			"trusted_proxies[0]: \"proxy.internal\" is not a CIDR"},
		{"trusting every address", func(c *Config, _ *ClientConfig) { c.TrustedProxies = []string{"0.0.0.0/0"} },
			"trusted_proxies[0]: \"0.0.0.0/0\" trusts every address"},

		{"empty client id", func(_ *Config, cl *ClientConfig) { cl.ID = "" }, "clients[0].client_id: is required"},
		{"client id with space", func(_ *Config, cl *ClientConfig) { cl.ID = "my app" }, "clients[0].client_id: must not contain spaces"},
		{"unknown auth method", func(_ *Config, cl *ClientConfig) { cl.AuthMethod = "private_key_jwt" },
			"clients[0].token_endpoint_auth_method: \"private_key_jwt\" is not supported"},
		{"short secret", func(_ *Config, cl *ClientConfig) { cl.Secret = "secret" }, "clients[0].client_secret: is too short"},
		{"no redirect uris", func(_ *Config, cl *ClientConfig) { cl.RedirectURIs = nil },
			"clients[0].redirect_uris: at least one is required"},
		{"client credentials only needs no redirect", func(_ *Config, cl *ClientConfig) {
			cl.RedirectURIs, cl.GrantTypes = nil, []string{"client_credentials"}
		}, ""},
		{"custom scheme redirect", func(_ *Config, cl *ClientConfig) { cl.RedirectURIs = []string{"com.example.app:/cb"} },
			"clients[0].redirect_uris[0]: \"com.example.app:/cb\" is not an absolute URL"},
		{"post logout uri on http", func(_ *Config, cl *ClientConfig) {
			cl.PostLogoutRedirectURIs = []string{"https://app.example.com/", "http://app.example.com/"}
		}, "clients[0].post_logout_redirect_uris[1]: plain http is allowed only for localhost"},
		{"backchannel uri with fragment", func(_ *Config, cl *ClientConfig) { cl.BackchannelLogoutURI = "https://app.example.com/bc#x" },
			"clients[0].backchannel_logout_uri: must not contain a fragment"},
		{"relative frontchannel uri", func(_ *Config, cl *ClientConfig) { cl.FrontchannelLogoutURI = "/fc" },
			"clients[0].frontchannel_logout_uri: \"/fc\" is not an absolute URL"},
		{"web origin with port", func(_ *Config, cl *ClientConfig) { cl.WebOrigins = []string{"https://app.example.com:8443"} }, ""},
		{"web origin with path", func(_ *Config, cl *ClientConfig) { cl.WebOrigins = []string{"https://app.example.com/app"} },
			"clients[0].web_origins[0]: \"https://app.example.com/app\" is not an origin"},
		{"wildcard web origin", func(_ *Config, cl *ClientConfig) { cl.WebOrigins = []string{"*"} },
			"clients[0].web_origins[0]: \"*\" is not an absolute URL"},
		{"unknown grant type", func(_ *Config, cl *ClientConfig) { cl.GrantTypes = []string{"authorization_code", "implicit"} },
			"clients[0].grant_types[1]: \"implicit\" is not supported"},
		{"client credentials for a public client", func(_ *Config, cl *ClientConfig) {
			cl.AuthMethod, cl.Secret = "none", ""
			cl.GrantTypes = []string{"authorization_code", "client_credentials"}
		}, "clients[0].grant_types: client_credentials needs a confidential client"},
		{"refresh without code", func(_ *Config, cl *ClientConfig) { cl.GrantTypes = []string{"refresh_token"} },
			"clients[0].grant_types: refresh_token needs authorization_code"},
		{"refresh as activity", func(_ *Config, cl *ClientConfig) { cl.Activity = []string{"sso", "refresh"} }, ""},
		{"own scopes", func(_ *Config, cl *ClientConfig) {
			cl.Scopes = []string{"openid", "email", "offline_access", "reports:read"}
		}, ""},
		{"scopes without openid for a sign-in", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"profile", "offline_access"} },
			"clients[0].scopes: must include openid for authorization_code"},
		{"refresh grant without offline_access", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"openid", "email"} },
			"clients[0].scopes: must include offline_access for the refresh_token grant"},
		{"no refresh, no offline_access", func(_ *Config, cl *ClientConfig) {
			cl.Scopes, cl.GrantTypes = []string{"openid", "email"}, []string{"authorization_code"}
		}, ""},
		{"service scopes without openid", func(_ *Config, cl *ClientConfig) {
			cl.RedirectURIs, cl.GrantTypes, cl.Scopes = nil, []string{"client_credentials"}, []string{"reports:read"}
		}, ""},
		{"scope with a space", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"openid", "offline_access", "read write"} },
			"clients[0].scopes[2]: \"read write\" is not a scope"},
		{"empty scope", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"openid", "offline_access", ""} },
			"clients[0].scopes[2]: \"\" is not a scope"},
		{"scope listed twice", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"openid", "offline_access", "openid"} },
			"clients[0].scopes[2]: \"openid\" is listed twice"},
		{"unsupported OpenID scope", func(_ *Config, cl *ClientConfig) { cl.Scopes = []string{"openid", "offline_access", "phone"} },
			"clients[0].scopes[2]: \"phone\" is not supported"},
		{"client idle above the provider's", func(_ *Config, cl *ClientConfig) { cl.IdleTimeout = d("20m") },
			"clients[0].idle_timeout: 20m0s is above session.idle_timeout (15m0s)"},
		{"negative client idle", func(_ *Config, cl *ClientConfig) { cl.IdleTimeout = d("-1m") },
			"clients[0].idle_timeout: must not be negative"},
		{"access token TTL above the provider idle timeout", func(_ *Config, cl *ClientConfig) { cl.AccessTokenTTL = d("16m") },
			"clients[0].access_token_ttl: 16m0s is above session.idle_timeout (15m0s)"},
		{"zero access token TTL after defaults", func(_ *Config, cl *ClientConfig) { cl.AccessTokenTTL = 0 },
			"clients[0].access_token_ttl: must be positive"},
		{"opaque access tokens", func(_ *Config, cl *ClientConfig) { cl.AccessTokenFormat = "opaque" }, ""},
		{"unknown access token format", func(_ *Config, cl *ClientConfig) { cl.AccessTokenFormat = "paseto" },
			"clients[0].access_token_format: \"paseto\" is not supported"},
		{"app idle timeout within idle timeout", func(_ *Config, cl *ClientConfig) {
			cl.IdleTimeout, cl.AppIdleTimeout = d("10m"), d("5m")
		}, ""},
		{"app idle timeout above idle timeout", func(_ *Config, cl *ClientConfig) {
			cl.IdleTimeout, cl.AppIdleTimeout = d("5m"), d("10m")
		}, "clients[0].app_idle_timeout: 10m0s is above the client's idle_timeout (5m0s)"},
		{"negative app idle timeout", func(_ *Config, cl *ClientConfig) { cl.AppIdleTimeout = d("-1s") },
			"clients[0].app_idle_timeout: must not be negative"},
		{"exempt client above the provider limit", func(_ *Config, cl *ClientConfig) {
			cl.IdleExempt, cl.IdleTimeout, cl.AccessTokenTTL = true, d("1h"), d("30m")
		}, ""},
		{"exempt access token TTL above its idle timeout", func(_ *Config, cl *ClientConfig) {
			cl.IdleExempt, cl.IdleTimeout, cl.AccessTokenTTL = true, d("1h"), d("2h")
		}, "clients[0].access_token_ttl: 2h0m0s is above the client's idle_timeout (1h0m0s)"},
		{"exempt without idle timeout", func(_ *Config, cl *ClientConfig) { cl.IdleExempt = true },
			"clients[0].idle_timeout: is required for an idle_exempt client"},
		{"exempt with app idle timeout", func(_ *Config, cl *ClientConfig) {
			cl.IdleExempt, cl.IdleTimeout, cl.AppIdleTimeout = true, d("1h"), d("10m")
		}, "clients[0].app_idle_timeout: has no meaning for an idle_exempt client"},
		{"exempt idle above max lifetime", func(_ *Config, cl *ClientConfig) {
			cl.IdleExempt, cl.IdleTimeout = true, d("9h")
		}, "clients[0].idle_timeout: 9h0m0s is above session.max_lifetime (8h0m0s)"},

		{"resource server of itself", func(_ *Config, cl *ClientConfig) { cl.ResourceServer = true }, ""},
		{"resource server of named apps", func(_ *Config, cl *ClientConfig) { cl.ResourceServer, cl.Serves = true, []string{"app"} }, ""},
		{"public resource server", func(_ *Config, cl *ClientConfig) {
			cl.ResourceServer, cl.AuthMethod, cl.Secret = true, "none", ""
		}, "clients[0].resource_server: needs a confidential client"},
		{"serves without resource server", func(_ *Config, cl *ClientConfig) { cl.Serves = []string{"app"} },
			"clients[0].serves: has no meaning without resource_server: true"},
		{"serves an unknown app", func(_ *Config, cl *ClientConfig) { cl.ResourceServer, cl.Serves = true, []string{"app", "mail"} },
			"clients[0].serves[1]: \"mail\" is not a configured client_id"},
		{"serves an app twice", func(_ *Config, cl *ClientConfig) { cl.ResourceServer, cl.Serves = true, []string{"app", "app"} },
			"clients[0].serves[1]: \"app\" is listed twice"},
		{"api activity off", func(_ *Config, cl *ClientConfig) { cl.Activity = []string{"sso", "heartbeat"} }, ""},
		{"long poll as long as the write timeout", func(c *Config, _ *ClientConfig) { c.SSF.PollWait = d("30s") },
			"ssf.poll_wait: must be positive and below the server's write timeout (30s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := ParseConfig([]byte(minimalConfig))
			require.NoError(t, err)
			tt.change(cfg, &cfg.Clients[0])
			err = cfg.Validate()
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			requireProblems(t, err, tt.want)
		})
	}
}

func TestConfigProviderConfig(t *testing.T) {
	t.Setenv("IG_TEST_ADMIN", "admin-token-0123456789")
	t.Setenv("IG_TEST_BANK", "bank-secret-0123456789")
	cfg, err := ParseConfig([]byte(`
issuer: https://id.example.com/
listen: 127.0.0.1:8080
trusted_proxies: [10.1.0.0/16, 192.0.2.7, "2001:db8::1/32"]
database: idleguard.db
session:
  idle_timeout: 30m
  max_lifetime: 12h
  sweep_interval: 2s
  flush_interval: 3s
  replicas: 3
  sync_interval: 100ms
  database_timeout: 2s
keys:
  algorithm: ES256
tokens:
  id_token_ttl: 7m
admin:
  token: ${IG_TEST_ADMIN}
backchannel:
  timeout: 4s
  concurrency: 3
  per_destination: 1
  retention: 720h
  retry_for: 1h
  initial_backoff: 2s
  max_backoff: 1m
login:
  max_failures: 9
  lockout_base: 3s
  lockout_max: 1h
clients:
  - client_id: bank
    client_secret: ${IG_TEST_BANK}
    token_endpoint_auth_method: client_secret_post
    redirect_uris: [https://bank.example.com/cb]
    post_logout_redirect_uris: [https://bank.example.com/]
    backchannel_logout_uri: https://bank.example.com/bc
    frontchannel_logout_uri: https://bank.example.com/fc
    web_origins: [https://bank.example.com]
    grant_types: [authorization_code, refresh_token, client_credentials]
    idle_timeout: 5m
    app_idle_timeout: 4m
    access_token_ttl: 2m
    access_token_format: opaque
    activity: [sso, refresh]
    scopes: [openid, email, offline_access, reports:read]
  - client_id: spa
    token_endpoint_auth_method: none
    redirect_uris: [http://127.0.0.1:9002/cb]
  - client_id: reports-api
    client_secret: ${IG_TEST_BANK}
    grant_types: [client_credentials]
    scopes: []
    resource_server: true
    serves: [bank, spa]
`))
	require.NoError(t, err)
	pc, err := cfg.ProviderConfig()
	require.NoError(t, err)

	require.Equal(t, "https://id.example.com/", pc.Issuer)
	require.Equal(t, activity.Config{IdleTimeout: 30 * time.Minute, MaxLifetime: 12 * time.Hour,
		SweepInterval: 2 * time.Second, FlushInterval: 3 * time.Second, Replicas: 3, SyncInterval: 100 * time.Millisecond}, pc.Session)
	require.Equal(t, "ES256", pc.KeyAlgorithm)
	require.Equal(t, 7*time.Minute, pc.IDTokenTTL)
	require.Equal(t, 2*time.Second, pc.DatabaseTimeout)
	require.Equal(t, oidc.HashSecret("admin-token-0123456789"), pc.AdminTokenHash)
	require.Equal(t, oidc.BackchannelConfig{Timeout: 4 * time.Second, Concurrency: 3, PerDestination: 1, Retention: 720 * time.Hour, RetryFor: time.Hour,
		InitialBackoff: 2 * time.Second, MaxBackoff: time.Minute, PollInterval: time.Second}, pc.Backchannel)
	require.Equal(t, oidc.LoginConfig{MaxFailures: 9, LockoutBase: 3 * time.Second, LockoutMax: time.Hour}, pc.Login)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("192.0.2.7/32"),
		netip.MustParsePrefix("2001:db8::/32")}, pc.TrustedProxies)
	require.Nil(t, pc.Now)
	require.Nil(t, pc.Logger)
	require.Nil(t, pc.HTTPClient)

	require.Len(t, pc.Clients, 3)
	bank := pc.Clients[0]
	require.Equal(t, &oidc.Client{
		ID:                     "bank",
		SecretHash:             oidc.HashSecret("bank-secret-0123456789"),
		AuthMethod:             zoidc.AuthMethodPost,
		RedirectURIs:           []string{"https://bank.example.com/cb"},
		PostLogoutRedirectURIs: []string{"https://bank.example.com/"},
		BackchannelLogoutURI:   "https://bank.example.com/bc",
		FrontchannelLogoutURI:  "https://bank.example.com/fc",
		WebOrigins:             []string{"https://bank.example.com"},
		GrantTypes:             []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken, zoidc.GrantTypeClientCredentials},
		AccessTokenTTL:         2 * time.Minute,
		OpaqueAccessTokens:     true,
		Scopes:                 []string{"openid", "email", "offline_access", "reports:read"},
		Policy: activity.ClientPolicy{
			IdleTimeout:          5 * time.Minute,
			AppIdleTimeout:       4 * time.Minute,
			Sources:              activity.Login | activity.SSO | activity.Refresh,
			BackchannelLogoutURI: "https://bank.example.com/bc",
		},
	}, bank)
	require.True(t, bank.CheckSecret("bank-secret-0123456789"))
	require.False(t, bank.CheckSecret("bank-secret"))

	spa := pc.Clients[1]
	require.True(t, spa.Public())
	require.Empty(t, spa.SecretHash)
	require.False(t, spa.OpaqueAccessTokens)
	require.Equal(t, []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken}, spa.GrantTypes)
	require.Equal(t, 5*time.Minute, spa.AccessTokenTTL)
	require.Equal(t, activity.DefaultSources, spa.Policy.Sources)
	require.Equal(t, oidc.DefaultScopes, spa.Scopes)
	require.Zero(t, spa.Policy.IdleTimeout)
	require.False(t, spa.ResourceServer)
	require.False(t, spa.ServesApp("spa"), "an app serves no API")

	api := pc.Clients[2]
	require.True(t, api.ResourceServer)
	require.Equal(t, []string{"bank", "spa"}, api.Serves)
	require.True(t, api.ServesApp("bank"))
	require.False(t, api.ServesApp("reports-api"), "serves lists the apps; its own id only when it lists none")

	t.Run("refuses an invalid configuration", func(t *testing.T) {
		cfg.Clients[1].Secret = "a-secret-for-a-public-client"
		_, err := cfg.ProviderConfig()
		requireProblems(t, err, "clients[1].client_secret: must not be set for a public client")
	})
}

func TestConfigLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "idleguard.yaml")
	require.NoError(t, os.WriteFile(path, []byte(minimalConfig), 0o600))
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	require.Equal(t, "https://id.example.com", cfg.Issuer)

	_, err = LoadConfig(filepath.Join(dir, "missing.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(minimalConfig+"extra: 1\n"), 0o600))
	_, err = LoadConfig(bad)
	require.ErrorContains(t, err, bad)
	require.ErrorContains(t, err, "extra: unknown field")
}

// TestConfigPostgresPasswordStaysSecret: the password of a database URL
// comes from the environment and appears in no error.
func TestConfigPostgresPasswordStaysSecret(t *testing.T) {
	t.Setenv("IG_TEST_PGPASS", "s3cret-pass")
	cfg, err := ParseConfig([]byte(strings.Replace(minimalConfig, "database: ", "database: postgres://idleguard:${IG_TEST_PGPASS}@db.internal:5432/idleguard?sslmode=verify-full\n# was: ", 1)))
	require.NoError(t, err)
	require.Equal(t, "postgres://idleguard:s3cret-pass@db.internal:5432/idleguard?sslmode=verify-full", cfg.Database)

	cfg.Database = "postgres://idleguard:s3cret-pass@db.internal:port/idleguard"
	err = cfg.Validate()
	require.ErrorContains(t, err, "database: is not a usable PostgreSQL URL")
	require.NotContains(t, err.Error(), "s3cret-pass")
}
