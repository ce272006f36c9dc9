package oidc

import (
	"net/http"
	"time"

	"github.com/idleguard/idleguard/session"
)

// deviceCookieName is the device cookie (OWASP, "Slow down online guessing
// attacks with device cookies"): set at a successful sign-in, it lets the
// same person sign in from the same browser while guesses at their
// username, or from their address, are being slowed.
const deviceCookieName = "idleguard_device"

// deviceCookieTTL is how long a browser stays a known device without a
// sign-in; every sign-in renews it.
const deviceCookieTTL = 180 * 24 * time.Hour

// device is a device cookie's sealed content: whose device it is, and a
// random id on which its own failures are counted.
type device struct {
	UserID string
	ID     string
}

// knownDevice returns the id of the device cookie that r carries for user,
// or "" when it carries none (or one of someone else, or forged, or old).
func (p *Provider) knownDevice(r *http.Request, user *session.User) string {
	if user == nil {
		return ""
	}
	var d device
	if p.devices.Decode(deviceCookieName, p.cookieValue(r.Header, deviceCookieName), &d) != nil || d.UserID != user.ID || d.ID == "" {
		return ""
	}
	return d.ID
}

// rememberDevice gives the browser a fresh device cookie for user. It is
// sent only to the login form's POST.
func (p *Provider) rememberDevice(w http.ResponseWriter, user *session.User) {
	enc, err := p.devices.Encode(deviceCookieName, device{UserID: user.ID, ID: randomB64(16)})
	if err != nil {
		return
	}
	c := p.newCookie(deviceCookieName, enc, http.SameSiteStrictMode)
	c.MaxAge = int(deviceCookieTTL / time.Second)
	http.SetCookie(w, c)
}
