package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/idleguard/idleguard/session"
)

// provider is the idleguard under test: one or more replicas (child
// processes) on one database, and the files they run on. With several
// replicas the issuer is a round-robin balancer in this process, which
// carries the browser flows (any request of a sign-in may land on any
// replica); the load itself goes to the replicas directly, spread evenly,
// so that the balancer's own cost is not measured.
type provider struct {
	dir      string
	database string // the database setting: a SQLite file or a postgres:// URL
	dbPath   string // the SQLite file, or ""
	host     string // the issuer's 127.0.0.1:port
	issuer   string
	secrets  map[string]string // client id -> secret, passed to the children in their environment
	token    string            // jwt or opaque
	replicas []*replica
	lb       *http.Server // several replicas: the issuer's balancer
}

// replica is one idleguard child process.
type replica struct {
	host    string // 127.0.0.1:port
	base    string // http://host
	config  string
	logPath string
	cmd     *exec.Cmd
	exited  chan error
}

// The load clients. load-app is the app people sign in to (its tokens are
// introspected, sent as heartbeats and refreshed); load-sso is a second app
// opened from the same browser (single sign-on); load-api is the resource
// server that introspects.
var loadClients = []string{"load-app", "load-sso", "load-api"}

func secretEnv(client string) string {
	return "IDLEGUARD_LOAD_" + strings.ToUpper(strings.ReplaceAll(client, "-", "_")) + "_SECRET"
}

func redirectURI(client string) string { return "http://127.0.0.1:1/" + client + "/callback" }

// buildProvider compiles cmd/idleguard into bin. It must run inside the
// idleguard module (go run ./cmd/idleguard-load does).
func buildProvider(ctx context.Context, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/idleguard/idleguard/cmd/idleguard")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build of idleguard failed (run inside the module, or pass -bin PATH): %w", err)
	}
	return nil
}

