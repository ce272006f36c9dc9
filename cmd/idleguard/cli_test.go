package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/migrations"
	"github.com/idleguard/idleguard/oidc/oidctest"
	"github.com/idleguard/idleguard/session"
	"github.com/idleguard/idleguard/session/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func writeConfig(t *testing.T, extra string) (string, string, string) {
	t.Helper()
	return writeConfigOn(t, filepath.Join(t.TempDir(), "idleguard.db"), extra)
}

// writeConfigOn writes a configuration whose database setting is database
// (a SQLite path or a postgres:// URL) and returns its path, the issuer and
// database.
func writeConfigOn(t *testing.T, database, extra string) (string, string, string) {
	t.Helper()
	dir := t.TempDir()
	addr := freePort(t)
	path := filepath.Join(dir, "idleguard.yaml")
	require.NoError(t, os.WriteFile(path, fmt.Appendf(nil, `issuer: http://%s
listen: %s
database: %s
session:
  idle_timeout: 30m
  max_lifetime: 12h
admin:
  token: admin-token-0123456789abcdef
clients:
  - client_id: mail
    client_secret: mail-secret-0123456789
    redirect_uris: [http://127.0.0.1:1/callback]
%s`, addr, addr, database, extra), 0o600))
	return path, "http://" + addr, database
}

// eachBackend runs fn on a fresh SQLite file and on a fresh PostgreSQL
// database: every command must work on both.
func eachBackend(t *testing.T, fn func(t *testing.T, database string)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, filepath.Join(t.TempDir(), "idleguard.db")) })
	t.Run("postgres", func(t *testing.T) { fn(t, pgtest.NewDatabase(t)) })
}

func TestMigrateCommand(t *testing.T) {
	eachBackend(t, func(t *testing.T, database string) {
		config, _, _ := writeConfigOn(t, database, "")
		out, err := runCLI(t, "", "migrate", "--config", config)
		require.NoError(t, err, out)
		want, err := migrations.Latest(dialect(database))
		require.NoError(t, err)
		require.Contains(t, out, fmt.Sprintf("is at schema version %d", want))
		out, err = runCLI(t, "", "migrate", "--config", config)
		require.NoError(t, err, "migrating a current schema is a no-op")
		require.Contains(t, out, fmt.Sprintf("is at schema version %d", want))
		_, err = runCLI(t, "", "migrate", "extra", "--config", config)
		require.ErrorContains(t, err, "usage: idleguard migrate")
	})
}

// TestServeNeverPrintsTheDatabasePassword: the start banner names the
// database without its password.
func TestServeNeverPrintsTheDatabasePassword(t *testing.T) {
	u, err := url.Parse(pgtest.NewDatabase(t))
	require.NoError(t, err)
	u.User = url.UserPassword(u.User.Username(), "pw-0123456789") // trust auth: any password is accepted
	config, _, _ := writeConfigOn(t, u.String(), "")
	cfg, _, err := loadConfig(config)
	require.NoError(t, err)
	var out bytes.Buffer
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, false, &out, &bytes.Buffer{}, ready) }()
	<-ready
	cancel()
	require.NoError(t, <-done)
	require.Contains(t, out.String(), "database postgres://")
	require.NotContains(t, out.String(), "pw-0123456789")
}

func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(t.Context(), args, strings.NewReader(stdin), &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestUserCommands(t *testing.T) { eachBackend(t, testUserCommands) }

func testUserCommands(t *testing.T, db string) {
	config, _, _ := writeConfigOn(t, db, "")
	out, err := runCLI(t, "a long password\n", "user", "add", "alice", "--config", config, "--name", "Alice A", "--email", "alice@example.com")
	require.NoError(t, err, out)
	_, err = runCLI(t, "another password\n", "user", "add", "alice", "--config", config)
	require.ErrorIs(t, err, session.ErrConflict)
	_, err = runCLI(t, "short\n", "user", "add", "bob", "--config", config)
	require.ErrorContains(t, err, "at least 8 characters")

	out, err = runCLI(t, "", "user", "list", "--config", config)
	require.NoError(t, err)
	require.Contains(t, out, "alice")
	require.Contains(t, out, "alice@example.com")

	store, err := openDatabase(t.Context(), db)
	require.NoError(t, err)
	u, err := store.UserByUsername(t.Context(), "alice")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(u.PasswordHash, "$argon2id$"), "argon2id, never the password")
	require.True(t, session.VerifyPassword(u.PasswordHash, "a long password"))
	store.Close()

	_, err = runCLI(t, "a new password\n", "user", "passwd", "alice", "--config", config)
	require.NoError(t, err)
	store, err = openDatabase(t.Context(), db)
	require.NoError(t, err)
	u, err = store.UserByUsername(t.Context(), "alice")
	require.NoError(t, err)
	require.True(t, session.VerifyPassword(u.PasswordHash, "a new password"))
	store.Close()

	_, err = runCLI(t, "", "user", "delete", "alice", "--config", config)
	require.NoError(t, err)
	_, err = runCLI(t, "", "user", "delete", "alice", "--config", config)
	require.ErrorIs(t, err, session.ErrNotFound)
}

