package oidc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/session"
)

func failedLogins(t *testing.T, e *env) []session.AuditEvent {
	t.Helper()
	events, err := e.store.Audit(t.Context(), session.AuditFilter{})
	require.NoError(t, err)
	var out []session.AuditEvent
	for _, ev := range events {
		if ev.Kind == session.AuditLoginFailed {
			out = append(out, ev)
		}
	}
	return out
}

// loginsAtOnce posts n login forms of username and password, each from a
// browser of its own, all at the same moment, and returns the status codes
// of the answers (redirects not followed; 0 for no answer).
func loginsAtOnce(t *testing.T, e *env, n int, username, password string) []int {
	t.Helper()
	type post struct {
		b    *browser
		form url.Values
	}
	posts := make([]post, n)
	for i := range posts {
		b := e.browser()
		posts[i] = post{b, b.loginForm(loginPage(t, b, e.rp("mail")), username, password)}
		b.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	}
	start := make(chan struct{})
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i, p := range posts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := p.b.client.PostForm(e.issuer+"/login", p.form)
			if err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	close(start)
	wg.Wait()
	return codes
}

// Issue 9, finding 2: the limit was checked before the argon2id check and
// counted after it, so simultaneous guesses all got through.
func TestConcurrentWrongGuessesAreCountedBeforeTheCheck(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Login.MaxFailures = 5 })
	codes := loginsAtOnce(t, e, 30, "alice", "wrong guess")
	verified := 0
	for _, c := range codes {
		switch c {
		case http.StatusUnauthorized:
			verified++
		case http.StatusTooManyRequests:
		default:
			t.Fatalf("unexpected answer %d in %v", c, codes)
		}
	}
	require.LessOrEqual(t, verified, 5, "at most max_failures guesses are checked: %v", codes)
	require.Positive(t, verified)
	require.Len(t, failedLogins(t, e), verified, "every checked guess is audited, no other")

	b := e.browser()
	resp := b.submitLogin(loginPage(t, b, e.rp("mail")), "alice", testPassword)
	if verified == 5 {
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the burst used up the free attempts")
	}
	resp.Body.Close()
}

// Issue 10, rule 8: a brute force spread over replicas is slowed the same.
func TestFailuresCountAtEveryReplica(t *testing.T) {
	e := newEnv(t) // MaxFailures 3
	store2, err := session.OpenSQLite(t.Context(), e.dbPath)
	require.NoError(t, err)
	t.Cleanup(func() { store2.Close() })
	replica2, err := New(t.Context(), e.cfg, store2)
	require.NoError(t, err)
	srv2 := httptest.NewServer(replica2)
	t.Cleanup(srv2.Close)

	b := e.browser()
	page := b.guess(loginPage(t, b, e.rp("mail")), "alice", 3)
	// The same browser posts the same form to the other replica (cookie
	// and CSRF keys come from the database, so the form is valid there).
	resp, err := b.client.PostForm(srv2.URL+"/login", b.loginForm(page, "alice", testPassword))
	require.NoError(t, err)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "replica 2 sees replica 1's failures")
	resp.Body.Close()
}

// Issue 9, finding 3: five wrong passwords from anywhere locked the person
// out, and one guess every lockout period kept them out.
func TestAKnownDeviceSignsInWhileGuessesAreSlowed(t *testing.T) {
	e := newEnv(t) // MaxFailures 3; every browser shares 127.0.0.1, as behind a proxy
	e.addUser("bob")
	r := e.rp("mail")
	victim := e.browser()
	victim.login(r, "alice")
	bobs := e.browser()
	bobs.login(r, "bob")

	attacker := e.browser()
	page := attacker.guess(loginPage(t, attacker, r), "alice", 3)
	resp := attacker.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the attacker is slowed even with the right password")
	resp.Body.Close()

	resp, _, _ = bobs.authorize(r, oauth2.SetAuthURLParam("prompt", "login"))
	resp = bobs.submitLogin(body(t, resp), "alice", testPassword)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "bob's device is not alice's")
	resp.Body.Close()

	resp, verifier, state := victim.authorize(r, oauth2.SetAuthURLParam("prompt", "login"))
	resp = victim.submitLogin(body(t, resp), "alice", testPassword)
	victim.exchange(r, victim.code(resp, state), verifier)

	// Guesses through a stolen device cookie lock that device alone.
	resp, _, _ = victim.authorize(r, oauth2.SetAuthURLParam("prompt", "login"))
	page = victim.guess(body(t, resp), "alice", 3)
	resp = victim.submitLogin(page, "alice", testPassword)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	resp.Body.Close()
}

