// Command idleguard-load measures idleguard under load on this machine.
//
// It builds the idleguard binary (or takes -bin), writes a temporary
// configuration (a loopback issuer on a free port, a temporary SQLite file,
// three load clients), seeds one user per session (cheap argon2id), starts
// the provider as a child process, signs in -sessions people through the
// real endpoints (login form, code flow with PKCE, code exchange with
// x/oauth2), then drives a mix of requests with -concurrency workers for
// -duration, and prints throughput, p50/p99 latency and errors per kind, the
// provider's peak memory and CPU time, and the SQLite file size per session.
//
//	go run ./cmd/idleguard-load -duration 10s
//	go run ./cmd/idleguard-load -sessions 1000 -seed-sql 1000000 -mix introspect=100
//	go run ./cmd/idleguard-load -alg ES256 -mix refresh=100
//	go run ./cmd/idleguard-load -mix forwardauth=100   # the gateway check; compare with -mix introspect=100
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
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "idleguard-load-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Fprintf(stderr, "kept %s (config.yaml, idleguard.db, provider.log)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	return load(ctx, o, dir, stdout, stderr)
}

func load(ctx context.Context, o options, dir string, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "load: "+format+"\n", args...) }
	setupCtx, cancelSetup := context.WithTimeout(ctx, o.setupTimeout)
	defer cancelSetup()

	bin := o.bin
	if bin == "" {
		bin = filepath.Join(dir, "idleguard")
		logf("building idleguard into %s", dir)
		if err := buildProvider(setupCtx, bin); err != nil {
			return err
		}
	}
	prov, err := prepareProvider(o, dir)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := seedUsers(setupCtx, prov.dbPath, o.sessions); err != nil {
		return err
	}
	logf("seeded %d users (argon2id t=1 m=8KiB) in %s", o.sessions, since(start))
	if o.seedSQL > 0 {
		start = time.Now()
		if err := seedSessionsSQL(setupCtx, prov.dbPath, o.seedSQL, "load-app", time.Now()); err != nil {
			return err
		}
		logf("seeded %d idle-but-live sessions directly with SQL in %s", o.seedSQL, since(start))
	}
	if err := prov.start(setupCtx, bin); err != nil {
		return err
	}
	defer func() {
		if err := prov.stop(); err != nil {
			logf("stopping the provider: %v", err)
		}
	}()
	rssStart := prov.memory()
	logf("provider pid %d on %s (%s, %s access tokens), RSS %s, peak so far %s", prov.cmd.Process.Pid, prov.issuer, o.alg, o.token,
		mb(rssStart.rss), mb(rssStart.peak))
	peakReset := prov.resetPeak()

	c := newLoadClient(prov, o.concurrency)
	start = time.Now()
	sessions, err := c.signInAll(setupCtx, o.sessions, signInWorkers(), stderr)
	if err != nil {
		return err
	}
	signInTime := time.Since(start)
	logf("signed in %d people through /authorize, /login and /oauth/token in %s (%.0f/s)",
		len(sessions), signInTime.Round(time.Millisecond), float64(len(sessions))/signInTime.Seconds())
	rssSignedIn := prov.memory()
	cancelSetup()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	cpu0 := prov.cpuTime()
	self0 := selfCPUTime()
	res := c.drive(ctx, sessions, o, stderr)
	provCPU := prov.cpuTime() - cpu0
	selfCPU := selfCPUTime() - self0
	mem := prov.memory()
	db := prov.dbSize()

	report(stdout, reportData{
		opts: o, res: res, signIn: signInTime, rssStart: rssStart, rssSignedIn: rssSignedIn, rssEnd: mem, peakReset: peakReset,
		providerCPU: provCPU, loadCPU: selfCPU, db: db,
	})
	if res.interrupted {
		return errors.New("interrupted")
	}
	return nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

func mb(bytes int64) string {
	if bytes <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.1f MB", float64(bytes)/(1<<20))
}
