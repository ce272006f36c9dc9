package oidc

import "net/http"

// Cookie prefixes (RFC 6265bis section 4.1.3). A browser keeps a cookie
// named __Host-... only when it is Secure, has Path=/ and no Domain, so no
// other host (a sibling subdomain such as evil.example.com next to
// login.example.com) can set one; __Secure-... only requires Secure, which
// keeps out cookies set over plain http.
const (
	hostPrefix   = "__Host-"
	securePrefix = "__Secure-"
)

// cookiePath is the path the cookie named base is sent to: the device
// cookie goes only to the login form, every other cookie to the whole host.
func cookiePath(base string) string {
	if base == deviceCookieName {
		return "/login"
	}
	return "/"
}

// cookieName is the name the cookie named base carries in the browser.
// Over https it is prefixed, so that a cookie tossed into the browser by a
// sibling subdomain (its own session, CSRF token or binding token: login
// CSRF) is never read: __Host- for a cookie sent to the whole host,
// __Secure- for one confined to a narrower path. Over plain http the base
// name is kept, as browsers refuse prefixed cookies that are not Secure.
// The securecookie MAC names stay the base names.
func (p *Provider) cookieName(base string) string {
	switch {
	case !p.secure:
		return base
	case cookiePath(base) == "/":
		return hostPrefix + base
	default:
		return securePrefix + base
	}
}

// newCookie is the cookie named base holding value: HttpOnly, sent to its
// path, Secure over https, with no Domain (host-only). Callers set its
// lifetime.
func (p *Provider) newCookie(base, value string, sameSite http.SameSite) *http.Cookie {
	return &http.Cookie{Name: p.cookieName(base), Value: value, Path: cookiePath(base),
		HttpOnly: true, Secure: p.secure, SameSite: sameSite}
}

// cookieValue returns the value of the cookie named base in h, or "".
func (p *Provider) cookieValue(h http.Header, base string) string {
	c, err := (&http.Request{Header: h}).Cookie(p.cookieName(base))
	if err != nil {
		return ""
	}
	return c.Value
}
