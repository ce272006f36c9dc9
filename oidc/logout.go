package oidc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/session"
)

// frontchannelWait bounds how long the signed-out page waits for the apps'
// front-channel logout frames before it follows the redirect.
const frontchannelWait = 3 * time.Second

// logoutTicket carries the ended session and the validated post-logout
// redirect from end_session to the signed-out page, sealed and short-lived.
type logoutTicket struct {
	SID      string
	Redirect string
	ClientID string
}

// endAndFrontchannel ends session sid (RP-initiated logout: the person asked
// to leave, so every application session ends, exempt ones included) and
// returns the URL of the signed-out page that runs front-channel logout and
// then follows the validated post_logout_redirect_uri. The page's ticket is
// sealed first: nothing ends unless the answer can be given.
func (p *Provider) endAndFrontchannel(ctx context.Context, sid string, req *op.EndSessionRequest) (string, error) {
	target, err := p.logoutURL("/logged-out", logoutTicket{SID: sid, Redirect: p.validRedirect(req)})
	if err != nil {
		return "", fmt.Errorf("seal logout ticket: %w", err)
	}
	return target, p.endForLogout(ctx, sid, req)
}

// endForLogout is the ending part of endAndFrontchannel.
func (p *Provider) endForLogout(ctx context.Context, sid string, req *op.EndSessionRequest) error {
	initiator := "user"
	if req.ClientID != "" {
		initiator = req.ClientID
	}
	if sid == "" {
		if req.UserID == "" {
			return nil
		}
		// An id_token_hint without sid: end that person's sessions.
		return p.endUserSessions(ctx, req.UserID, session.ReasonLogout, initiator)
	}
	if st, err := p.tracker.Session(ctx, sid); err == nil && !st.Active {
		// Already over (the browser library sends the page here after an
		// idle end): not the person asking to leave, so the end keeps its
		// reason and exempt apps keep their sessions. An end the sweeper
		// has not written yet is written now.
		if err := p.tracker.End(ctx, sid, st.EndReason, "system"); err != nil {
			return err
		}
		// An app that outlived the end (exempt) and asks to log out
		// means it: its own session ends.
		return p.endLiveApp(ctx, sid, req.ClientID)
	}
	if err := p.tracker.End(ctx, sid, session.ReasonLogout, initiator); err != nil && !errors.Is(err, session.ErrNotFound) {
		return err
	}
	return nil
}

// Bounds of the end_session parameters. A hint is one of our ID tokens; the
// state comes back in the post-logout redirect, which travels sealed in the
// signed-out page's link and must stay well inside a URL.
const (
	maxIDTokenHint = 8192
	maxLogoutState = 1024
	maxLogoutParam = 2048 // client_id, post_logout_redirect_uri, logout_hint
)

var errNotIDToken = errors.New("the token is not an ID token")

// checkEndSession refuses an end-session request whose parameters are out
// of bounds, before anything acts on it.
func checkEndSession(d *zoidc.EndSessionRequest) error {
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"id_token_hint", d.IdTokenHint, maxIDTokenHint},
		{"state", d.State, maxLogoutState},
		{"client_id", d.ClientID, maxLogoutParam},
		{"post_logout_redirect_uri", d.PostLogoutRedirectURI, maxLogoutParam},
		{"logout_hint", d.LogoutHint, maxLogoutParam},
	} {
		if len(f.value) > f.max {
			return zoidc.ErrInvalidRequest().WithDescription("%s is longer than %d bytes", f.name, f.max)
		}
	}
	return nil
}

// checkHintAudience refuses an id_token_hint that was not issued to the
// client it names: an ID token's aud contains its azp, the client it was
// issued to (OpenID Connect Core section 2).
func checkHintAudience(req *op.EndSessionRequest) error {
	c := req.IDTokenHintClaims
	if c == nil {
		return nil
	}
	if c.AuthorizedParty == "" || c.AuthorizedParty != req.ClientID || !slices.Contains(c.Audience, c.AuthorizedParty) {
		return zoidc.ErrInvalidRequest().WithDescription("id_token_hint invalid")
	}
	return nil
}