func TestClientAddressBelievesOnlyTrustedProxies(t *testing.T) {
	proxies := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}
	for _, tc := range []struct {
		name, peer, xff, fwd string
		trusted              []netip.Prefix
		want                 string
	}{
		{"no proxies configured", "192.0.2.1:5000", "203.0.113.9", "", nil, "192.0.2.1"},
		{"untrusted peer's header ignored", "192.0.2.1:5000", "203.0.113.9", "", proxies, "192.0.2.1"},
		{"trusted proxy", "10.1.2.3:5000", "203.0.113.9", "", proxies, "203.0.113.9"},
		{"rightmost untrusted hop", "10.1.2.3:5000", "198.51.100.1, 203.0.113.9, 10.0.0.7", "", proxies, "203.0.113.9"},
		{"spoofed left part ignored", "10.1.2.3:5000", "10.9.9.9, 203.0.113.9", "", proxies, "203.0.113.9"},
		{"garbage stops at the proxy", "10.1.2.3:5000", "not-an-ip", "", proxies, "10.1.2.3"},
		{"no header", "10.1.2.3:5000", "", "", proxies, "10.1.2.3"},
		{"forwarded alone", "10.1.2.3:5000", "", `for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"`, proxies, "192.0.2.60"},
		{"forwarded and x-forwarded-for agree", "10.1.2.3:5000", "192.0.2.60, 2001:db8:cafe::17", `for=192.0.2.60, for="[2001:db8:cafe::17]:4711"`, proxies, "192.0.2.60"},
		{"they disagree: one is the client's own", "10.1.2.3:5000", "198.51.100.1", `for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"`, proxies, "10.1.2.3"},
		{"forwarded unknown", "10.1.2.3:5000", "", `for=unknown`, proxies, "10.1.2.3"},
		{"ipv6 peer", "[2001:db8::1]:443", "198.51.100.4", "", proxies, "198.51.100.4"},
		{"mapped ipv4", "[::ffff:10.1.2.3]:443", "198.51.100.4", "", proxies, "198.51.100.4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.RemoteAddr = tc.peer
			if tc.xff != "" {
				r.Header.Set("X-Forwarded-For", tc.xff)
			}
			if tc.fwd != "" {
				r.Header.Set("Forwarded", tc.fwd)
			}
			require.Equal(t, tc.want, clientAddress(r, tc.trusted))
		})
	}
	require.Equal(t, "2001:db8:1:2::/64", addressKey("2001:db8:1:2:3:4:5:6"), "an IPv6 client counts by its /64")
	require.Equal(t, "192.0.2.1", addressKey("192.0.2.1"))
}

// postLogin posts a login form with extra headers, as a browser behind a
// proxy would arrive.
func postLogin(t *testing.T, b *browser, form url.Values, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.e.issuer+"/login", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.client.Do(req)
	require.NoError(t, err)
	return resp
}

func TestLoginAuditNamesTheClientAfterTrustedProxies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		trusted []netip.Prefix
		want    string
	}{
		{"behind a trusted proxy", []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, "address=203.0.113.9 "},
		{"no proxy trusted: the header is the client's own", nil, "address=127.0.0.1 "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.TrustedProxies = tc.trusted })
			b := e.browser()
			resp := postLogin(t, b, b.loginForm(loginPage(t, b, e.rp("mail")), "alice", "guess"), "X-Forwarded-For", "203.0.113.9")
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
			resp.Body.Close()
			failed := failedLogins(t, e)
			require.Len(t, failed, 1)
			require.Contains(t, failed[0].Detail, tc.want)
			require.Contains(t, failed[0].Detail, "request_id="+resp.Header.Get("X-Request-Id"))

			resp = b.submitLogin(loginPage(t, b, e.rp("mail")), "alice", testPassword)
			require.Equal(t, http.StatusFound, resp.StatusCode)
			resp.Body.Close()
			events, err := e.store.Audit(t.Context(), session.AuditFilter{UserID: failed[0].UserID})
			require.NoError(t, err)
			require.True(t, hasEvent(events, session.AuditLoginSucceeded, ""), "a sign-in is audited with its address")
		})
	}
}

func TestSpoofedForwardedForDoesNotEscapeTheAddressLimit(t *testing.T) {
	e := newEnv(t) // no trusted proxies; MaxFailures 3
	b := e.browser()
	for i, name := range []string{"nobody1", "nobody2", "nobody3"} {
		resp := postLogin(t, b, b.loginForm(loginPage(t, b, e.rp("mail")), name, "guess"), "X-Forwarded-For", "198.51.100."+string(rune('1'+i)))
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		resp.Body.Close()
	}
	resp := postLogin(t, b, b.loginForm(loginPage(t, b, e.rp("mail")), "nobody4", "guess"), "X-Forwarded-For", "198.51.100.9")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the address is the peer's, whatever the header says")
	resp.Body.Close()
}

