package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/idleguard/idleguard/cmd/idleguard/demoapps"
)

const demoUsage = `idleguard demo: the provider and three sample apps on localhost.

Usage: idleguard demo [flags]

The defaults are what a newcomer should see; the flags exist for the browser
tests, which need other ports and limits of seconds.
`

// demoFlags are the demo's knobs. Zero durations keep demo.yaml's values.
type demoFlags struct {
	db, ports                                   string
	mfa                                         string // login.mfa; "": demo.yaml's
	sessionIdle, portalIdle, spaIdle, videoIdle time.Duration
	warnBefore, heartbeat, checkEvery           time.Duration
}

// demoCmd runs the provider with the embedded demo configuration (seeding
// the demo user) and the three demo apps in one process, until SIGINT or
// SIGTERM.
func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f demoFlags
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage); fs.PrintDefaults() }
	fs.StringVar(&f.db, "db", "idleguard.db", "SQLite database file")
	fs.StringVar(&f.ports, "ports", "8080,9001,9002,9003", "ports of the provider, portal, spa and video, on localhost")
	fs.DurationVar(&f.sessionIdle, "idle-timeout", 0, "the provider's ceiling, session.idle_timeout (default: demo.yaml's 2m)")
	fs.DurationVar(&f.portalIdle, "portal-idle", 0, "the portal's idle_timeout (default: demo.yaml's 2m)")
	fs.DurationVar(&f.spaIdle, "spa-idle", 0, "the spa's idle_timeout (default: demo.yaml's 1m)")
	fs.DurationVar(&f.videoIdle, "video-idle", 0, "the exempt video app's own idle_timeout (default: demo.yaml's 10m)")
	fs.DurationVar(&f.warnBefore, "warn-before", 20*time.Second, "the browser library's warning, this long before the deadline")
	fs.DurationVar(&f.heartbeat, "heartbeat", 10*time.Second, "the browser library's shortest time between two heartbeats")
	fs.DurationVar(&f.checkEvery, "check-interval", 15*time.Second, "how often the browser library reads the session's status")
	fs.StringVar(&f.mfa, "mfa", "", "login.mfa: when_required, always or required (default: demo.yaml's)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", fs.Arg(0))
	}
	cfg, apps, err := demoSetup(f)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan string, 1)
	provider := make(chan error, 1)
	go func() { provider <- serve(ctx, cfg, true, stdout, stderr, ready) }()
	select {
	case <-ready:
	case err := <-provider:
		return err
	}
	apps.Logger = slog.Default() // serve set it up
	appErr := make(chan error, 1)
	go func() { appErr <- demoapps.Run(ctx, apps) }()

	fmt.Fprintf(stdout, `
idleguard demo is running. Sign in as %q with the password %q.

  portal  %-23s  server-rendered app, back-channel logout, idle limit %s
  spa     %-23s  single-page app (PKCE in the browser), idle limit %s
  video   %-23s  exempt app, its own limit %s
  (the provider's ceiling is %s; the strictest app you open sets the limit for all)

Open the portal, sign in, then open the spa and the video from the bar at the
top: no more passwords. Then stop touching everything and watch the shared
countdown; %s before the end each page warns. After the limit every app but
the video shows that it signed you out, and why. Ctrl-C stops the demo.
`, demoUser, demoPassword, apps.Portal.URL, short(apps.Portal.IdleTimeout), apps.SPA.URL, short(apps.SPA.IdleTimeout),
		apps.Video.URL, short(apps.Video.IdleTimeout), short(apps.SessionIdleTimeout), short(apps.Library.WarnBefore))

	var errs []error
	select {
	case err := <-appErr:
		errs = append(errs, err)
		cancel()
		errs = append(errs, <-provider)
	case err := <-provider:
		errs = append(errs, err)
		cancel()
		errs = append(errs, <-appErr)
	}
	return errors.Join(errs...)
}

