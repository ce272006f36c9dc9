package oidc

import (
	"bytes"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// withMFA sets login.mfa.
func withMFA(mode MFAMode) envOption { return func(c *Config) { c.MFA.Mode = mode } }

// requireMFA sets require_mfa (and, with phr, require_phishing_resistant) on a client.
func requireMFA(clientID string, phr bool) envOption {
	return func(c *Config) {
		for _, cl := range c.Clients {
			if cl.ID == clientID {
				cl.RequireMFA, cl.RequirePhishingResistant = true, phr
			}
		}
	}
}

// enrollTOTP gives username an authenticator app, as `idleguard user totp`
// does, and returns its secret and recovery codes.
func (e *env) enrollTOTP(username string) (string, []string) {
	e.t.Helper()
	u, err := e.p.store.UserByUsername(e.t.Context(), username)
	require.NoError(e.t, err)
	en, err := e.p.factors.NewEnrollment(username)
	require.NoError(e.t, err)
	codes, err := e.p.factors.Enroll(e.t.Context(), u.ID, en.Secret, 0, "test")
	require.NoError(e.t, err)
	return en.Secret, codes
}

// totpCode is the code an authenticator app with secret shows at the test
// clock's now plus drift steps.
func (e *env) totpCode(secret string, drift int) string {
	e.t.Helper()
	code, err := totp.GenerateCode(secret, e.clock.Now().Add(time.Duration(drift)*mfa.TOTPPeriod*time.Second))
	require.NoError(e.t, err)
	return code
}

var codeField = regexp.MustCompile(`<input id="code" name="code"[^>]*autocomplete="one-time-code"`)

// requireFactorPage checks that page asks for a second factor and no password.
func requireFactorPage(t *testing.T, page string) {
	t.Helper()
	require.Regexp(t, codeField, page, "no code field in page:\n%s", page)
	require.Contains(t, page, `<label for="code">Code</label>`)
	require.NotContains(t, page, `name="password"`)
}

// submitCode posts code to the form on page (the factor or enrollment form).
func (b *browser) submitCode(page, code string) *http.Response {
	b.t.Helper()
	fields := map[string]string{}
	for _, m := range hiddenInput.FindAllStringSubmatch(page, -1) {
		fields[m[1]] = m[2]
	}
	action := regexp.MustCompile(`<form method="post" action="(/login/(?:factor|enroll))">`).FindStringSubmatch(page)
	require.NotNil(b.t, action, "no code form in page:\n%s", page)
	resp, err := b.client.PostForm(b.e.issuer+action[1], url.Values{"authRequestID": {fields["authRequestID"]}, "csrf": {fields["csrf"]}, "code": {code}})
	require.NoError(b.t, err)
	return resp
}

// passwordStep starts a flow for r and signs in with the password; it
// returns the page that follows (the factor page) and the flow's verifier
// and state.
func (b *browser) passwordStep(r *rp, username string, extra ...oauth2.AuthCodeOption) (*http.Response, string, string) {
	b.t.Helper()
	resp, verifier, state := b.authorize(r, extra...)
	require.Equal(b.t, http.StatusOK, resp.StatusCode)
	return b.submitLogin(body(b.t, resp), username, testPassword), verifier, state
}

type assurance struct {
	ACR string   `json:"acr"`
	AMR []string `json:"amr"`
}

func (tk *tokens) assurance(t *testing.T) assurance {
	t.Helper()
	var a assurance
	require.NoError(t, tk.id.Claims(&a))
	return a
}

func TestTOTPAtEverySignInUnderAlways(t *testing.T) {
	e := newEnv(t, withMFA(MFAAlways))
	secret, _ := e.enrollTOTP("alice")
	e.addUser("bob") // no factor: a password is enough for him under "always"
	b := e.browser()
	resp, verifier, state := b.passwordStep(e.rp("mail"), "alice")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	requireFactorPage(t, page)
	require.Empty(t, b.sessionCookie(), "no session before the second factor")

	tok := b.exchange(e.rp("mail"), b.code(b.submitCode(page, e.totpCode(secret, 0)), state), verifier)
	require.Equal(t, assurance{ACR: "mfa", AMR: []string{"pwd", "otp", "mfa"}}, tok.assurance(t))
	events, err := e.store.Audit(t.Context(), session.AuditFilter{UserID: tok.id.Subject})
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditFactorUsed, ""))

	bob := e.browser().login(e.rp("mail"), "bob")
	require.Equal(t, assurance{ACR: "pwd", AMR: []string{"pwd"}}, bob.assurance(t))
}

