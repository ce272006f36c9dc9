// Command idleguard-load measures idleguard under load on this machine.
//
// It builds the idleguard binary (or takes -bin), writes a temporary
// configuration (a loopback issuer on a free port, three load clients) on a
// temporary SQLite file or on PostgreSQL (-database), seeds one user per
// session (cheap argon2id), starts the provider as a child process (or
// -replicas of them on one PostgreSQL database, sign-ins through a
// round-robin balancer and the load spread over them), signs in -sessions
// people through the real endpoints (login form, code flow with PKCE, code
// exchange with x/oauth2), then drives a mix of requests with -concurrency
// workers for -duration, and prints throughput, p50/p99 latency and errors
// per kind, the provider's peak memory and CPU time, the SQLite file size
// per session or PostgreSQL's write transactions and WAL per request.
//
//	go run ./cmd/idleguard-load -duration 10s
//	go run ./cmd/idleguard-load -sessions 1000 -seed-sql 1000000 -mix introspect=100
//	go run ./cmd/idleguard-load -alg ES256 -mix refresh=100
//	go run ./cmd/idleguard-load -mix forwardauth=100   # the gateway check; compare with -mix introspect=100
//	go run ./cmd/idleguard-load -database postgres -replicas 2 -compare-sqlite -mix heartbeat=100
//
// Every request goes to 127.0.0.1; the run stops by itself after -duration
// (setup is bounded by -setup-timeout) and the provider is stopped with it.
// Linux only: memory and CPU are read from /proc.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

type options struct {
	sessions     int
	duration     time.Duration
	concurrency  int
	mix          mix
	alg          string
	token        string
	keep         bool
	bin          string
	seedSQL      int
	setupTimeout time.Duration
	database     string // sqlite, postgres (a throwaway server) or a postgres:// URL
	replicas     int
	compare      bool // first run one SQLite node with the same options, then compare
	idle         time.Duration
}

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "idleguard-load:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("idleguard-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var mixSpec string
	fs.IntVar(&o.sessions, "sessions", 1000, "people signed in through the real endpoints before the run")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of the measured run")
	fs.IntVar(&o.concurrency, "concurrency", 32, "workers sending requests, each one at a time")
	fs.StringVar(&mixSpec, "mix", "introspect=70,heartbeat=20,refresh=8,sso=2",
		"request mix as kind=weight,...; kinds: "+strings.Join(kindNames(), ", "))
	fs.StringVar(&o.alg, "alg", "RS256", "signing algorithm of the provider: RS256, ES256 or EdDSA")
	fs.StringVar(&o.token, "token", "jwt", "access token format of the load app: jwt or opaque")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (config, database, provider log)")
	fs.StringVar(&o.bin, "bin", "", "idleguard binary to run (default: go build it into the temporary directory)")
	fs.IntVar(&o.seedSQL, "seed-sql", 0, "insert this many extra idle-but-live sessions directly with SQL before the provider starts")
	fs.StringVar(&o.database, "database", "sqlite", "sqlite (a temporary file), postgres (a throwaway server from Debian's postgresql package), or the postgres:// URL of an empty database")
	fs.IntVar(&o.replicas, "replicas", 1, "providers to start on the database; the load is spread over them, sign-ins go through a round-robin balancer")
	fs.BoolVar(&o.compare, "compare-sqlite", false, "first run one provider on SQLite with the same options, then this run, and print the throughput of this one as a share of that")
	fs.DurationVar(&o.idle, "idle-timeout", 8*time.Hour, "session.idle_timeout of the provider (access tokens live at most 1h); a short one makes coalesced activity reach the database within the run")
	fs.DurationVar(&o.setupTimeout, "setup-timeout", 20*time.Minute, "give up if building, seeding, starting and signing in take longer")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: idleguard-load [flags]\n\nStarts idleguard on 127.0.0.1 as a child process, signs people in, drives a request mix and reports.\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.mix, err = parseMix(mixSpec); err != nil {
		return err
	}
	switch {
	case o.sessions < 1:
		return errors.New("-sessions must be at least 1")
	case o.concurrency < 1:
		return errors.New("-concurrency must be at least 1")
	case o.duration <= 0 || o.duration > 24*time.Hour:
		return errors.New("-duration must be positive and at most 24h")
	case o.seedSQL < 0:
		return errors.New("-seed-sql must not be negative")
	case o.alg != "RS256" && o.alg != "ES256" && o.alg != "EdDSA":
		return fmt.Errorf("-alg %q: want RS256, ES256 or EdDSA", o.alg)
	case o.token != "jwt" && o.token != "opaque":
		return fmt.Errorf("-token %q: want jwt or opaque", o.token)
	case o.idle < time.Minute:
		return errors.New("-idle-timeout must be at least 1m")
	case o.replicas < 1 || o.replicas > 16:
		return errors.New("-replicas must be between 1 and 16")
	case o.database != "sqlite" && o.database != "postgres" && !session.IsPostgresURL(o.database):
		return fmt.Errorf("-database %q: want sqlite, postgres or a postgres:// URL", o.database)
	case o.database == "sqlite" && o.replicas > 1:
		return errors.New("-replicas above 1 needs -database postgres (replicas share a PostgreSQL database)")
	case o.seedSQL > 0 && o.database != "sqlite":
		return errors.New("-seed-sql works with -database sqlite only")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "idleguard-load-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Fprintf(stderr, "kept %s (config-*.yaml, idleguard.db, provider-*.log)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if o.bin == "" {
		o.bin = filepath.Join(dir, "idleguard")
		fmt.Fprintf(stderr, "load: building idleguard into %s\n", dir)
		if err := buildProvider(ctx, o.bin); err != nil {
			return err
		}
	}
	if !o.compare {
		_, err := loadOn(ctx, o, dir, stdout, stderr)
		return err
	}
	base := o
	base.database, base.replicas = "sqlite", 1
	baseDir := filepath.Join(dir, "sqlite")
	if err := os.Mkdir(baseDir, 0o700); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "== baseline: one provider on SQLite")
	ref, err := loadOn(ctx, base, baseDir, stdout, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\n== %d provider(s) on %s\n", o.replicas, o.database)
	got, err := loadOn(ctx, o, dir, stdout, stderr)
	if err != nil {
		return err
	}
	compare(stdout, o, ref, got)
	return nil
}