// Issue 9, finding 9: a failed sign-in's username was stored raw, so a
// newline forged an audit line and a password typed as the username was
// kept.
func TestFailedSignInStoresNoRawUnknownUsername(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Login.MaxFailures = 10 })
	b := e.browser()
	typed := []string{"x\n2026-01-01T00:00:00Z  session_end  admin\u202e\x00", "Tr0ub4dor&3-not-a-name"}
	for _, name := range typed {
		resp := b.submitLogin(loginPage(t, b, e.rp("mail")), name, "guess")
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		resp.Body.Close()
	}
	failed := failedLogins(t, e)
	require.Len(t, failed, 2)
	for i, ev := range failed {
		require.NotContains(t, ev.Detail, strings.TrimSpace(typed[i])[:8], "nothing typed is stored")
		require.Contains(t, ev.Detail, "unknown_user=")
		require.Contains(t, ev.Detail, "length=")
		require.Empty(t, ev.UserID)
	}
	require.NotEqual(t, between(failed[0].Detail, "unknown_user=", " "), between(failed[1].Detail, "unknown_user=", " "),
		"different names are told apart")

	resp := b.submitLogin(loginPage(t, b, e.rp("mail")), "alice", "guess")
	resp.Body.Close()
	failed = failedLogins(t, e)
	require.Contains(t, failed[2].Detail, "username=alice ", "a known user is named")
	require.NotEmpty(t, failed[2].UserID)
}

func TestPasswordChecksWaitInABoundedQueueThatHonoursTheContext(t *testing.T) {
	e := newEnv(t)
	l := e.p.limiter
	for range cap(l.slots) {
		l.slots <- struct{}{} // every worker busy
	}
	defer func() {
		for range cap(l.slots) {
			<-l.slots
		}
	}()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := l.verify(ctx, "", "pw")
	require.ErrorIs(t, err, context.Canceled, "a client that left is never checked")
	require.Zero(t, l.queued.Load())

	l.queued.Add(int32(cap(l.slots) * (1 + verifyQueuePerSlot)))
	defer l.queued.Add(-int32(cap(l.slots) * (1 + verifyQueuePerSlot)))
	_, err = l.verify(t.Context(), "", "pw")
	require.ErrorIs(t, err, errLoginBusy, "a full queue answers at once")
}

// Every form that checks a password may wait verifyQueueWait for a worker:
// its request budget must outlast that wait, or a person confirming on
// the account page while sign-ins queue gets an empty answer when the
// budget ends mid-wait. Other requests keep the database timeout.
func TestPasswordFormsOutlastThePasswordQueue(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		method, path   string
		checksPassword bool
	}{
		{http.MethodPost, "/login", true},
		{http.MethodPost, "/account/confirm", true},
		{http.MethodGet, "/login", false},
		{http.MethodPost, "/login/factor", false},
		{http.MethodPost, "/activity", false},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			got := e.p.requestBudget(httptest.NewRequest(tc.method, tc.path, nil))
			if tc.checksPassword {
				require.Greater(t, got, verifyQueueWait+e.p.cfg.DatabaseTimeout)
			} else {
				require.Equal(t, e.p.cfg.DatabaseTimeout, got)
			}
		})
	}
}

// The in-flight bound per username must not refuse a person who signs in
// from several browsers at once (two tabs, a shared kiosk account, the
// browser tests' parallel contexts): past the bound, attempts wait for a
// slot instead of being turned away.
func TestSimultaneousRightPasswordsAllSignIn(t *testing.T) {
	e := newEnv(t)
	// A costly hash (as in production) keeps each check in flight long
	// enough for the attempts to overlap.
	hash, err := session.HashPasswordWithParams(testPassword, 3, 32*1024, 1)
	require.NoError(t, err)
	require.NoError(t, e.store.CreateUser(t.Context(), &session.User{Username: "kiosk", PasswordHash: hash, CreatedAt: e.clock.Now()}))
	const n = 3 * inFlightPerUser
	codes := loginsAtOnce(t, e, n, "kiosk", testPassword)
	for i, c := range codes {
		require.Equal(t, http.StatusFound, c, "sign-in %d of %d: %v", i+1, n, codes)
	}
}

// Behind a proxy that appends to X-Forwarded-For (nginx's
// $proxy_add_x_forwarded_for, most load balancers) and passes a Forwarded
// header through untouched, a client that sends its own Forwarded header
// must not choose the address it is counted under.
func TestForgedForwardedBehindAnXFFProxyDoesNotEscapeTheAddressLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")} }) // MaxFailures 3
	b := e.browser()
	guess := func(i int) *http.Response {
		return postLogin(t, b, b.loginForm(loginPage(t, b, e.rp("mail")), "nobody"+string(rune('a'+i)), "guess"),
			"X-Forwarded-For", "203.0.113.9", // what the proxy appended: the attacker's address
			"Forwarded", "for=198.51.100."+string(rune('1'+i))) // what the attacker sent
	}
	for i := range 3 {
		resp := guess(i)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		resp.Body.Close()
	}
	resp := guess(3)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "a forged Forwarded header is not a fresh address")
	resp.Body.Close()
	for _, ev := range failedLogins(t, e) {
		require.NotContains(t, ev.Detail, "address=198.51.100.", "the audit does not name an address the client made up")
	}
}