// sessionCookie is the provider's session cookie in the browser, or "".
func (b *browser) sessionCookie() string {
	u, _ := url.Parse(b.e.issuer)
	for _, c := range b.client.Jar.Cookies(u) {
		if c.Name == sessionCookieName {
			return c.Value
		}
	}
	return ""
}

func TestStepUpBySSOIntoAppThatRequiresMFA(t *testing.T) {
	e := newEnv(t, requireMFA("bank", false))
	secret, _ := e.enrollTOTP("alice")
	b := e.browser()
	signedIn := e.clock.Now()
	mail := b.login(e.rp("mail"), "alice")
	require.Equal(t, assurance{ACR: "pwd", AMR: []string{"pwd"}}, mail.assurance(t), "when_required: the mail app needs no second factor")

	resp, verifier, state := b.authorize(e.rp("bank"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	requireFactorPage(t, page) // the second factor only, no password again
	e.clock.Advance(10 * time.Second)
	bank := b.exchange(e.rp("bank"), b.code(b.submitCode(page, e.totpCode(secret, 0)), state), verifier)
	require.Equal(t, assurance{ACR: "mfa", AMR: []string{"pwd", "otp", "mfa"}}, bank.assurance(t))
	require.Equal(t, mail.sid, bank.sid, "the same SSO session rose")

	again := b.login(e.rp("mail"), "alice")
	require.Equal(t, "mfa", again.assurance(t).ACR, "the session's assurance rose for every app")
	next, err := mail.rp.refresh(t, mail.RefreshToken)
	require.NoError(t, err)
	require.Equal(t, assurance{ACR: "mfa", AMR: []string{"pwd", "otp", "mfa"}}, mail.rp.verify(t, next).assurance(t),
		"a refreshed ID token of an app joined before the step-up says the session's assurance now")
	events, err := e.store.Audit(t.Context(), sessionFilter(mail.sid))
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditStepUp, ""))

	var claims struct {
		AuthTime int64 `json:"auth_time"`
	}
	require.NoError(t, bank.id.Claims(&claims))
	require.Equal(t, signedIn.Unix(), claims.AuthTime, "auth_time stays the password's")
}

func TestTOTPDriftReplayAndRecoveryCodes(t *testing.T) {
	e := newEnv(t, withMFA(MFAAlways), func(c *Config) { c.Login.MaxFailures = 20 }) // this test is about the codes, not the throttle
	secret, recovery := e.enrollTOTP("alice")
	signIn := func(code string) (*http.Response, *browser) {
		b := e.browser()
		resp, _, _ := b.passwordStep(e.rp("mail"), "alice")
		page := body(t, resp)
		requireFactorPage(t, page)
		return b.submitCode(page, code), b
	}
	for _, tc := range []struct {
		name   string
		code   func() string
		status int
		text   string
	}{
		{"a code one step behind (slow phone clock)", func() string { return e.totpCode(secret, -1) }, http.StatusFound, ""},
		{"that code again: replay", func() string { return e.totpCode(secret, -1) }, http.StatusUnauthorized, "already used"},
		{"the current code", func() string { return e.totpCode(secret, 0) }, http.StatusFound, ""},
		{"an earlier step after a later one", func() string { return e.totpCode(secret, -1) }, http.StatusUnauthorized, "already used"},
		{"two steps ahead", func() string { return e.totpCode(secret, 2) }, http.StatusUnauthorized, "not right"},
		{"a recovery code", func() string { return strings.ToUpper(recovery[0]) }, http.StatusFound, ""},
		{"the same recovery code again", func() string { return recovery[0] }, http.StatusUnauthorized, "not right"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := signIn(tc.code())
			require.Equal(t, tc.status, resp.StatusCode)
			out := body(t, resp)
			require.Contains(t, out, tc.text)
			if tc.status != http.StatusFound {
				require.Empty(t, b.sessionCookie(), "nobody signed in")
				require.Contains(t, out, `role="alert"`)
			}
		})
	}
	f, err := e.p.factors.Of(t.Context(), userIDOf(t, e, "alice"))
	require.NoError(t, err)
	require.Equal(t, mfa.RecoveryCodeCount-1, f.RecoveryCodes)
}

func userIDOf(t *testing.T, e *env, name string) string {
	t.Helper()
	u, err := e.p.store.UserByUsername(t.Context(), name)
	require.NoError(t, err)
	return u.ID
}

