package oidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/stretchr/testify/require"

	"github.com/idleguard/idleguard/session"
)

// onLocalhost names the provider http://localhost:PORT: passkeys need a
// domain name, and localhost is one.
func onLocalhost(c *Config) { c.Issuer = strings.Replace(c.Issuer, "127.0.0.1", "localhost", 1) }

// authenticator is a software WebAuthn authenticator: one P-256 passkey,
// user-verified, with a signature counter. It answers ceremonies the way a
// browser passes an authenticator's answer on (WebAuthn Level 3 JSON).
type authenticator struct {
	t       *testing.T
	key     *ecdsa.PrivateKey
	id      []byte
	user    []byte // the user handle it stored at registration
	rpID    string
	origin  string
	count   uint32
	flagsBE bool // backup eligible (a synced passkey: swk)
}

func newAuthenticator(t *testing.T, e *env) *authenticator {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	id := make([]byte, 16)
	_, _ = rand.Read(id)
	u, _ := url.Parse(e.issuer)
	return &authenticator{t: t, key: key, id: id, rpID: u.Hostname(), origin: e.issuer}
}

var b64u = base64.RawURLEncoding

func (a *authenticator) clientData(typ string, challenge string) []byte {
	data, err := json.Marshal(map[string]any{"type": typ, "challenge": challenge, "origin": a.origin, "crossOrigin": false})
	require.NoError(a.t, err)
	return data
}

func (a *authenticator) authData(attested []byte) []byte {
	rp := sha256.Sum256([]byte(a.rpID))
	flags := byte(0x01 | 0x04) // user present, user verified
	if a.flagsBE {
		flags |= 0x08
	}
	if attested != nil {
		flags |= 0x40
	}
	out := append(rp[:], flags)
	out = binary.BigEndian.AppendUint32(out, a.count)
	return append(out, attested...)
}

// create answers a registration ceremony's options.
func (a *authenticator) create(options map[string]any) string {
	pk := options["publicKey"].(map[string]any)
	user := pk["user"].(map[string]any)
	var err error
	a.user, err = b64u.DecodeString(user["id"].(string))
	require.NoError(a.t, err)
	cose, err := cbor.Marshal(map[int]any{1: 2, 3: -7, -1: 1, -2: a.key.X.FillBytes(make([]byte, 32)), -3: a.key.Y.FillBytes(make([]byte, 32))})
	require.NoError(a.t, err)
	attested := append(make([]byte, 16), byte(len(a.id)>>8), byte(len(a.id)))
	attested = append(append(attested, a.id...), cose...)
	att, err := cbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": a.authData(attested)})
	require.NoError(a.t, err)
	return a.json(map[string]any{"clientDataJSON": b64u.EncodeToString(a.clientData("webauthn.create", pk["challenge"].(string))),
		"attestationObject": b64u.EncodeToString(att), "transports": []string{"internal"}})
}

