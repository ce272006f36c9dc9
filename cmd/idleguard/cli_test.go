package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
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
	cfg, _, err := loadConfig(config)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, false, &bytes.Buffer{}, &bytes.Buffer{}, ready) }()
	defer func() { cancel(); require.NoError(t, <-done) }()
	<-ready

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