func TestWrongCodesSlowDownLikeWrongPasswords(t *testing.T) {
	e := newEnv(t, withMFA(MFAAlways)) // MaxFailures 3
	secret, _ := e.enrollTOTP("alice")
	b := e.browser()
	resp, verifier, state := b.passwordStep(e.rp("mail"), "alice")
	page := body(t, resp)
	for i := range 3 {
		resp = b.submitCode(page, "00000"+string(rune('0'+i)))
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		page = body(t, resp)
	}
	resp = b.submitCode(page, e.totpCode(secret, 0))
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "even the right code waits")
	require.NotEmpty(t, resp.Header.Get("Retry-After"))
	page = body(t, resp)
	require.Contains(t, page, "Too many wrong codes")

	// A right password does not forget wrong codes: an attacker who has the
	// password cannot reset the count by signing in again. After the delay,
	// one more wrong code makes the next wait longer (2s), not a fresh count.
	e.clock.Advance(2 * time.Second)
	b2 := e.browser()
	resp2, _, _ := b2.passwordStep(e.rp("mail"), "alice")
	resp2 = b2.submitCode(body(t, resp2), "999999")
	require.Equal(t, http.StatusUnauthorized, resp2.StatusCode)
	resp2 = b2.submitCode(body(t, resp2), e.totpCode(secret, 0))
	require.Equal(t, http.StatusTooManyRequests, resp2.StatusCode)
	resp2.Body.Close()

	e.clock.Advance(3 * time.Second)
	tok := b.exchange(e.rp("mail"), b.code(b.submitCode(page, e.totpCode(secret, 0)), state), verifier)
	require.Equal(t, "mfa", tok.assurance(t).ACR)
	events, err := e.store.Audit(t.Context(), session.AuditFilter{UserID: userIDOf(t, e, "alice")})
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditFactorFailed, ""))
}

func TestBadCodesAreClearErrorsAndSignNobodyIn(t *testing.T) {
	e := newEnv(t, withMFA(MFAAlways), func(c *Config) { c.Login.MaxFailures = 20 })
	e.enrollTOTP("alice")
	e.addUser("bob")
	bobSecret, bobRecovery := e.enrollTOTP("bob")
	for _, tc := range []struct{ name, code, text string }{
		{"letters", "abcdef", "six-digit code"},
		{"too short", "12345", "six-digit code"},
		{"bob's TOTP code for alice", e.totpCode(bobSecret, 0), "not right"},
		{"bob's recovery code for alice", bobRecovery[0], "not right"},
		{"oversized", strings.Repeat("9", 100), "six-digit code"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := e.browser()
			resp, _, _ := b.passwordStep(e.rp("mail"), "alice")
			resp = b.submitCode(body(t, resp), tc.code)
			require.Contains(t, []int{http.StatusBadRequest, http.StatusUnauthorized}, resp.StatusCode)
			out := body(t, resp)
			require.Contains(t, out, tc.text)
			requireFactorPage(t, out)
			require.Empty(t, b.sessionCookie(), "nobody signed in")
		})
	}
	// Bob's recovery code still works for bob: alice's attempt did not spend it.
	b := e.browser()
	resp, _, _ := b.passwordStep(e.rp("mail"), "bob")
	resp = b.submitCode(body(t, resp), bobRecovery[0])
	require.Equal(t, http.StatusFound, resp.StatusCode)
	resp.Body.Close()

	// The factor page of another browser's sign-in is refused.
	b1 := e.browser()
	resp, _, _ = b1.passwordStep(e.rp("mail"), "alice")
	page := body(t, resp)
	resp = e.browser().submitCode(page, "123456")
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
	require.Contains(t, body(t, resp), "another browser")
}

