package oidc

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"text/template"
	"time"

	"github.com/stretchr/testify/require"
)

// The gateway test: Debian's nginx, started by the test, asks /forward-auth
// (auth_request) before every call to a small API. The configuration is the
// one README gives, with paths in a temporary directory.

// nginxConf is README's nginx configuration, with one API location per app
// and the test's paths and ports.
var nginxConf = template.Must(template.New("nginx.conf").Parse(`
{{if .Root}}user root;{{end}}
daemon off;
master_process off;
worker_processes 1;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log info;
events { worker_connections 64; }
http {
  access_log {{.Dir}}/access.log;
  client_body_temp_path {{.Dir}}/body;
  proxy_temp_path {{.Dir}}/proxy;
  fastcgi_temp_path {{.Dir}}/fastcgi;
  uwsgi_temp_path {{.Dir}}/uwsgi;
  scgi_temp_path {{.Dir}}/scgi;
  server {
    listen {{.Listen}};
{{range .Apps}}
    location = /_idleguard/{{.}} {
      internal;
      proxy_pass {{$.Issuer}}/forward-auth?aud={{.}};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }
    location /{{.}}/ {
      auth_request /_idleguard/{{.}};
      auth_request_set $idleguard_subject $upstream_http_x_idleguard_subject;
      auth_request_set $idleguard_session $upstream_http_x_idleguard_session;
      auth_request_set $idleguard_client $upstream_http_x_idleguard_client;
      auth_request_set $idleguard_scope $upstream_http_x_idleguard_scope;
      auth_request_set $idleguard_expires_in $upstream_http_x_idleguard_expires_in;
      auth_request_set $idleguard_reason $upstream_http_x_idleguard_reason;
      add_header X-Idleguard-Reason $idleguard_reason always;
      proxy_set_header X-Idleguard-Subject $idleguard_subject;
      proxy_set_header X-Idleguard-Session $idleguard_session;
      proxy_set_header X-Idleguard-Client $idleguard_client;
      proxy_set_header X-Idleguard-Scope $idleguard_scope;
      proxy_set_header X-Idleguard-Expires-In $idleguard_expires_in;
      proxy_pass {{$.API}};
    }
{{end}}
  }
}
`))

// nginxPath finds Debian's nginx, or skips the test when it is missing
// (fails instead when IDLEGUARD_REQUIRE_NGINX=1, as in CI).
func nginxPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/nginx", "nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("IDLEGUARD_REQUIRE_NGINX") == "1" {
		t.Fatal("nginx is missing (apt-get install nginx) and IDLEGUARD_REQUIRE_NGINX=1")
	}
	t.Skip("nginx is missing (apt-get install nginx); set IDLEGUARD_REQUIRE_NGINX=1 to fail instead")
	return ""
}

// freeLoopback returns a loopback address that was free a moment ago.
func freeLoopback(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// startNginx runs nginx in the foreground in front of api, asking issuer's
// gateway check for each app's location /APP/, and returns its base URL.
func startNginx(t *testing.T, issuer, api string, apps ...string) string {
	t.Helper()
	bin := nginxPath(t)
	dir := t.TempDir()
	listen := freeLoopback(t)
	conf := filepath.Join(dir, "nginx.conf")
	f, err := os.Create(conf)
	require.NoError(t, err)
	require.NoError(t, nginxConf.Execute(f, map[string]any{"Root": os.Geteuid() == 0, "Dir": dir, "Listen": listen,
		"Issuer": issuer, "API": api, "Apps": apps}))
	require.NoError(t, f.Close())
	cmd := exec.Command(bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", log)
		}
	})
	// Wait for nginx to listen (process start-up, not a timeout under test).
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
			return "http://" + listen
		}
		require.Less(t, time.Since(start), 10*time.Second, "nginx did not start listening: %v", err)
	}
}

// testAPI is the API behind the gateway: it records what reaches it.
type testAPI struct {
	mu  sync.Mutex
	got []http.Header
	srv *httptest.Server
}