// idTokenKeys verifies the signature of an id_token_hint, and first refuses
// every JWT that is not an ID token by its header. Access tokens (typ
// at+jwt, RFC 9068) and logout tokens (typ logout+jwt) are signed with the
// same keys; an API that sees a person's access token must not be able to
// sign the person out everywhere with it. ID tokens carry typ JWT, or none.
type idTokenKeys struct{ keys *Keys }

func (k idTokenKeys) VerifySignature(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	for _, sig := range jws.Signatures {
		if typ, ok := sig.Header.ExtraHeaders[jose.HeaderType]; ok && !strings.EqualFold(fmt.Sprint(typ), "JWT") {
			return nil, errNotIDToken
		}
	}
	return k.keys.VerifySignature(ctx, jws)
}

// validRedirect is the post-logout redirect that zitadel validated against
// the client's registration, or "" for none. Without a registered one,
// zitadel answers its default (the signed-out page itself), with the state
// appended when one was sent: that is none too, or the signed-out page
// would send the browser on to a ticketless copy of itself.
func (p *Provider) validRedirect(req *op.EndSessionRequest) string {
	def := p.op.DefaultLogoutRedirectURI()
	if req.RedirectURI == def || strings.HasPrefix(req.RedirectURI, def+"?") {
		return ""
	}
	return req.RedirectURI
}

// logoutURL seals a ticket into a link to one of the logout pages. The
// ticket is sealed under the page's path, so that it opens that page only:
// the ticket of "Sign out?" (a session not yet ended) must never open the
// signed-out page.
func (p *Provider) logoutURL(path string, t logoutTicket) (string, error) {
	enc, err := p.tickets.Encode(path, t)
	if err != nil {
		return "", err
	}
	return p.issuer() + path + "?t=" + url.QueryEscape(enc), nil
}

// openTicket unseals the ticket that a link or form to the page at path
// carries; it reports false for a ticket made for another page, forged or
// expired.
func (p *Provider) openTicket(path, raw string, t *logoutTicket) bool {
	return p.tickets.Decode(path, raw, t) == nil
}

type confirmView struct {
	Title, Ticket, CSRF, Client, Back string
}

// logoutConfirm asks whether to sign out of every application, for an
// end-session request that carried no id_token_hint.
func (p *Provider) logoutConfirm(w http.ResponseWriter, r *http.Request) {
	var t logoutTicket
	raw := r.URL.Query().Get("t")
	if !p.openTicket("/logout/confirm", raw, &t) || t.SID == "" {
		p.messagePage(w, r, http.StatusBadRequest, "Sign-out link expired", "This sign-out link is unknown or has expired.")
		return
	}
	p.render(w, r, http.StatusOK, "logout_confirm.html", confirmView{Title: "Sign out", Ticket: raw, CSRF: p.csrfToken(w, r),
		Client: t.ClientID, Back: t.Redirect})
}

// logoutConfirmed ends the session once the person has confirmed, in the
// browser whose session it is.
func (p *Provider) logoutConfirmed(w http.ResponseWriter, r *http.Request) {
	var t logoutTicket
	raw := r.PostFormValue("t")
	if !p.openTicket("/logout/confirm", raw, &t) || t.SID == "" || !p.checkCSRF(r) || p.sessionCookie(r) != t.SID {
		p.messagePage(w, r, http.StatusBadRequest, "Sign-out link expired", "This sign-out form is unknown or has expired. Nothing was changed.")
		return
	}
	initiator := "user"
	if t.ClientID != "" {
		initiator = t.ClientID
	}
	target, err := p.logoutURL("/logged-out", logoutTicket{SID: t.SID, Redirect: t.Redirect})
	if err != nil {
		p.serverError(w, r, fmt.Errorf("seal logout ticket: %w", err))
		return
	}
	if err := p.tracker.End(r.Context(), t.SID, session.ReasonLogout, initiator); err != nil && !errors.Is(err, session.ErrNotFound) {
		p.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, target, http.StatusFound)
}

// endLiveApp ends clientID's live application session in sid, if any, as
// a logout by that client.
func (p *Provider) endLiveApp(ctx context.Context, sid, clientID string) error {
	if clientID == "" {
		return nil
	}
	_, apps, err := p.store.AuthSession(ctx, sid)
	if err != nil {
		return err
	}
	for _, a := range apps {
		if a.ClientID == clientID && a.Live() {
			return p.tracker.EndApp(ctx, a.ID, session.ReasonLogout, clientID)
		}
	}
	return nil
}

