package oidc

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The provider's cookies against cookie tossing (RFC 6265bis section
// 4.1.3): over https a sibling subdomain cannot set a cookie the provider
// reads.

func TestCookieNamesArePrefixedOnlyOverHTTPS(t *testing.T) {
	for _, tc := range []struct{ base, https, path string }{
		{sessionCookieName, "__Host-idleguard_session", "/"},
		{csrfCookieName, "__Host-idleguard_csrf", "/"},
		{browserCookieName, "__Host-idleguard_browser", "/"},
		{enrollCookieName, "__Host-idleguard_enroll", "/"},
		{deviceCookieName, "__Secure-idleguard_device", "/login"},
	} {
		t.Run(tc.base, func(t *testing.T) {
			c := (&Provider{secure: true}).newCookie(tc.base, "v", http.SameSiteLaxMode)
			require.Equal(t, tc.https, c.Name)
			require.Equal(t, tc.path, c.Path)
			require.True(t, c.Secure)
			require.Empty(t, c.Domain)
			c = (&Provider{}).newCookie(tc.base, "v", http.SameSiteLaxMode)
			require.Equal(t, tc.base, c.Name, "browsers refuse prefixed cookies without Secure")
			require.False(t, c.Secure)
		})
	}
}

// wantPrefixed is every cookie the provider sets over https: its name on
// the wire and the path it is sent to.
var wantPrefixed = map[string]string{
	"__Host-idleguard_session":  "/",
	"__Host-idleguard_csrf":     "/",
	"__Host-idleguard_browser":  "/",
	"__Host-idleguard_enroll":   "/",
	"__Secure-idleguard_device": "/login",
}

func TestEveryCookieOverHTTPSCarriesItsPrefix(t *testing.T) {
	e := newTLSEnv(t, withMFA(MFARequired)) // the enrollment sets the enroll cookie too
	b := e.browser()
	r := e.rp("mail")
	resp, verifier, state := b.passwordStep(r, "alice")
	page := body(t, resp)
	secret := regexp.MustCompile(`<code class="secret">([A-Z2-7]+)</code>`).FindStringSubmatch(page)
	require.NotNil(t, secret, page)
	page = body(t, b.submitCode(page, e.totpCode(secret[1], 0)))
	next := regexp.MustCompile(`<a class="button" href="([^"]+)">`).FindStringSubmatch(page)
	require.NotNil(t, next, page)
	resp, err := b.client.Get(e.issuer + strings.ReplaceAll(strings.TrimPrefix(next[1], e.issuer), "&amp;", "&"))
	require.NoError(t, err)
	tok := b.exchange(r, b.code(resp, state), verifier)
	require.Equal(t, tok.sid, b.login(e.rp("bank"), "alice").sid, "single sign-on reads the prefixed session cookie")
	body(t, b.endSession(tok, "", ""))

	seen, cleared := map[string]bool{}, map[string]bool{}
	for _, c := range b.setCookies {
		path, ok := wantPrefixed[c.Name]
		require.True(t, ok, "unprefixed or unknown cookie %q", c.Name)
		require.Equal(t, path, c.Path, c.Name)
		require.True(t, c.Secure, c.Name)
		require.True(t, c.HttpOnly, c.Name)
		require.Empty(t, c.Domain, c.Name)
		seen[c.Name] = true
		cleared[c.Name] = cleared[c.Name] || c.MaxAge < 0
	}
	require.Len(t, seen, len(wantPrefixed))
	require.True(t, cleared["__Host-idleguard_enroll"], "the enrollment cookie is cleared under its prefixed name")
	require.True(t, cleared["__Host-idleguard_session"], "logout clears the prefixed session cookie")
}

// issuedCookie is the value of the cookie named base (under whatever
// prefix) that the provider set in b.
func issuedCookie(t *testing.T, b *browser, base string) string {
	t.Helper()
	for _, c := range b.setCookies {
		if strings.TrimPrefix(strings.TrimPrefix(c.Name, hostPrefix), securePrefix) == base && c.Value != "" {
			return c.Value
		}
	}
	t.Fatalf("no %s cookie set", base)
	return ""
}

// toss puts a cookie named base into victim's browser as a sibling
// subdomain can: no prefix, not Secure.
func toss(t *testing.T, e *env, victim *browser, base, value string) {
	t.Helper()
	u, err := url.Parse(e.issuer)
	require.NoError(t, err)
	victim.client.Jar.SetCookies(u, []*http.Cookie{{Name: base, Value: value, Path: "/"}})
}

// Login CSRF: the attacker signs in to his own account, tosses his session
// cookie into the victim's browser, and the victim's next sign-in to an app
// would silently be his.
func TestTossedSessionCookieIsIgnoredOverHTTPS(t *testing.T) {
	e := newTLSEnv(t)
	e.addUser("mallory")
	attacker := e.browser()
	attacker.login(e.rp("mail"), "mallory")

	victim := e.browser()
	toss(t, e, victim, sessionCookieName, issuedCookie(t, attacker, sessionCookieName))
	resp, _, _ := victim.authorize(e.rp("mail"))
	require.Equal(t, http.StatusOK, resp.StatusCode, "the victim is asked to sign in, not signed in as mallory")
	victim.loginForm(body(t, resp), "alice", testPassword)
}

// The attacker starts a sign-in, tosses his binding token into the victim's
// browser and sends her his sign-in link: the request must stay his.
func TestTossedBindingCookieIsIgnoredOverHTTPS(t *testing.T) {
	e := newTLSEnv(t)
	attacker := e.browser()
	link, _, _ := attacker.startFlow(e.rp("mail"))

	victim := e.browser()
	toss(t, e, victim, browserCookieName, issuedCookie(t, attacker, browserCookieName))
	resp, err := victim.client.Get(link)
	require.NoError(t, err)
	page := body(t, resp)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "another browser's sign-in link:\n%s", page)
	require.Contains(t, page, "Start again from the app")
}