// get answers an assertion ceremony's options, counting one use.
func (a *authenticator) get(options map[string]any) string {
	pk := options["publicKey"].(map[string]any)
	a.count++
	client := a.clientData("webauthn.get", pk["challenge"].(string))
	auth := a.authData(nil)
	hash := sha256.Sum256(client)
	digest := sha256.Sum256(append(auth, hash[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, a.key, digest[:])
	require.NoError(a.t, err)
	return a.json(map[string]any{"clientDataJSON": b64u.EncodeToString(client), "authenticatorData": b64u.EncodeToString(auth),
		"signature": b64u.EncodeToString(sig), "userHandle": b64u.EncodeToString(a.user)})
}

func (a *authenticator) json(response map[string]any) string {
	data, err := json.Marshal(map[string]any{"id": b64u.EncodeToString(a.id), "rawId": b64u.EncodeToString(a.id), "type": "public-key",
		"response": response, "clientExtensionResults": map[string]any{}})
	require.NoError(a.t, err)
	return string(data)
}

var (
	dataCSRF    = regexp.MustCompile(`data-csrf="([^"]*)"`)
	dataRequest = regexp.MustCompile(`data-request="([^"]*)"`)
	dataPasskey = regexp.MustCompile(`class="passkey" data-passkey="([a-z]+)"`)
)

type ceremony struct {
	ID      string         `json:"ceremony"`
	Options map[string]any `json:"options"`
	fields  url.Values
}

// passkeyBegin presses the passkey button of page: it asks the provider for
// the ceremony, as static/passkey.js does.
func (b *browser) passkeyBegin(page string) *ceremony {
	b.t.Helper()
	purpose := dataPasskey.FindStringSubmatch(page)
	require.NotNil(b.t, purpose, "no passkey button in page:\n%s", page)
	fields := url.Values{"csrf": {dataCSRF.FindStringSubmatch(page)[1]}, "purpose": {purpose[1]}}
	if m := dataRequest.FindStringSubmatch(page); m != nil {
		fields.Set("authRequestID", m[1])
	}
	resp, err := b.client.PostForm(b.e.issuer+"/passkey/begin", fields)
	require.NoError(b.t, err)
	defer resp.Body.Close()
	require.Equal(b.t, http.StatusOK, resp.StatusCode)
	c := &ceremony{fields: fields}
	require.NoError(b.t, json.NewDecoder(resp.Body).Decode(c))
	return c
}

// passkeyFinish posts the authenticator's answer to c, as static/passkey.js does.
func (b *browser) passkeyFinish(c *ceremony, answer string, extra ...string) *http.Response {
	b.t.Helper()
	form := url.Values{}
	for k, v := range c.fields {
		form[k] = v
	}
	form.Set("ceremony", c.ID)
	form.Set("credential", answer)
	for i := 0; i+1 < len(extra); i += 2 {
		form.Set(extra[i], extra[i+1])
	}
	action := map[string]string{purposeAccount: "/account/passkeys", purposeConfirm: "/account/confirm/passkey"}[c.fields.Get("purpose")]
	if action == "" {
		action = "/login/passkey"
	}
	resp, err := b.client.PostForm(b.e.issuer+action, form)
	require.NoError(b.t, err)
	return resp
}

// registerPasskey adds a passkey from the account page of a browser signed
// in within the last five minutes.
func (b *browser) registerPasskey(a *authenticator, name string) {
	b.t.Helper()
	c := b.passkeyBegin(body(b.t, b.get("/account")))
	resp := b.passkeyFinish(c, a.create(c.Options), "name", name)
	require.Equal(b.t, http.StatusOK, resp.StatusCode)
	page := body(b.t, resp)
	require.Contains(b.t, page, "Your passkey was added.")
	require.Contains(b.t, page, name)
}

func TestPasskeyRegisterUseAsSecondFactorSignInWithoutPasswordAndRemove(t *testing.T) {
	e := newEnv(t, onLocalhost, requireMFA("bank", true))
	key := newAuthenticator(t, e)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	b.registerPasskey(key, "laptop")
	events, err := e.store.Audit(t.Context(), session.AuditFilter{UserID: userIDOf(t, e, "alice")})
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditFactorEnrolled, ""))

	// Registering it raised this session (the person proved the passkey).
	require.Equal(t, "phr", b.login(e.rp("mail"), "alice").assurance(t).ACR)

	// The bank needs a phishing-resistant session: in a session signed in
	// with the password, the passkey, as a step-up.
	b = e.browser()
	require.Equal(t, "pwd", b.login(e.rp("mail"), "alice").assurance(t).ACR)
	resp, verifier, state := b.authorize(e.rp("bank"))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "Use a passkey")
	require.NotContains(t, page, `name="password"`)
	c := b.passkeyBegin(page)
	bank := b.exchange(e.rp("bank"), b.code(b.passkeyFinish(c, key.get(c.Options)), state), verifier)
	require.Equal(t, assurance{ACR: "phr", AMR: []string{"pwd", "hwk", "mfa"}}, bank.assurance(t))

	// Another browser signs in with the passkey alone: no username, no password.
	b2 := e.browser()
	resp, verifier, state = b2.authorize(e.rp("mail"))
	page = body(t, resp)
	require.Contains(t, page, "Sign in with a passkey")
	c = b2.passkeyBegin(page)
	tok := b2.exchange(e.rp("mail"), b2.code(b2.passkeyFinish(c, key.get(c.Options)), state), verifier)
	require.Equal(t, assurance{ACR: "phr", AMR: []string{"hwk", "mfa"}}, tok.assurance(t))
	require.Equal(t, bank.id.Subject, tok.id.Subject)

	// Removed from the account page, it signs nobody in any more.
	page = body(t, b2.get("/account"))
	id := regexp.MustCompile(`name="id" value="([^"]+)"`).FindStringSubmatch(page)
	require.NotNil(t, id, page)
	resp = b2.accountPost(page, "/account/passkeys/delete", url.Values{"id": {id[1]}})
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body(t, resp), "The passkey was removed.")
	b3 := e.browser()
	resp, _, _ = b3.authorize(e.rp("mail"))
	c = b3.passkeyBegin(body(t, resp))
	resp = b3.passkeyFinish(c, key.get(c.Options))
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.Contains(t, body(t, resp), "not registered")
	require.Empty(t, b3.sessionCookie())
}