func newTestAPI(t *testing.T) *testAPI {
	a := &testAPI{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.got = append(a.got, r.Header.Clone())
		a.mu.Unlock()
		fmt.Fprintln(w, "data of", r.URL.Path)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// calls returns how many requests reached the API, and the headers of the last.
func (a *testAPI) calls() (int, http.Header) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.got) == 0 {
		return 0, nil
	}
	return len(a.got), a.got[len(a.got)-1]
}

// gatewayCall calls the API through nginx as an app does, with the
// person's access token and a forged identity header that the gateway must
// replace.
func gatewayCall(t *testing.T, url, token string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Idleguard-Subject", "forged-admin")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestNginxGateway is issue 12's real gateway: calls through nginx keep a
// session alive with no heartbeat; after the idle deadline nginx answers
// 401 and the API receives nothing; an exempt app's token gets 403 at
// another app's API; a logout anywhere makes nginx refuse the next call.
func TestNginxGateway(t *testing.T) {
	e := newEnv(t)
	api := newTestAPI(t)
	gw := startNginx(t, e.issuer, api.srv.URL, "mail", "bank", "video")
	alice, err := e.store.UserByUsername(t.Context(), "alice")
	require.NoError(t, err)

	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	video := b.login(e.rp("video"), "alice")

	// A logout anywhere (here at the mail app) and nginx refuses the
	// next call to the bank's API. (First: ID tokens are stamped by the
	// wall clock, so people sign in before the test clock moves.)
	other := e.browser()
	otherMail := other.login(e.rp("mail"), "alice")
	bank := other.login(e.rp("bank"), "alice")
	require.Equal(t, http.StatusOK, gatewayCall(t, gw+"/bank/balance", bank.AccessToken).StatusCode)
	other.endSession(otherMail, "", "").Body.Close()
	before, _ := api.calls()
	resp := gatewayCall(t, gw+"/bank/balance", bank.AccessToken)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, "logout", resp.Header.Get("X-Idleguard-Reason"))
	after, _ := api.calls()
	require.Equal(t, before, after, "the API receives nothing after a logout")

	// Mail's 30-minute limit is the session's. Four calls 20 minutes apart
	// (80 minutes) keep it alive; the app renews its token, which is not
	// activity.
	for i := range 4 {
		e.clock.Advance(20 * time.Minute)
		resp := gatewayCall(t, gw+"/mail/inbox", mail.fresh(e))
		require.Equal(t, http.StatusOK, resp.StatusCode, "call %d", i)
		n, h := api.calls()
		require.Equal(t, i+2, n) // after the bank call above
		require.Equal(t, alice.ID, h.Get("X-Idleguard-Subject"), "the gateway's header replaces the caller's")
		require.Equal(t, mail.sid, h.Get("X-Idleguard-Session"))
		require.Equal(t, "mail", h.Get("X-Idleguard-Client"))
		require.Contains(t, h.Get("X-Idleguard-Scope"), "openid")
		require.Equal(t, "1800", h.Get("X-Idleguard-Expires-In"), "30 minutes from this call")
	}
	require.EqualValues(t, 0, e.p.tracker.Stats().Activity["heartbeat"])

	before, _ = api.calls()
	resp = gatewayCall(t, gw+"/mail/inbox", video.fresh(e))
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "an exempt app's token at another app's API")
	require.Equal(t, "wrong_audience", resp.Header.Get("X-Idleguard-Reason"))
	after, _ = api.calls()
	require.Equal(t, before, after)
	resp = gatewayCall(t, gw+"/video/segment-1", video.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "video", func() string { _, h := api.calls(); return h.Get("X-Idleguard-Client") }())

	e.clock.Advance(30 * time.Minute) // idle since the last call to mail's API; video's calls do not count
	before, _ = api.calls()
	resp = gatewayCall(t, gw+"/mail/inbox", mail.AccessToken)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Equal(t, "idle_timeout", resp.Header.Get("X-Idleguard-Reason"))
	require.Contains(t, resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`)
	after, _ = api.calls()
	require.Equal(t, before, after, "the API receives nothing after the deadline")
}
