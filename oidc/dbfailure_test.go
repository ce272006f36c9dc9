package oidc

import (
	"bytes"
	"database/sql"
	"html"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// lockedBuffer collects a provider's log lines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fillDisk makes the real database refuse every write with SQLite's own
// "database or disk is full" error, as a full disk would (a tmpfs of the
// right size is not available to tests): triggers, created by another
// connection on the same file, abort each insert and update. Reads go on.
func fillDisk(t *testing.T, e *env) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer db.Close()
	for _, table := range []string{"auth_sessions", "app_sessions", "refresh_chains", "auth_requests", "audit_events", "logout_outbox", "login_failures"} {
		for _, op := range []string{"INSERT", "UPDATE"} {
			_, err := db.Exec(`CREATE TRIGGER full_` + strings.ToLower(op) + `_` + table + ` BEFORE ` + op + ` ON ` + table +
				` BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END`)
			require.NoError(t, err)
		}
	}
}

// requireErrorPage checks that a browser got a readable page that names
// the request, shows no internal text, and that the log names the cause
// for that request.
func requireErrorPage(t *testing.T, resp *http.Response, logs *lockedBuffer) {
	t.Helper()
	page := body(t, resp)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode, page)
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html"), resp.Header.Get("Content-Type"))
	id := resp.Header.Get("X-Request-Id")
	require.Contains(t, page, "Something went wrong")
	require.Contains(t, page, id, "the page gives the reference the operator finds in the log")
	require.NotContains(t, page, "server_error")
	require.NotContains(t, page, "disk is full")
	var cause bool
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "request_id="+id) && strings.Contains(line, "database or disk is full") {
			cause = true
		}
	}
	require.True(t, cause, "no log line names the cause for request %s:\n%s", id, logs.String())
}

// Issue 9, finding 12: with a database that cannot be written, the login
// form answered raw JSON.
func TestUnwritableDatabaseShowsPagesAndLogsTheCause(t *testing.T) {
	logs := &lockedBuffer{}
	e := newEnv(t, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(logs, nil)) })
	mail := e.rp("mail")
	signedIn := e.browser()
	tk := signedIn.login(mail, "alice")

	// Before the disk fills: a login form, a pending single sign-on for
	// another app, and a logout confirmation waiting to be answered.
	fresh := e.browser()
	form := fresh.loginForm(loginPage(t, fresh, mail), "alice", testPassword)
	noFollow := *signedIn.client
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := noFollow.Get(e.rp("bank").oauth.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	ssoLogin := resp.Header.Get("Location")
	require.Contains(t, ssoLogin, "/login?authRequestID=")
	resp, err = noFollow.Get(e.rp("video").oauth.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())))
	require.NoError(t, err)
	resp.Body.Close()
	resp, err = noFollow.Get(e.issuer + resp.Header.Get("Location"))
	require.NoError(t, err)
	resp.Body.Close()
	callback := resp.Header.Get("Location")
	require.Contains(t, callback, "/authorize/callback?id=")
	resp, err = signedIn.client.Get(e.issuer + "/end_session")
	require.NoError(t, err)
	confirm := body(t, resp)
	ticket := between(confirm, `name="t" value="`, `"`)
	csrf := between(confirm, `name="csrf" value="`, `"`)
	require.NotEmpty(t, ticket, confirm)

	fillDisk(t, e)

	t.Run("login form", func(t *testing.T) {
		resp, err := fresh.client.PostForm(e.issuer+"/login", form)
		require.NoError(t, err)
		requireErrorPage(t, resp, logs)
	})
	t.Run("single sign-on", func(t *testing.T) {
		resp, err := noFollow.Get(e.issuer + ssoLogin)
		require.NoError(t, err)
		requireErrorPage(t, resp, logs)
	})
	t.Run("end_session", func(t *testing.T) {
		resp, err := signedIn.client.Get(e.issuer + "/end_session?" + url.Values{"id_token_hint": {tk.raw}}.Encode())
		require.NoError(t, err)
		requireErrorPage(t, resp, logs)
	})
	t.Run("callback", func(t *testing.T) {
		// The code cannot be issued: the app is told server_error (RFC 6749
		// section 4.1.2.1) with the reference, never the internal text.
		resp, err := noFollow.Get(e.issuer + callback)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusFound, resp.StatusCode)
		loc, err := url.Parse(resp.Header.Get("Location"))
		require.NoError(t, err)
		require.Equal(t, "server_error", loc.Query().Get("error"))
		id := resp.Header.Get("X-Request-Id")
		require.Equal(t, "internal error, request id "+id, loc.Query().Get("error_description"))
		require.Contains(t, logs.String(), "request_id="+id)
	})
	t.Run("logout confirmation", func(t *testing.T) {
		resp, err := signedIn.client.PostForm(e.issuer+"/logout/confirm", url.Values{"t": {html.UnescapeString(ticket)}, "csrf": {csrf}})
		require.NoError(t, err)
		requireErrorPage(t, resp, logs)
	})
}