func TestSyncedPasskeyIsSoftwareKey(t *testing.T) {
	e := newEnv(t, onLocalhost)
	key := newAuthenticator(t, e)
	key.flagsBE = true
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	b.registerPasskey(key, "phone")
	b2 := e.browser()
	resp, verifier, state := b2.authorize(e.rp("mail"))
	c := b2.passkeyBegin(body(t, resp))
	tok := b2.exchange(e.rp("mail"), b2.code(b2.passkeyFinish(c, key.get(c.Options)), state), verifier)
	require.Equal(t, assurance{ACR: "phr", AMR: []string{"swk", "mfa"}}, tok.assurance(t))
}

func TestBadPasskeyAnswersSignNobodyIn(t *testing.T) {
	e := newEnv(t, onLocalhost, requireMFA("bank", true))
	e.addUser("bob")
	alice, bob := newAuthenticator(t, e), newAuthenticator(t, e)
	ba := e.browser()
	ba.login(e.rp("mail"), "alice")
	ba.registerPasskey(alice, "alice key")
	bb := e.browser()
	bb.login(e.rp("mail"), "bob")
	bb.registerPasskey(bob, "bob key")

	signIn := func() (*browser, *ceremony) {
		b := e.browser()
		resp, _, _ := b.authorize(e.rp("mail"))
		return b, b.passkeyBegin(body(t, resp))
	}
	refused := func(b *browser, resp *http.Response, status int, text string) {
		t.Helper()
		require.Equal(t, status, resp.StatusCode)
		page := body(t, resp)
		require.Contains(t, page, text)
		require.Contains(t, page, `role="alert"`)
		require.Empty(t, b.sessionCookie(), "nobody signed in")
	}

	t.Run("a replayed assertion", func(t *testing.T) {
		b, c := signIn()
		answer := alice.get(c.Options)
		resp := b.passkeyFinish(c, answer)
		require.Equal(t, http.StatusFound, resp.StatusCode)
		resp.Body.Close()
		thief := e.browser()
		resp, _, _ = thief.authorize(e.rp("mail"))
		c2 := thief.passkeyBegin(body(t, resp))
		c.fields = c2.fields // the thief's own sign-in, the captured answer and ceremony
		refused(thief, thief.passkeyFinish(c, answer), http.StatusUnauthorized, "expired or was already used")
	})
	t.Run("an assertion for another origin", func(t *testing.T) {
		b, c := signIn()
		phished := *alice
		phished.origin = "http://localhost.evil.example"
		refused(b, b.passkeyFinish(c, phished.get(c.Options)), http.StatusUnauthorized, "could not be verified")
		alice.count = phished.count
	})
	t.Run("an unregistered credential", func(t *testing.T) {
		b, c := signIn()
		stranger := newAuthenticator(t, e)
		stranger.user = alice.user
		refused(b, b.passkeyFinish(c, stranger.get(c.Options)), http.StatusUnauthorized, "not registered")
	})
	t.Run("another person's passkey as alice's second factor", func(t *testing.T) {
		b := e.browser()
		resp, _, _ := b.passwordStep(e.rp("bank"), "alice")
		c := b.passkeyBegin(body(t, resp))
		refused(b, b.passkeyFinish(c, bob.get(c.Options)), http.StatusUnauthorized, "could not be verified")
	})
	t.Run("a counter that went backwards (a cloned key)", func(t *testing.T) {
		b, c := signIn()
		clone := *alice
		clone.count = 0
		refused(b, b.passkeyFinish(c, clone.get(c.Options)), http.StatusUnauthorized, "refused")
	})
	t.Run("an oversized attestation", func(t *testing.T) {
		page := body(t, ba.get("/account"))
		before, err := e.store.WebAuthnCredentials(t.Context(), userIDOf(t, e, "alice"))
		require.NoError(t, err)
		c := ba.passkeyBegin(page)
		answer := newAuthenticator(t, e).create(c.Options)
		answer = strings.Replace(answer, `"transports":["internal"]`, `"transports":["`+strings.Repeat("x", 20<<10)+`"]`, 1)
		resp := ba.passkeyFinish(c, answer)
		require.Contains(t, []int{http.StatusRequestEntityTooLarge, http.StatusUnauthorized, http.StatusBadRequest}, resp.StatusCode)
		require.Contains(t, body(t, resp), `role="alert"`)
		after, err := e.store.WebAuthnCredentials(t.Context(), userIDOf(t, e, "alice"))
		require.NoError(t, err)
		require.Len(t, after, len(before), "nothing enrolled")
	})
	events, err := e.store.Audit(t.Context(), session.AuditFilter{})
	require.NoError(t, err)
	require.True(t, hasEvent(events, session.AuditFactorFailed, ""))
}