func TestACRValuesClaimsMaxAgeAndPromptLogin(t *testing.T) {
	e := newEnv(t)
	secret, _ := e.enrollTOTP("alice")
	b := e.browser()
	mail := e.rp("mail")
	require.Equal(t, "pwd", b.login(mail, "alice").assurance(t).ACR)

	stepUp := func(opts ...oauth2.AuthCodeOption) *tokens {
		t.Helper()
		resp, verifier, state := b.authorize(mail, opts...)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		page := body(t, resp)
		if strings.Contains(page, `name="password"`) {
			resp = b.submitLogin(page, "alice", testPassword)
			require.Equal(t, http.StatusOK, resp.StatusCode, "the password, then the second factor")
			page = body(t, resp)
		}
		requireFactorPage(t, page)
		e.clock.Advance(mfa.TOTPPeriod * time.Second) // a fresh code
		return b.exchange(mail, b.code(b.submitCode(page, e.totpCode(secret, 0)), state), verifier)
	}
	tok := stepUp(oauth2.SetAuthURLParam("acr_values", "mfa"))
	require.Equal(t, "mfa", tok.assurance(t).ACR)

	e.clock.Advance(2 * time.Minute) // (ID tokens are stamped by the real clock: tests stay within their 10m)
	tok = stepUp(oauth2.SetAuthURLParam("max_age", "60"))
	require.Equal(t, assurance{ACR: "mfa", AMR: []string{"pwd", "otp", "mfa"}}, tok.assurance(t), "max_age asks every factor again")
	tok = stepUp(oauth2.SetAuthURLParam("prompt", "login"))
	require.Equal(t, "mfa", tok.assurance(t).ACR, "prompt=login asks every factor again")

	// An essential acr claim in a fresh browser: password, then the code.
	b = e.browser()
	tok = stepUp(oauth2.SetAuthURLParam("claims", `{"id_token":{"acr":{"essential":true,"values":["mfa","phr"]}}}`))
	require.Equal(t, "mfa", tok.assurance(t).ACR)

	// An essential acr the provider does not know cannot be met.
	resp, _, _ := e.browser().authorize(mail, oauth2.SetAuthURLParam("claims", `{"id_token":{"acr":{"essential":true,"value":"gold"}}}`))
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, _ := url.Parse(resp.Header.Get("Location"))
	require.Equal(t, "invalid_request", loc.Query().Get("error"))
	require.Contains(t, loc.Query().Get("error_description"), "gold")
}

func TestPromptNoneWithoutTheAssuranceAskedIsInteractionRequired(t *testing.T) {
	e := newEnv(t, requireMFA("bank", false))
	e.enrollTOTP("alice")
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	resp, _, _ := b.authorize(e.rp("bank"), oauth2.SetAuthURLParam("prompt", "none"))
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, _ := url.Parse(resp.Header.Get("Location"))
	require.Equal(t, "interaction_required", loc.Query().Get("error"))
}

func TestRequiredModeEnrollsBeforeAnyApp(t *testing.T) {
	e := newEnv(t, withMFA(MFARequired))
	b := e.browser()
	resp, verifier, state := b.passwordStep(e.rp("mail"), "alice")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "Set up a second factor")
	require.Contains(t, page, `src="data:image/png;base64,`)
	secret := regexp.MustCompile(`<code class="secret">([A-Z2-7]+)</code>`).FindStringSubmatch(page)
	require.NotNil(t, secret, page)
	require.Empty(t, b.sessionCookie(), "no session before enrollment")

	resp = b.submitCode(page, "000000")
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	page = body(t, resp)
	require.Contains(t, page, "does not match")
	f, err := e.p.factors.Of(t.Context(), userIDOf(t, e, "alice"))
	require.NoError(t, err)
	require.False(t, f.Any(), "nothing enrolled by a wrong code")

	resp = b.submitCode(page, e.totpCode(secret[1], 0))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page = body(t, resp)
	require.Contains(t, page, "Save your recovery codes")
	codes := regexp.MustCompile(`<li><code>([a-z2-9-]{14})</code></li>`).FindAllStringSubmatch(page, -1)
	require.Len(t, codes, mfa.RecoveryCodeCount)
	next := regexp.MustCompile(`<a class="button" href="([^"]+)">`).FindStringSubmatch(page)
	require.NotNil(t, next)
	resp, err = b.client.Get(e.issuer + strings.ReplaceAll(strings.TrimPrefix(next[1], e.issuer), "&amp;", "&"))
	require.NoError(t, err)
	tok := b.exchange(e.rp("mail"), b.code(resp, state), verifier)
	require.Equal(t, "mfa", tok.assurance(t).ACR)

	// The next sign-in asks for the code; the enrollment's code is spent.
	b2 := e.browser()
	resp, _, _ = b2.passwordStep(e.rp("mail"), "alice")
	page = body(t, resp)
	requireFactorPage(t, page)
	resp = b2.submitCode(page, e.totpCode(secret[1], 0))
	require.Contains(t, body(t, resp), "already used")
}

func TestSecretKeySealsTOTPSecrets(t *testing.T) {
	key := bytes.Repeat([]byte{0x42}, 32)
	e := newEnv(t, withMFA(MFAAlways), func(c *Config) { c.MFA.SecretKey = key })
	secret, recovery := e.enrollTOTP("alice")
	b := e.browser()
	resp, _, _ := b.passwordStep(e.rp("mail"), "alice")
	resp = b.submitCode(body(t, resp), e.totpCode(secret, 0))
	require.Equal(t, http.StatusFound, resp.StatusCode, "the sealed secret opens with the key")
	resp.Body.Close()
	require.NoError(t, e.p.Close(t.Context()))
	require.NoError(t, e.store.Close())
	for _, f := range []string{e.dbPath, e.dbPath + "-wal"} {
		data, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue
		}
		require.NoError(t, err)
		require.NotContains(t, string(data), secret, "%s holds the TOTP secret", f)
		require.NotContains(t, string(data), mfa.NormalizeRecoveryCode(recovery[1]))
	}
}