func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func randomSecret() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// prepareProvider writes the configurations, one per replica, identical
// but for listen. Idle limits are generous by default (-idle-timeout 8h,
// access tokens 1h) so that the run measures the hot paths, not renewals;
// a shorter limit shows what coalesced activity writes (its slack is a
// tenth of the limit, at most 30 s).
func prepareProvider(o options, dir, database string) (*provider, error) {
	p := &provider{dir: dir, database: database, secrets: map[string]string{}, token: o.token}
	if !session.IsPostgresURL(database) {
		p.dbPath = database
	}
	for _, c := range loadClients {
		p.secrets[c] = randomSecret()
	}
	for i := range o.replicas {
		host, err := freeLoopbackPort()
		if err != nil {
			return nil, err
		}
		p.replicas = append(p.replicas, &replica{host: host, base: "http://" + host,
			config: filepath.Join(dir, fmt.Sprintf("config-%d.yaml", i)), logPath: filepath.Join(dir, fmt.Sprintf("provider-%d.log", i))})
	}
	p.host = p.replicas[0].host
	if o.replicas > 1 {
		var err error
		if p.host, err = freeLoopbackPort(); err != nil {
			return nil, err
		}
	}
	p.issuer = "http://" + p.host
	for _, r := range p.replicas {
		if err := os.WriteFile(r.config, []byte(p.configFor(o, r.host)), 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (p *provider) configFor(o options, listen string) string {
	ttl := min(time.Hour, o.idle)
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by idleguard-load; secrets come from the environment.
issuer: %s
listen: %s
database: %s
session:
  idle_timeout: %s
  max_lifetime: 24h
  sweep_interval: 1s
  replicas: %d
keys:
  algorithm: %s
login:
  max_failures: 1000000
clients:
  - client_id: load-app
    client_secret: ${%s}
    redirect_uris: [%s]
    access_token_ttl: %s
    access_token_format: %s
  - client_id: load-sso
    client_secret: ${%s}
    redirect_uris: [%s]
    access_token_ttl: %s
  - client_id: load-api
    client_secret: ${%s}
    redirect_uris: [%s]
`, p.issuer, listen, p.database, o.idle, o.replicas, o.alg,
		secretEnv("load-app"), redirectURI("load-app"), ttl, o.token,
		secretEnv("load-sso"), redirectURI("load-sso"), ttl,
		secretEnv("load-api"), redirectURI("load-api"))
	return b.String()
}

// start starts every replica, one after the other (the first migrates the
// database), and with several the balancer in front of them.
func (p *provider) start(ctx context.Context, bin string) error {
	for _, r := range p.replicas {
		if err := r.start(ctx, bin, p.secrets); err != nil {
			return err
		}
	}
	if len(p.replicas) > 1 {
		return p.startBalancer()
	}
	return nil
}

// startBalancer serves the issuer's address, sending each request to the
// next replica in turn (no sticky sessions).
func (p *provider) startBalancer() error {
	ln, err := net.Listen("tcp", p.host)
	if err != nil {
		return err
	}
	var next atomic.Uint64
	proxies := make([]*httputil.ReverseProxy, len(p.replicas))
	for i, r := range p.replicas {
		proxies[i] = httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: r.host})
	}
	p.lb = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		proxies[next.Add(1)%uint64(len(proxies))].ServeHTTP(w, r)
	})}
	go func() { _ = p.lb.Serve(ln) }()
	return nil
}

// stop stops the balancer and every replica.
func (p *provider) stop() error {
	var errs []error
	if p.lb != nil {
		errs = append(errs, p.lb.Close())
	}
	for _, r := range p.replicas {
		errs = append(errs, r.stop())
	}
	return errors.Join(errs...)
}

// pids lists the replicas' process ids.
func (p *provider) pids() []int {
	var out []int
	for _, r := range p.replicas {
		if r.cmd != nil && r.cmd.Process != nil {
			out = append(out, r.cmd.Process.Pid)
		}
	}
	return out
}

// memory is the replicas' resident memory, summed.
func (p *provider) memory() memInfo {
	var m memInfo
	for _, r := range p.replicas {
		rm := r.memory()
		m.rss, m.peak = m.rss+rm.rss, m.peak+rm.peak
	}
	return m
}

// resetPeak resets every replica's peak RSS, and reports whether it could.
func (p *provider) resetPeak() bool {
	ok := true
	for _, r := range p.replicas {
		ok = r.resetPeak() && ok
	}
	return ok
}

// cpuTime is the replicas' CPU time so far, summed.
func (p *provider) cpuTime() time.Duration {
	var d time.Duration
	for _, r := range p.replicas {
		d += r.cpuTime()
	}
	return d
}

// start runs `idleguard serve` and waits until discovery answers.
func (p *replica) start(ctx context.Context, bin string, secrets map[string]string) error {
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return err
	}
	p.cmd = exec.Command(bin, "serve", "--config", p.config)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.Env = os.Environ()
	for c, s := range secrets {
		p.cmd.Env = append(p.cmd.Env, secretEnv(c)+"="+s)
	}
	setChildAttrs(p.cmd)
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	logFile.Close() // the child holds its own descriptor
	p.exited = make(chan error, 1)
	go func() { p.exited <- p.cmd.Wait() }()

	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get(p.base + "/.well-known/openid-configuration")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("the provider exited during start (%v); its log:\n%s", err, p.logTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the provider did not answer on %s within 2m; its log:\n%s", p.base, p.logTail())
		}
	}
}

func (p *replica) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop sends SIGTERM (graceful: the provider flushes activity) and kills
// the child if it has not exited after 15s.
func (p *replica) stop() error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		var exit *exec.ExitError
		if errors.As(err, &exit) && exit.ExitCode() == -1 { // ended by our signal
			return nil
		}
		return err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("the provider did not stop within 15s of SIGTERM; killed")
	}
}

// dbFiles is the size of the SQLite database and its write-ahead log.
type dbFiles struct{ db, wal int64 }

func (p *provider) dbSize() dbFiles {
	if p.dbPath == "" {
		return dbFiles{}
	}
	size := func(path string) int64 {
		fi, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	return dbFiles{db: size(p.dbPath), wal: size(p.dbPath + "-wal")}
}
