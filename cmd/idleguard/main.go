// Command idleguard runs the idleguard OpenID provider and manages its users,
// keys and sessions. It holds flags, configuration and wiring, nothing else.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/idleguard/idleguard/oidc"
	"github.com/idleguard/idleguard/session"
)

const usage = `idleguard: an OpenID Connect provider whose sessions end when people stop using their apps.

Usage:
  idleguard serve   [--config FILE]           run the provider (no --config: the embedded demo configuration)
  idleguard demo                              run the provider and three sample apps on localhost
  idleguard user    add|list|passwd|delete [NAME] [--config FILE] [--name N] [--email E]
  idleguard keys    rotate [--config FILE]
  idleguard session list USER | end SID | end-user USER [--config FILE]
  idleguard audit   [--user USER] [--sid SID] [--config FILE]
  idleguard migrate [--config FILE]           bring the database schema up to date (serve does it too)

Passwords are read from standard input.
`

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "idleguard:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return serveCmd(ctx, rest, stdout, stderr)
	case "demo":
		return demoCmd(ctx, rest, stdout, stderr)
	case "user":
		return userCmd(ctx, rest, stdin, stdout)
	case "keys":
		return keysCmd(ctx, rest, stdout)
	case "session":
		return sessionCmd(ctx, rest, stdout)
	case "audit":
		return auditCmd(ctx, rest, stdout)
	case "migrate":
		return migrateCmd(ctx, rest, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// loadConfig reads --config, or the embedded demo configuration.
func loadConfig(path string) (*Config, bool, error) {
	if path == "" {
		cfg, err := ParseConfig(demoConfig)
		return cfg, true, err
	}
	cfg, err := LoadConfig(path)
	return cfg, false, err
}

// Demo credentials, printed at start when the embedded demo config is used.
const (
	demoUser     = "demo"
	demoPassword = "demo-password"
)

func serveCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	configPath := fs.String("config", "", "configuration file (default: embedded demo configuration)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, demo, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, cfg, demo, stdout, stderr, nil)
}

// serve runs the provider until ctx ends. ready, if set, receives the
// listening address.
func serve(ctx context.Context, cfg *Config, demo bool, stdout, stderr io.Writer, ready chan<- string) error {
	logger := cfg.Logger(stderr)
	slog.SetDefault(logger) // the protocol library logs through the default
	store, err := openDatabase(ctx, cfg.Database)
	if err != nil {
		return err
	}
	defer store.Close()
	if demo {
		if err := seedDemoUser(ctx, store); err != nil {
			return err
		}
	}
	pcfg, err := cfg.ProviderConfig()
	if err != nil {
		return err
	}
	pcfg.Logger = logger
	p, err := oidc.New(ctx, pcfg, store)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	p.Run(runCtx)
	srv := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      serverWriteTimeout, // above ssf.poll_wait
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	fmt.Fprintf(stdout, "idleguard listening on http://%s (issuer %s, database %s, replica %s)\n", ln.Addr(), cfg.Issuer,
		session.RedactURL(cfg.Database), p.ReplicaID())
	if demo {
		fmt.Fprintf(stdout, "demo configuration: sign in as %q with password %q\n", demoUser, demoPassword)
	}
	for _, c := range pcfg.Clients {
		fmt.Fprintf(stdout, "client %-10s redirect %v idle_timeout %s exempt %t\n", c.ID, c.RedirectURIs, c.Policy.IdleTimeout, c.Policy.Exempt)
	}
	if ready != nil {
		ready <- ln.Addr().String()
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, done := context.WithTimeout(context.Background(), 10*time.Second)
	defer done()
	err = srv.Shutdown(shutdownCtx)
	return errors.Join(err, p.Close(shutdownCtx))
}

func seedDemoUser(ctx context.Context, store database) error {
	if _, err := store.UserByUsername(ctx, demoUser); err == nil {
		return nil
	}
	hash, err := session.HashPassword(demoPassword)
	if err != nil {
		return err
	}
	err = store.CreateUser(ctx, &session.User{Username: demoUser, PasswordHash: hash, Name: "Demo User",
		Email: "demo@example.com", EmailVerified: true, CreatedAt: time.Now()})
	if errors.Is(err, session.ErrConflict) {
		return nil
	}
	return err
}