// demoSetup applies the flags to the embedded demo configuration and
// derives the apps' configuration from it, so that the provider and the
// apps agree on every URL and limit.
func demoSetup(f demoFlags) (*Config, demoapps.Config, error) {
	cfg, err := ParseConfig(demoConfig)
	if err != nil {
		return nil, demoapps.Config{}, err
	}
	ports, err := parsePorts(f.ports)
	if err != nil {
		return nil, demoapps.Config{}, err
	}
	// demo.yaml's ports, replaced everywhere they appear.
	defaults := []string{"8080", "9001", "9002", "9003"}
	hostPort := func(s string) string {
		for i, d := range defaults {
			s = strings.ReplaceAll(s, "localhost:"+d, "localhost:"+ports[i])
		}
		return s
	}
	cfg.Database = f.db
	if f.mfa != "" {
		cfg.Login.MFA = f.mfa
	}
	cfg.Issuer = hostPort(cfg.Issuer)
	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, demoapps.Config{}, err
	}
	cfg.Listen = net.JoinHostPort(host, ports[0])
	if f.sessionIdle > 0 {
		cfg.Session.IdleTimeout = Duration(f.sessionIdle)
	}
	byID := map[string]*ClientConfig{}
	for i := range cfg.Clients {
		cl := &cfg.Clients[i]
		byID[cl.ID] = cl
		for _, list := range []*[]string{&cl.RedirectURIs, &cl.PostLogoutRedirectURIs, &cl.WebOrigins} {
			for j := range *list {
				(*list)[j] = hostPort((*list)[j])
			}
		}
		cl.BackchannelLogoutURI = hostPort(cl.BackchannelLogoutURI)
		cl.FrontchannelLogoutURI = hostPort(cl.FrontchannelLogoutURI)
	}
	for id, d := range map[string]time.Duration{"portal": f.portalIdle, "spa": f.spaIdle, "video": f.videoIdle} {
		cl := byID[id]
		if cl == nil {
			return nil, demoapps.Config{}, fmt.Errorf("demo.yaml has no client %q", id)
		}
		if d > 0 {
			cl.IdleTimeout = Duration(d)
		}
	}
	for _, cl := range byID {
		// A shorter limit needs a shorter token: access_token_ttl may not exceed it.
		if limit, _ := cfg.tokenLimit(cl); limit > 0 && time.Duration(cl.AccessTokenTTL) > limit {
			cl.AccessTokenTTL = Duration(limit)
		}
	}
	if err := cfg.Validate(); err != nil {
		return nil, demoapps.Config{}, err
	}

	app := func(id string, port string) demoapps.App {
		cl := byID[id]
		return demoapps.App{ClientID: id, ClientSecret: cl.Secret, URL: "http://localhost:" + port,
			Listen: net.JoinHostPort(host, port), IdleTimeout: time.Duration(cl.IdleTimeout), Exempt: cl.IdleExempt}
	}
	portal := app("portal", ports[1])
	if api := byID["portal-api"]; api != nil {
		portal.API = demoapps.APIClient{ClientID: api.ID, ClientSecret: api.Secret}
	}
	apps := demoapps.Config{
		Issuer: cfg.Issuer, SessionIdleTimeout: time.Duration(cfg.Session.IdleTimeout),
		Portal: portal, SPA: app("spa", ports[2]), Video: app("video", ports[3]),
		Library: demoapps.Library{WarnBefore: f.warnBefore, HeartbeatInterval: f.heartbeat, CheckInterval: f.checkEvery},
	}
	strictest := apps.SessionIdleTimeout
	for _, a := range []demoapps.App{apps.Portal, apps.SPA} {
		if a.IdleTimeout > 0 {
			strictest = min(strictest, a.IdleTimeout)
		}
	}
	if f.warnBefore >= strictest {
		return nil, demoapps.Config{}, fmt.Errorf("--warn-before %s must be shorter than the strictest idle limit, %s", f.warnBefore, strictest)
	}
	return cfg, apps, nil
}

// parsePorts reads --ports: four distinct port numbers.
func parsePorts(s string) ([]string, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return nil, fmt.Errorf("--ports wants four ports (provider,portal,spa,video), got %q", s)
	}
	seen := map[int]bool{}
	for i, p := range parts {
		p = strings.TrimSpace(p)
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 || seen[n] {
			return nil, fmt.Errorf("--ports: %q is not a free choice of port", p)
		}
		seen[n] = true
		parts[i] = p
	}
	return parts, nil
}

// short formats a duration without zero units: 2m, 1m30s, 15s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
