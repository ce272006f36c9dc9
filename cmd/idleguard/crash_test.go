package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
	_ "modernc.org/sqlite"

	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

// buildBinary compiles idleguard once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "idleguard")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// child is a provider running as a separate process.
type child struct {
	cmd     *exec.Cmd
	replica string // its name in leases and outbox claims, from its start banner
	log     string // its standard error
}

func startChild(t *testing.T, bin, config string) *child {
	t.Helper()
	cmd := exec.Command(bin, "serve", "--config", config)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	logFile, err := os.CreateTemp(t.TempDir(), "provider-*.log")
	require.NoError(t, err)
	defer logFile.Close()
	cmd.Stderr = logFile
	require.NoError(t, cmd.Start())
	banner := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				banner <- sc.Text()
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	c := &child{cmd: cmd, log: logFile.Name()}
	select {
	case line := <-banner:
		_, c.replica, _ = strings.Cut(line, "replica ")
		c.replica = strings.TrimSuffix(c.replica, ")")
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("provider did not start")
	}
	t.Cleanup(func() { c.kill() })
	return c
}

// kill is kill -9: no shutdown, no final flush.
func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		_ = c.cmd.Process.Signal(syscall.SIGKILL)
		_ = c.cmd.Wait()
	}
}

// TestKilledProviderDeliversLogoutAfterRestart ends a session, kills the
// provider with SIGKILL while the logout is still undelivered, and checks
// that the restarted provider delivers it.
// It runs on both backends: the outbox survives in either.
func TestKilledProviderDeliversLogoutAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	eachBackend(t, func(t *testing.T, db string) { testKilledProvider(t, bin, db) })
}

// countRows returns a function that runs a one-number query on the
// database, beside the provider.
func countRows(t *testing.T, database string) func(q string) (int, error) {
	t.Helper()
	if session.IsPostgresURL(database) {
		conn := pgtest.Conn(t, database)
		return func(q string) (n int, err error) { return n, conn.QueryRow(context.Background(), q).Scan(&n) }
	}
	reader, err := sql.Open("sqlite", "file:"+database+"?mode=ro")
	require.NoError(t, err)
	t.Cleanup(func() { reader.Close() })
	return func(q string) (n int, err error) { return n, reader.QueryRow(q).Scan(&n) }
}

// lapseClaims ends the outbox claims a killed provider left: a claim lapses
// 2 x backchannel.timeout + 30 s after it was taken, and the test moves it
// into the past instead of waiting (the kill may land while a delivery
// attempt holds its row).
func lapseClaims(t *testing.T, database string) {
	t.Helper()
	const q = `UPDATE logout_outbox SET claimed_until = 0 WHERE claimed_until IS NOT NULL AND delivered_at IS NULL`
	if session.IsPostgresURL(database) {
		_, err := pgtest.Conn(t, database).Exec(context.Background(), q)
		require.NoError(t, err)
		return
	}
	db, err := sql.Open("sqlite", "file:"+database+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(q)
	require.NoError(t, err)
}

func testKilledProvider(t *testing.T, bin, db string) {
	var mu sync.Mutex
	accept := false
	var got []string
	rp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if !accept {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		_ = r.ParseForm()
		got = append(got, r.PostForm.Get("logout_token"))
	}))
	defer rp.Close()

	dir := t.TempDir()
	addr := freePort(t)
	issuer := "http://" + addr
	config := filepath.Join(dir, "idleguard.yaml")
	require.NoError(t, os.WriteFile(config, fmt.Appendf(nil, `issuer: %s
listen: %s
database: %s
session:
  idle_timeout: 2s
  max_lifetime: 1h
  sweep_interval: 100ms
backchannel:
  initial_backoff: 100ms
  max_backoff: 200ms
clients:
  - client_id: bank
    client_secret: bank-secret-0123456789
    redirect_uris: [http://127.0.0.1:1/callback]
    backchannel_logout_uri: %s/backchannel-logout
    idle_timeout: 2s
    access_token_ttl: 1s
`, issuer, addr, db, rp.URL), 0o600))

	add := exec.Command(bin, "user", "add", "alice", "--config", config)
	add.Stdin = strings.NewReader("a long password\n")
	out, err := add.CombinedOutput()
	require.NoError(t, err, "%s", out)

	c := startChild(t, bin, config)
	cfg := &oauth2.Config{ClientID: "bank", ClientSecret: "bank-secret-0123456789", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: issuer + "/authorize", TokenURL: issuer + "/oauth/token"}, Scopes: []string{"openid"}}
	_, err = oidctest.Login(context.Background(), oidctest.NewBrowser(issuer, nil), issuer, cfg, "alice", "a long password")
	require.NoError(t, err)

	// Wait until the idle end is committed with its logout pending (the
	// receiver refuses it), then kill the provider.
	count := countRows(t, db)
	require.Eventually(t, func() bool {
		attempts, err := count(`SELECT attempts FROM logout_outbox WHERE delivered_at IS NULL`)
		return err == nil && attempts >= 1
	}, 15*time.Second, 50*time.Millisecond)
	c.kill()
	lapseClaims(t, db)

	mu.Lock()
	accept = true
	mu.Unlock()
	startChild(t, bin, config)
	require.Eventually(t, func() bool {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		delivered, err := count(`SELECT COUNT(*) FROM logout_outbox WHERE delivered_at IS NOT NULL`)
		return n >= 1 && err == nil && delivered == 1
	}, 15*time.Second, 50*time.Millisecond, "the logout is delivered (and recorded) after the restart")
}
