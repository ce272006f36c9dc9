package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// provider is the idleguard child process and the files it runs on.
type provider struct {
	dir     string
	config  string
	dbPath  string
	logPath string
	host    string // 127.0.0.1:port
	issuer  string
	secrets map[string]string // client id -> secret, passed to the child in its environment
	token   string            // jwt or opaque
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

// prepareProvider writes the configuration. Idle limits are generous (8h,
// access tokens 1h) so that the run measures the hot paths, not renewals.
func prepareProvider(o options, dir string) (*provider, error) {
	host, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	p := &provider{dir: dir, config: filepath.Join(dir, "config.yaml"), dbPath: filepath.Join(dir, "idleguard.db"),
		logPath: filepath.Join(dir, "provider.log"), host: host, issuer: "http://" + host,
		secrets: map[string]string{}, token: o.token}
	for _, c := range loadClients {
		p.secrets[c] = randomSecret()
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by idleguard-load; secrets come from the environment.
issuer: %s
listen: %s
database: %s
session:
  idle_timeout: 8h
  max_lifetime: 24h
  sweep_interval: 1s
keys:
  algorithm: %s
login:
  max_failures: 1000000
clients:
  - client_id: load-app
    client_secret: ${%s}
    redirect_uris: [%s]
    access_token_ttl: 1h
    access_token_format: %s
  - client_id: load-sso
    client_secret: ${%s}
    redirect_uris: [%s]
    access_token_ttl: 1h
  - client_id: load-api
    client_secret: ${%s}
    redirect_uris: [%s]
`, p.issuer, p.host, p.dbPath, o.alg,
		secretEnv("load-app"), redirectURI("load-app"), o.token,
		secretEnv("load-sso"), redirectURI("load-sso"),
		secretEnv("load-api"), redirectURI("load-api"))
	if err := os.WriteFile(p.config, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// start runs `idleguard serve` and waits until discovery answers.
func (p *provider) start(ctx context.Context, bin string) error {
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return err
	}
	p.cmd = exec.Command(bin, "serve", "--config", p.config)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.Env = os.Environ()
	for c, s := range p.secrets {
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
		resp, err := client.Get(p.issuer + "/.well-known/openid-configuration")
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
			return fmt.Errorf("the provider did not answer on %s within 2m; its log:\n%s", p.issuer, p.logTail())
		}
	}
}

func (p *provider) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// stop sends SIGTERM (graceful: the provider flushes activity) and kills
// the child if it has not exited after 15s.
func (p *provider) stop() error {
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
	size := func(path string) int64 {
		fi, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	return dbFiles{db: size(p.dbPath), wal: size(p.dbPath + "-wal")}
}