func TestConfigErrorsNameTheField(t *testing.T) {
	config, _, _ := writeConfig(t, "    idle_timeout: soon\n")
	_, err := runCLI(t, "", "user", "list", "--config", config)
	require.ErrorContains(t, err, "clients[0].idle_timeout")
}

func TestKeysRotate(t *testing.T) { eachBackend(t, testKeysRotate) }

func testKeysRotate(t *testing.T, db string) {
	config, _, _ := writeConfigOn(t, db, "")
	out, err := runCLI(t, "", "keys", "rotate", "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, "new signing key")
	store, err := openDatabase(t.Context(), db)
	require.NoError(t, err)
	defer store.Close()
	keys, err := store.SigningKeys(t.Context(), time.Now())
	require.NoError(t, err)
	require.Len(t, keys, 2, "the first key and the rotated one are both published")
	require.False(t, keys[1].RetireAt.IsZero(), "the old key is scheduled to leave the JWKS")
}

// TestSessionAndAuditCommands runs a provider in-process and manages its
// sessions through the CLI, which goes through the admin API.
func TestSessionAndAuditCommands(t *testing.T) { eachBackend(t, testSessionAndAuditCommands) }

func testSessionAndAuditCommands(t *testing.T, db string) {
	config, issuer, _ := writeConfigOn(t, db, "")
	_, err := runCLI(t, "a long password\n", "user", "add", "alice", "--config", config)
	require.NoError(t, err)
	defer serveInProcess(t, config, &bytes.Buffer{})()

	oc := &oauth2.Config{ClientID: "mail", ClientSecret: "mail-secret-0123456789", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: issuer + "/authorize", TokenURL: issuer + "/oauth/token"}, Scopes: []string{"openid"}}
	tok, err := oidctest.Login(t.Context(), oidctest.NewBrowser(issuer, nil), issuer, oc, "alice", "a long password")
	require.NoError(t, err)
	require.NotEmpty(t, tok.AccessToken)

	out, err := runCLI(t, "", "session", "list", "alice", "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, `"client_id": "mail"`)
	sid := between(out, `"sid": "`, `"`)
	require.NotEmpty(t, sid)

	out, err = runCLI(t, "", "session", "end", sid, "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, `"end_reason": "admin"`)

	out, err = runCLI(t, "", "audit", "--user", "alice", "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, "session_start")
	require.Contains(t, out, "app_join")
	require.Regexp(t, `session_end\s+`+sid+`\s+admin\s+admin`, out)

	_, err = runCLI(t, "", "session", "end", "unknown", "--config", config)
	require.ErrorContains(t, err, "404")

	// Ending a person's sessions goes through the running provider too,
	// from the session command and before a deletion.
	_, err = oidctest.Login(t.Context(), oidctest.NewBrowser(issuer, nil), issuer, oc, "alice", "a long password")
	require.NoError(t, err)
	out, err = runCLI(t, "", "session", "end-user", "alice", "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, "ended 1 session(s) of alice")
	_, err = oidctest.Login(t.Context(), oidctest.NewBrowser(issuer, nil), issuer, oc, "alice", "a long password")
	require.NoError(t, err)
	out, err = runCLI(t, "", "user", "delete", "alice", "--config", config)
	require.NoError(t, err, out)
	require.Contains(t, out, "deleted user alice; ended 1 live session(s)")
}

// serveInProcess runs `idleguard serve` with the configuration file until
// the returned stop is called; it logs to stderr.
func serveInProcess(t *testing.T, config string, stderr io.Writer) (stop func()) {
	t.Helper()
	cfg, _, err := loadConfig(config)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, false, &bytes.Buffer{}, stderr, ready) }()
	<-ready
	return func() { cancel(); require.NoError(t, <-done) }
}

func between(s, start, end string) string {
	_, rest, ok := strings.Cut(s, start)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, end)
	return v
}

// TestSessionIDsMayStartWithADash: a session id is URL-safe base64 and
// one in 32 begins with "-"; it is an argument, not an unknown flag.
func TestSessionIDsMayStartWithADash(t *testing.T) {
	fs := flag.NewFlagSet("session", flag.ContinueOnError)
	config := fs.String("config", "", "")
	pos, err := parseFlags(fs, []string{"end", "-3vXwRySOmoPd7Q11JNbQQ", "--config", "x.yaml"})
	require.NoError(t, err)
	require.Equal(t, []string{"end", "-3vXwRySOmoPd7Q11JNbQQ"}, pos)
	require.Equal(t, "x.yaml", *config)
	_, err = parseFlags(fs, []string{"end", "--config"})
	require.Error(t, err, "a flag without its value is still an error")
}

// TestUnreachablePostgresIsAClearError: a database that does not answer
// stops the command with an error that names it, without its password.
func TestUnreachablePostgresIsAClearError(t *testing.T) {
	config, _, _ := writeConfigOn(t, "postgres://idleguard:pw-0123456789@"+freePort(t)+"/idleguard?connect_timeout=2", "")
	_, err := runCLI(t, "", "migrate", "--config", config)
	require.ErrorContains(t, err, "migrate postgres://idleguard:xxxxx@127.0.0.1:")
	require.NotContains(t, err.Error(), "pw-0123456789")
}

// Issue 9, finding 9: a newline, NUL or U+202E in a recorded value must not
// forge or disguise a line of `idleguard audit`.
func TestAuditOutputCannotBeForged(t *testing.T) {
	config, issuer, _ := writeConfig(t, "")
	weird := "eve\u202eevil\x00\ttab"
	_, err := runCLI(t, "a long password\n", "user", "add", weird, "--config", config)
	require.NoError(t, err)
	defer serveInProcess(t, config, &bytes.Buffer{})()

	oc := &oauth2.Config{ClientID: "mail", ClientSecret: "mail-secret-0123456789", RedirectURL: "http://127.0.0.1:1/callback",
		Endpoint: oauth2.Endpoint{AuthURL: issuer + "/authorize", TokenURL: issuer + "/oauth/token"}, Scopes: []string{"openid"}}
	forged := "x\n2026-01-01T00:00:00Z  session_end  admin  admin"
	for _, name := range []string{weird, forged} {
		_, err := oidctest.Login(t.Context(), oidctest.NewBrowser(issuer, nil), issuer, oc, name, "wrong password")
		require.ErrorContains(t, err, "401")
	}

	out, err := runCLI(t, "", "audit", "--config", config)
	require.NoError(t, err, out)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	require.Len(t, lines, 3, "a header and one line per failed sign-in:\n%s", out)
	for _, l := range lines[1:] {
		require.Regexp(t, `^\d{4}-\d\d-\d\dT\S+\s+login_failed\s`, l)
	}
	require.NotContains(t, out, "\u202e")
	require.NotContains(t, out, "\x00")
	require.Contains(t, out, `username=eve\u202eevil\x00\ttab address=`, "shown escaped, as recorded")
	require.NotContains(t, out, "session_end", "nothing typed for an unknown user is kept")

	out, err = runCLI(t, "", "user", "list", "--config", config)
	require.NoError(t, err)
	require.Contains(t, out, `eve\u202eevil\x00\ttab`)

	// The admin API's JSON stays truthful: the recorded value, unchanged.
	api, err := newAdminClient(config)
	require.NoError(t, err)
	var events struct {
		Events []session.AuditEvent `json:"events"`
	}
	require.NoError(t, api.call(t.Context(), "GET", "/admin/audit?user="+url.QueryEscape(weird), &events))
	require.Len(t, events.Events, 1)
	require.Contains(t, events.Events[0].Detail, "username="+weird+" ")
}

func TestPrintableEscapesWhatATerminalWouldActOn(t *testing.T) {
	for in, want := range map[string]string{
		"plain":             "plain",
		"a\nb":              `a\nb`,
		"nul\x00":           `nul\x00`,
		"rtl\u202eoverride": `rtl\u202eoverride`,
		"isolate\u2067x":    `isolate\u2067x`,
		"zero\u200bwidth":   `zero\u200bwidth`,
		"line\u2028sep":     `line\u2028sep`,
		"esc\x1b[31m":       `esc\x1b[31m`,
		`back\slash`:        `back\\slash`,
		"ünïcödé 名前":        "ünïcödé 名前",
	} {
		require.Equal(t, want, printable(in), "%q", in)
	}
	require.Equal(t, "a\tb", printable("a", "b"), "fields are tab-separated")
}

// Every line logged while serving a request carries its request id, in the
// format the configuration asks for.
func TestServeLogsCarryTheRequestID(t *testing.T) {
	config, issuer, _ := writeConfig(t, "log:\n  format: json\n  level: debug\n")
	var logs syncBuffer
	stop := serveInProcess(t, config, &logs)

	// A sign-in request for an unknown client: the protocol layer logs it.
	resp, err := http.Get(issuer + "/authorize?client_id=nope&redirect_uri=http://127.0.0.1:1/cb&response_type=code&scope=openid")
	require.NoError(t, err)
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	require.NotEmpty(t, id)
	stop()

	var seen bool
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &rec), "a JSON log line: %s", line)
		if rec["request_id"] == id {
			seen = true
		}
	}
	require.True(t, seen, "no log line of request %s in:\n%s", id, logs.String())
}

// syncBuffer is a bytes.Buffer that the server's goroutines may write to.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