func TestPasskeysNeedADomainName(t *testing.T) {
	e := newEnv(t) // issuer http://127.0.0.1:PORT
	b := e.browser()
	resp, _, _ := b.authorize(e.rp("mail"))
	page := body(t, resp)
	require.NotContains(t, page, "Sign in with a passkey")
	form := b.loginForm(page, "", "")
	resp, err := b.client.PostForm(e.issuer+"/passkey/begin", url.Values{"csrf": form["csrf"], "purpose": {"signin"}, "authRequestID": form["authRequestID"]})
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Contains(t, body(t, resp), "not available")
}

func TestAppThatNeedsAPasskeyEnrollsOneDuringSignIn(t *testing.T) {
	e := newEnv(t, onLocalhost, requireMFA("bank", true))
	key := newAuthenticator(t, e)
	b := e.browser()
	resp, verifier, state := b.passwordStep(e.rp("bank"), "alice")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page := body(t, resp)
	require.Contains(t, page, "This application needs a passkey. Add one to continue.")
	c := b.passkeyBegin(page)
	require.Equal(t, purposeRegister, c.fields.Get("purpose"))
	tok := b.exchange(e.rp("bank"), b.code(b.passkeyFinish(c, key.create(c.Options), "name", "laptop"), state), verifier)
	require.Equal(t, assurance{ACR: "phr", AMR: []string{"pwd", "hwk", "mfa"}}, tok.assurance(t))

	// A person who has an authenticator app gives its code before adding a
	// passkey: a stolen password alone never adds the thief's passkey.
	e.addUser("bob")
	secret, _ := e.enrollTOTP("bob")
	b2 := e.browser()
	resp, verifier, state = b2.passwordStep(e.rp("bank"), "bob")
	page = body(t, resp)
	require.NotContains(t, page, `data-passkey="register"`)
	form := b2.loginForm(page, "", "")
	fields := url.Values{"csrf": form["csrf"], "purpose": {purposeRegister}, "authRequestID": form["authRequestID"]}
	resp, err := b2.client.PostForm(e.issuer+"/passkey/begin", fields)
	require.NoError(t, err)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, body(t, resp), "code from your authenticator app first")
	resp = b2.submitCode(page, e.totpCode(secret, 0))
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "a code is not a passkey")
	page = body(t, resp)
	c = b2.passkeyBegin(page)
	require.Equal(t, purposeRegister, c.fields.Get("purpose"))
	tok = b2.exchange(e.rp("bank"), b2.code(b2.passkeyFinish(c, newAuthenticator(t, e).create(c.Options)), state), verifier)
	require.Equal(t, "phr", tok.assurance(t).ACR)
}

func TestAccountConfirmedWithAPasskey(t *testing.T) {
	e := newEnv(t, onLocalhost)
	key := newAuthenticator(t, e)
	b := e.browser()
	b.login(e.rp("mail"), "alice")
	b.registerPasskey(key, "laptop")

	b2 := e.browser()
	b2.login(e.rp("mail"), "alice") // password only: enough for mail, not for the account page
	page := body(t, b2.get("/account"))
	require.Contains(t, page, "Confirm with a passkey")
	require.NotContains(t, page, `action="/account/confirm"`, "the password alone would not do")
	c := b2.passkeyBegin(page)
	require.Equal(t, purposeConfirm, c.fields.Get("purpose"))
	resp := b2.passkeyFinish(c, key.get(c.Options))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	page = body(t, resp)
	require.Contains(t, page, "Add a passkey")
	require.Contains(t, page, `aria-label="Remove passkey laptop"`)
}