// loadOn runs load on the database o names: a temporary SQLite file in dir,
// a throwaway PostgreSQL server, or the given URL.
func loadOn(ctx context.Context, o options, dir string, stdout, stderr io.Writer) (*result, error) {
	switch o.database {
	case "sqlite":
		return load(ctx, o, dir, filepath.Join(dir, "idleguard.db"), stdout, stderr)
	case "postgres":
		srv, err := pgtest.Launch()
		if err != nil {
			return nil, fmt.Errorf("-database postgres: start a throwaway server: %w", err)
		}
		defer srv.Close()
		dsn, err := srv.CreateDatabase(ctx, "idleguard_load")
		if err != nil {
			return nil, err
		}
		return load(ctx, o, dir, dsn, stdout, stderr)
	}
	return load(ctx, o, dir, o.database, stdout, stderr)
}

func load(ctx context.Context, o options, dir, database string, stdout, stderr io.Writer) (*result, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "load: "+format+"\n", args...) }
	setupCtx, cancelSetup := context.WithTimeout(ctx, o.setupTimeout)
	defer cancelSetup()

	prov, err := prepareProvider(o, dir, database)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := seedUsers(setupCtx, database, o.sessions); err != nil {
		return nil, err
	}
	logf("seeded %d users (argon2id t=1 m=8KiB) in %s", o.sessions, since(start))
	if o.seedSQL > 0 {
		start = time.Now()
		if err := seedSessionsSQL(setupCtx, prov.dbPath, o.seedSQL, "load-app", time.Now()); err != nil {
			return nil, err
		}
		logf("seeded %d idle-but-live sessions directly with SQL in %s", o.seedSQL, since(start))
	}
	if err := prov.start(setupCtx, o.bin); err != nil {
		_ = prov.stop()
		return nil, err
	}
	defer func() {
		if err := prov.stop(); err != nil {
			logf("stopping the provider: %v", err)
		}
	}()
	rssStart := prov.memory()
	logf("provider pid %v on %s (%d replica(s), %s, %s, %s access tokens), RSS %s, peak so far %s", prov.pids(), prov.issuer, o.replicas,
		session.RedactURL(database), o.alg, o.token, mb(rssStart.rss), mb(rssStart.peak))
	peakReset := prov.resetPeak()

	c := newLoadClient(prov, o.concurrency)
	start = time.Now()
	sessions, err := c.signInAll(setupCtx, o.sessions, signInWorkers(), stderr)
	if err != nil {
		return nil, err
	}
	signInTime := time.Since(start)
	logf("signed in %d people through /authorize, /login and /oauth/token in %s (%.0f/s)",
		len(sessions), signInTime.Round(time.Millisecond), float64(len(sessions))/signInTime.Seconds())
	rssSignedIn := prov.memory()
	cancelSetup()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	writes0 := readWrites(ctx, database)
	cpu0 := prov.cpuTime()
	self0 := selfCPUTime()
	res := c.drive(ctx, sessions, o, stderr)
	provCPU := prov.cpuTime() - cpu0
	selfCPU := selfCPUTime() - self0
	writes := readWrites(ctx, database).since(writes0)
	mem := prov.memory()
	db := prov.dbSize()

	report(stdout, reportData{
		opts: o, res: res, signIn: signInTime, rssStart: rssStart, rssSignedIn: rssSignedIn, rssEnd: mem, peakReset: peakReset,
		providerCPU: provCPU, loadCPU: selfCPU, db: db, writes: writes,
	})
	if res.interrupted {
		return nil, errors.New("interrupted")
	}
	return res, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

func mb(bytes int64) string {
	if bytes <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MB", float64(bytes)/(1<<20))
}