func (p *Provider) endUserSessions(ctx context.Context, userID string, reason session.Reason, initiator string) error {
	sessions, _, err := p.store.SessionsOfUser(ctx, userID, false)
	if err != nil {
		return err
	}
	var errs []error
	for _, s := range sessions {
		if err := p.tracker.End(ctx, s.ID, reason, initiator); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// frontchannelURL is a client's frontchannel_logout_uri with iss and sid
// (OpenID Connect Front-Channel Logout 1.0, section 2).
func (p *Provider) frontchannelURL(c *Client, sid string) string {
	u, err := url.Parse(c.FrontchannelLogoutURI)
	if err != nil {
		return ""
	}
	q := u.Query()
	q.Set("iss", p.issuer())
	q.Set("sid", sid)
	u.RawQuery = q.Encode()
	return u.String()
}

type loggedOutView struct {
	Title, Message, Redirect, Nonce string
	Frames                          []string
	WaitMillis                      int64
}

// loggedOut is the signed-out page: it clears the session cookie, loads every
// participating client's front-channel logout URI in hidden iframes, waits
// for them (bounded), then follows the post-logout redirect.
//
// Only end_session sends a browser here, with a sealed ticket naming the
// session it ended. Without a valid ticket, or with a ticket of another
// session while this browser's own session goes on (a link someone else
// got from signing out), nothing is changed and nothing is claimed: saying
// "signed out" over a live session would be a lie the person acts on.
func (p *Provider) loggedOut(w http.ResponseWriter, r *http.Request) {
	var t logoutTicket
	if !p.openTicket("/logged-out", r.URL.Query().Get("t"), &t) || p.browserSessionGoesOn(r, t.SID) {
		p.messagePage(w, r, http.StatusBadRequest, "Sign-out link expired",
			"This sign-out link is unknown, has expired, or belongs to another sign-in. This browser's sign-in was not changed.")
		return
	}
	p.clearCookie(w, sessionCookieName)
	v := loggedOutView{Title: "Signed out", Message: "You have been signed out of every application.",
		Redirect: t.Redirect, WaitMillis: frontchannelWait.Milliseconds(), Nonce: nonce()}
	var frameOrigins []string
	if t.SID != "" {
		_, apps, err := p.store.AuthSession(r.Context(), t.SID)
		if err != nil && !errors.Is(err, session.ErrNotFound) {
			p.serverError(w, r, err)
			return
		}
		seen := map[string]bool{}
		for _, a := range apps {
			c, ok := p.clients[a.ClientID]
			// An app whose session goes on (exempt, after an idle end) is not logged out.
			if !ok || c.FrontchannelLogoutURI == "" || seen[c.ID] || a.Live() {
				continue
			}
			seen[c.ID] = true
			if f := p.frontchannelURL(c, t.SID); f != "" {
				v.Frames = append(v.Frames, f)
				if u, err := url.Parse(f); err == nil {
					frameOrigins = append(frameOrigins, u.Scheme+"://"+u.Host)
				}
			}
		}
	}
	frameSrc := "'none'"
	if len(frameOrigins) > 0 {
		frameSrc = strings.Join(frameOrigins, " ")
	}
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; script-src 'nonce-"+v.Nonce+
		"'; frame-src "+frameSrc+"; frame-ancestors 'none'; base-uri 'none'")
	p.render(w, r, http.StatusOK, "logged_out.html", v)
}

// browserSessionGoesOn reports whether r's session cookie names a live
// session other than ended, the one a logout ticket names.
func (p *Provider) browserSessionGoesOn(r *http.Request, ended string) bool {
	sid := p.sessionCookie(r)
	return sid != "" && sid != ended && p.liveSession(r.Context(), sid)
}

// liveSession reports whether session sid is known and not over.
func (p *Provider) liveSession(ctx context.Context, sid string) bool {
	st, err := p.tracker.Session(ctx, sid)
	return err == nil && st.Active
}

func nonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}
