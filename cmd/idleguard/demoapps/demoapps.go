package demoapps

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// App is one demo app as registered at the provider.
type App struct {
	ClientID     string
	ClientSecret string        // empty for the public SPA
	URL          string        // public origin, e.g. http://localhost:9001
	Listen       string        // host:port to serve on
	IdleTimeout  time.Duration // the client's idle_timeout
	Exempt       bool          // the client's idle_exempt
	// API is the app's own API client (resource_server: true, serving this
	// app), when the app serves GET /api/orders through the resource-server
	// kit; empty ClientID: no API.
	API APIClient
}

// APIClient is the client an app's API authenticates as at the provider.
type APIClient struct {
	ClientID     string
	ClientSecret string
}

// Library tunes the browser library on every page (its options warnBefore,
// heartbeatInterval and checkInterval).
type Library struct {
	WarnBefore        time.Duration
	HeartbeatInterval time.Duration
	CheckInterval     time.Duration
}

// Config is what the demo apps need to know about the provider and each
// other. The limits are only shown to the person (the provider enforces
// them); the pages compare the limit in force with them to say which app
// sets it.
type Config struct {
	Issuer string
	// SessionIdleTimeout is the provider's ceiling, session.idle_timeout.
	SessionIdleTimeout time.Duration
	Portal, SPA, Video App
	Library            Library
	Logger             *slog.Logger
	// Now is the clock of the logout token checks; default time.Now.
	Now func() time.Time
	// HTTPClient talks to the provider from the apps' backends; default
	// http.DefaultClient.
	HTTPClient *http.Client
}

func (c *Config) setDefaults() {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.HTTPClient == nil {
		c.HTTPClient = http.DefaultClient
	}
	c.Issuer = strings.TrimSuffix(c.Issuer, "/")
}

// pageConfig is what every page's script is told (as JSON).
type pageConfig struct {
	Issuer    string     `json:"issuer"`
	ClientID  string     `json:"clientId"`
	App       string     `json:"app"`
	Origin    string     `json:"origin"`
	SignedIn  bool       `json:"signedIn"`
	LogoutURL string     `json:"logoutUrl,omitempty"`
	Library   libraryCfg `json:"library"`
	Limits    limitsCfg  `json:"limits"`
}

type libraryCfg struct {
	WarnBefore        float64 `json:"warnBefore"`
	HeartbeatInterval float64 `json:"heartbeatInterval"`
	CheckInterval     float64 `json:"checkInterval"`
}

type limitsCfg struct {
	Provider float64    `json:"provider"` // seconds
	Apps     []appLimit `json:"apps"`
}

type appLimit struct {
	Name   string  `json:"name"`
	URL    string  `json:"url"`
	Idle   float64 `json:"idle"` // seconds; 0: none of its own
	Exempt bool    `json:"exempt"`
}

func (c *Config) apps() []App { return []App{c.Portal, c.SPA, c.Video} }

func (c *Config) page(app App, signedIn bool, logoutURL string) pageConfig {
	pc := pageConfig{
		Issuer: c.Issuer, ClientID: app.ClientID, App: app.ClientID, Origin: app.URL,
		SignedIn: signedIn, LogoutURL: logoutURL,
		Library: libraryCfg{
			WarnBefore:        c.Library.WarnBefore.Seconds(),
			HeartbeatInterval: c.Library.HeartbeatInterval.Seconds(),
			CheckInterval:     c.Library.CheckInterval.Seconds(),
		},
		Limits: limitsCfg{Provider: c.SessionIdleTimeout.Seconds()},
	}
	for _, a := range c.apps() {
		pc.Limits.Apps = append(pc.Limits.Apps, appLimit{Name: a.ClientID, URL: a.URL, Idle: a.IdleTimeout.Seconds(), Exempt: a.Exempt})
	}
	return pc
}

// navLink is one entry of the bar that links the three apps.
type navLink struct {
	Name, URL string
	Current   bool
}

func (c *Config) nav(current string) []navLink {
	var links []navLink
	for _, a := range c.apps() {
		links = append(links, navLink{Name: a.ClientID, URL: a.URL + "/", Current: a.ClientID == current})
	}
	return links
}

// Run serves the three demo apps on their Listen addresses until ctx ends.
// The provider must answer at cfg.Issuer (the server apps read its
// discovery document at start).
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	portal, err := NewServerApp(ctx, cfg, cfg.Portal, portalCopy)
	if err != nil {
		return fmt.Errorf("portal: %w", err)
	}
	video, err := NewServerApp(ctx, cfg, cfg.Video, videoCopy)
	if err != nil {
		return fmt.Errorf("video: %w", err)
	}
	handlers := []struct {
		app App
		h   http.Handler
	}{{cfg.Portal, portal}, {cfg.SPA, NewSPA(cfg)}, {cfg.Video, video}}

	var listeners []net.Listener
	closeAll := func() {
		for _, ln := range listeners {
			ln.Close()
		}
	}
	for _, h := range handlers {
		ln, err := net.Listen("tcp", h.app.Listen)
		if err != nil {
			closeAll()
			return fmt.Errorf("%s: %w", h.app.ClientID, err)
		}
		listeners = append(listeners, ln)
	}
	errc := make(chan error, len(handlers))
	var servers []*http.Server
	for i, h := range handlers {
		srv := &http.Server{
			Handler:           h.h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       15 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       120 * time.Second,
			ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
		}
		servers = append(servers, srv)
		go func() { errc <- srv.Serve(listeners[i]) }()
	}
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var errs []error
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	for _, srv := range servers {
		errs = append(errs, srv.Shutdown(shutdownCtx))
	}
	return errors.Join(errs...)
}

// random returns n random bytes, base64url-encoded.
func random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// originOf returns scheme://host of a URL.
func originOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return u.Scheme + "://" + u.Host
}

// securityHeaders sets the headers every demo page carries. frameAncestors
// is the CSP frame-ancestors source list ('none' except for the
// front-channel logout endpoints, which the provider loads in iframes).
func securityHeaders(w http.ResponseWriter, issuer, frameAncestors string) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self' "+issuer+"; connect-src 'self' "+issuer+
		"; style-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self' "+issuer+"; frame-ancestors "+frameAncestors)
}

// assetHandler serves the shared stylesheet and scripts under /assets/.
func assetHandler() http.Handler {
	fs := http.FileServerFS(assets)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fs.ServeHTTP(w, r)
	})
}

// reasonTexts explain a logout token's reason claim (and the library's own
// reasons) to the person.
var reasonTexts = map[string]string{
	"idle_timeout":     "Nobody used any app of this session for the idle limit in force.",
	"max_lifetime":     "The session reached its maximum length.",
	"logout":           "You signed out, here or in another app.",
	"app_idle_timeout": "This app was not used for its own idle limit.",
	"admin":            "An administrator ended the session.",
	"refresh_reuse":    "A refresh token was used twice, a sign of theft, so the session was ended.",
	"code_reuse":       "A sign-in code was used twice, a sign of theft, so the session was ended.",
	"session_ended":    "The provider ended the session.",
	"invalid_token":    "The provider no longer accepts this app's token.",
	"expired":          "The session ran out while the provider could not be reached.",
}

func reasonText(reason string) string {
	if t, ok := reasonTexts[reason]; ok {
		return t
	}
	return "The session ended."
}