func TestDiscoveryAdvertisesACRValues(t *testing.T) {
	e := newEnv(t)
	prov := e.rp("mail").provider
	var doc struct {
		ACR    []string `json:"acr_values_supported"`
		Claims bool     `json:"claims_parameter_supported"`
	}
	require.NoError(t, prov.Claims(&doc))
	require.Equal(t, []string{"pwd", "mfa", "phr"}, doc.ACR)
	require.True(t, doc.Claims)
}

// A second factor given at one replica raises the session everywhere (the
// change feed carries it), its flow may hop between replicas, and its code
// cannot be used again at another.
func TestReplicasStepUpAndCodeReplayAcrossReplicas(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2, requireMFA("bank", false))
		secret, _ := c.enrollTOTP("alice")
		b := c.via(0).browser()
		mail := b.login(c.rp("mail"), "alice")
		require.Equal(t, "pwd", mail.assurance(t).ACR)

		resp, verifier, state := b.authorize(c.rp("bank")) // the factor page is served by A
		page := body(t, resp)
		requireFactorPage(t, page)
		code := c.totpCode(secret, 0)
		c.via(1)
		resp = b.submitCode(page, code) // the code is checked at B, which raises the session
		require.Equal(t, http.StatusFound, resp.StatusCode)
		c.via(0)
		bank := b.exchange(c.rp("bank"), b.code(resp, state), verifier) // exchanged at A
		require.Equal(t, "mfa", bank.assurance(t).ACR)

		c.sync()
		c.via(0)
		tok := b.login(c.rp("mail"), "alice") // SSO at A: no factor asked, the session rose at B
		require.Equal(t, "mfa", tok.assurance(t).ACR)

		// The same code, at A, in another browser's sign-in: refused.
		other := c.via(0).browser()
		resp, _, _ = other.passwordStep(c.rp("bank"), "alice")
		resp = other.submitCode(body(t, resp), code)
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		require.Contains(t, body(t, resp), "already used")
	})
}

// Every way a session ends forgets its factors: the next sign-in asks the
// password and the second factor again, in a new session.
func TestEveryEndForgetsTheFactors(t *testing.T) {
	// (Advances stay under 10 minutes: ID tokens are stamped by the real clock.)
	for _, tc := range []struct {
		name, client string
		reason       session.Reason
		opts         []envOption
		end          func(e *env, sid string)
	}{
		{"idle_timeout", "bank", session.ReasonIdleTimeout, nil, func(e *env, _ string) { e.clock.Advance(6 * time.Minute); e.sweep() }},
		{"max_lifetime", "mail", session.ReasonMaxLifetime, []envOption{func(c *Config) { c.Session.MaxLifetime = 8 * time.Minute }},
			func(e *env, _ string) { e.clock.Advance(8*time.Minute + time.Second); e.sweep() }},
		{"logout", "mail", session.ReasonLogout, nil, func(e *env, sid string) {
			require.NoError(e.t, e.p.tracker.End(e.t.Context(), sid, session.ReasonLogout, "user"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, append(tc.opts, requireMFA(tc.client, false))...)
			secret, _ := e.enrollTOTP("alice")
			b := e.browser()
			resp, verifier, state := b.passwordStep(e.rp(tc.client), "alice")
			first := b.exchange(e.rp(tc.client), b.code(b.submitCode(body(t, resp), e.totpCode(secret, 0)), state), verifier)
			require.Equal(t, "mfa", first.assurance(t).ACR)

			tc.end(e, first.sid)
			st, err := e.p.tracker.Session(t.Context(), first.sid)
			require.NoError(t, err)
			require.False(t, st.Active)
			require.Equal(t, tc.reason, st.EndReason)
			resp, verifier, state = b.authorize(e.rp(tc.client))
			page := body(t, resp)
			require.Contains(t, page, `name="password"`, "the password is asked again")
			resp = b.submitLogin(page, "alice", testPassword)
			page = body(t, resp)
			requireFactorPage(t, page) // and the second factor
			e.clock.Advance(mfa.TOTPPeriod * time.Second)
			again := b.exchange(e.rp(tc.client), b.code(b.submitCode(page, e.totpCode(secret, 0)), state), verifier)
			require.NotEqual(t, first.sid, again.sid)
		})
	}
}
