package oidc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

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
// then follows the validated post_logout_redirect_uri.
func (p *Provider) endAndFrontchannel(ctx context.Context, sid string, req *op.EndSessionRequest) (string, error) {
	initiator := "user"
	if req.ClientID != "" {
		initiator = req.ClientID
	}
	if sid != "" {
		if st, err := p.tracker.Session(ctx, sid); err == nil && !st.Active {
			// Already over (the browser library sends the page here after an
			// idle end): not the person asking to leave, so the end keeps its
			// reason and exempt apps keep their sessions. An end the sweeper
			// has not written yet is written now.
			if err := p.tracker.End(ctx, sid, st.EndReason, "system"); err != nil {
				return "", err
			}
			// An app that outlived the end (exempt) and asks to log out
			// means it: its own session ends.
			if err := p.endLiveApp(ctx, sid, req.ClientID); err != nil {
				return "", err
			}
			return p.logoutURL("/logged-out", logoutTicket{SID: sid, Redirect: p.validRedirect(req)})
		}
		err := p.tracker.End(ctx, sid, session.ReasonLogout, initiator)
		if err != nil && !errors.Is(err, session.ErrNotFound) {
			return "", err
		}
		if errors.Is(err, session.ErrNotFound) {
			sid = ""
		}
	} else if req.UserID != "" {
		// An id_token_hint without sid: end that person's sessions.
		if err := p.endUserSessions(ctx, req.UserID, session.ReasonLogout, initiator); err != nil {
			return "", err
		}
	}
	return p.logoutURL("/logged-out", logoutTicket{SID: sid, Redirect: p.validRedirect(req)})
}

// validRedirect is the post-logout redirect that zitadel validated against
// the client's registration, or "" for none.
func (p *Provider) validRedirect(req *op.EndSessionRequest) string {
	if req.RedirectURI == p.op.DefaultLogoutRedirectURI() {
		return ""
	}
	return req.RedirectURI
}

// logoutURL seals a ticket into a link to one of the logout pages.
func (p *Provider) logoutURL(path string, t logoutTicket) (string, error) {
	enc, err := p.tickets.Encode("logout", t)
	if err != nil {
		return "", err
	}
	return p.issuer() + path + "?t=" + url.QueryEscape(enc), nil
}

type confirmView struct {
	Title, Ticket, CSRF, Client, Back string
}

// logoutConfirm asks whether to sign out of every application, for an
// end-session request that carried no id_token_hint.
func (p *Provider) logoutConfirm(w http.ResponseWriter, r *http.Request) {
	var t logoutTicket
	raw := r.URL.Query().Get("t")
	if p.tickets.Decode("logout", raw, &t) != nil || t.SID == "" {
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
	if p.tickets.Decode("logout", raw, &t) != nil || t.SID == "" || !p.checkCSRF(r) || p.sessionCookie(r) != t.SID {
		p.messagePage(w, r, http.StatusBadRequest, "Sign-out link expired", "This sign-out form is unknown or has expired. Nothing was changed.")
		return
	}
	initiator := "user"
	if t.ClientID != "" {
		initiator = t.ClientID
	}
	if err := p.tracker.End(r.Context(), t.SID, session.ReasonLogout, initiator); err != nil && !errors.Is(err, session.ErrNotFound) {
		p.serverError(w, r, err)
		return
	}
	target, err := p.logoutURL("/logged-out", logoutTicket{SID: t.SID, Redirect: t.Redirect})
	if err != nil {
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
func (p *Provider) loggedOut(w http.ResponseWriter, r *http.Request) {
	p.clearCookie(w, sessionCookieName)
	var t logoutTicket
	if raw := r.URL.Query().Get("t"); raw != "" {
		if err := p.tickets.Decode("logout", raw, &t); err != nil {
			t = logoutTicket{}
		}
	}
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

func nonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawStdEncoding.EncodeToString(b)
}
