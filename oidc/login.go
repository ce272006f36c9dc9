package oidc

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

const (
	sessionCookieName = "idleguard_session"
	csrfCookieName    = "idleguard_csrf"
)

// sessionCookie returns the authentication session id in the browser's
// cookie, or "".
func (p *Provider) sessionCookie(r *http.Request) string {
	var sid string
	if err := p.cookies.Decode(sessionCookieName, p.cookieValue(r.Header, sessionCookieName), &sid); err != nil {
		return ""
	}
	return sid
}

func (p *Provider) setCookie(w http.ResponseWriter, name, value string, expires time.Time) {
	c := p.newCookie(name, value, http.SameSiteLaxMode)
	c.Expires = expires
	http.SetCookie(w, c)
}

func (p *Provider) clearCookie(w http.ResponseWriter, name string) {
	c := p.newCookie(name, "", http.SameSiteLaxMode)
	c.MaxAge = -1
	http.SetCookie(w, c)
}

// csrfToken returns the browser's CSRF token, setting a fresh cookie when it
// has none (double-submit cookie, the cookie sealed by securecookie). The
// cookie is SameSite=Lax, not Strict: an app on another site sends the
// browser to /login by a cross-site navigation, which withholds Strict
// cookies, so a Strict token would be replaced there and the form open in
// another tab would fail. A cross-site POST carries no Lax cookie, so the
// form still cannot be posted from another site.
func (p *Provider) csrfToken(w http.ResponseWriter, r *http.Request) string {
	var tok string
	if p.cookies.Decode(csrfCookieName, p.cookieValue(r.Header, csrfCookieName), &tok) == nil && tok != "" {
		return tok
	}
	tok = randomB64(24)
	enc, err := p.cookies.Encode(csrfCookieName, tok)
	if err == nil {
		http.SetCookie(w, p.newCookie(csrfCookieName, enc, http.SameSiteLaxMode))
	}
	return tok
}

func (p *Provider) checkCSRF(r *http.Request) bool {
	var tok string
	if p.cookies.Decode(csrfCookieName, p.cookieValue(r.Header, csrfCookieName), &tok) != nil || tok == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(tok), []byte(r.PostFormValue("csrf"))) == 1
}

type loginView struct {
	Title, Client, Notice, Error, AuthRequestID, CSRF, Username string
	Passkeys                                                    bool // offer a sign-in with a passkey
}

type messageView struct {
	Title, Message, Link, LinkText string
	IsError                        bool
}

func (p *Provider) render(w http.ResponseWriter, r *http.Request, status int, page string, data any) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	if h.Get("Content-Security-Policy") == "" {
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	}
	w.WriteHeader(status)
	if err := p.pages.ExecuteTemplate(w, page, data); err != nil {
		p.cfg.Logger.ErrorContext(r.Context(), "render", "page", page, "error", err)
	}
}

func (p *Provider) messagePage(w http.ResponseWriter, r *http.Request, status int, title, msg string) {
	p.render(w, r, status, "message.html", messageView{Title: title, Message: msg, IsError: status >= 400})
}

func (p *Provider) badLoginLink(w http.ResponseWriter, r *http.Request) {
	p.messagePage(w, r, http.StatusBadRequest, "Sign-in link expired",
		"This sign-in link is unknown or has expired. Go back to the application and sign in again.")
}

// signedOutNotice explains why a person whose browser still carries an ended
// session sees the login page.
func signedOutNotice(st activity.Status) string {
	switch st.EndReason {
	case session.ReasonIdleTimeout:
		return fmt.Sprintf("You were signed out after %s of inactivity.", humanDuration(st.IdleLimit))
	case session.ReasonMaxLifetime:
		return "Your session reached its maximum length. Please sign in again."
	case session.ReasonAdmin:
		return "An administrator ended your session. Please sign in again."
	case session.ReasonLogout:
		return "You signed out. Sign in again to continue."
	}
	return "Your session has ended. Please sign in again."
}

func humanDuration(d time.Duration) string {
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return plural(int(d/time.Hour), "hour")
	case d >= time.Minute && d%time.Minute == 0:
		return plural(int(d/time.Minute), "minute")
	case d >= time.Minute:
		return fmt.Sprintf("%.1f minutes", d.Minutes())
	}
	return plural(int(d/time.Second), "second")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// loginPage answers an authorization request: from the existing session
// (single sign-on, counted as sso activity) when it is valid and the request
// does not demand a fresh sign-in, otherwise with the sign-in form.
func (p *Provider) loginPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id := r.URL.Query().Get("authRequestID")
	req, ok := p.browserAuthRequest(w, r, id)
	if !ok {
		return
	}
	if !p.sentBy(req, r) {
		if req.hasPrompt(zoidc.PromptNone) { // no page may be shown (OpenID Connect Core 1.0 section 3.1.2.1)
			op.AuthRequestError(w, r, req, zoidc.ErrLoginRequired(), p.op)
			return
		}
		p.otherBrowser(w, r)
		return
	}
	notice := ""
	if sid := p.sessionCookie(r); sid != "" {
		st, err := p.tracker.Session(ctx, sid)
		switch {
		case err != nil && !errors.Is(err, session.ErrNotFound):
			p.serverError(w, r, err)
			return
		case err == nil && st.Active && !p.needsFreshLogin(req, st):
			if need := p.requiredACR(req); !satisfies(st.AMR, need) {
				p.stepUp(w, r, req, st, need)
				return
			}
			// prompt=none is how silent renew works (a hidden iframe on a
			// timer): never activity, or a forgotten tab would stay signed in.
			if !req.hasPrompt(zoidc.PromptNone) {
				st, err = p.tracker.TouchSession(ctx, sid, req.ClientID, activity.SSO)
			}
			if err == nil && st.Active {
				p.completeLogin(w, r, req, st)
				return
			}
		case err == nil && !st.Active:
			notice = signedOutNotice(st)
		}
	}
	if req.hasPrompt(zoidc.PromptNone) {
		op.AuthRequestError(w, r, req, zoidc.ErrLoginRequired(), p.op)
		return
	}
	p.showLogin(w, r, http.StatusOK, req, loginView{Notice: notice, Username: req.LoginHint})
}

// needsFreshLogin: prompt=login, or max_age exceeded.
func (p *Provider) needsFreshLogin(req *authRequest, st activity.Status) bool {
	if req.hasPrompt(zoidc.PromptLogin) {
		return true
	}
	if req.MaxAge != nil && p.now().Sub(st.AuthTime) > time.Duration(*req.MaxAge)*time.Second {
		return true
	}
	return false
}

// appFormAction is the origin of req's redirect_uri, with a leading space,
// for the form-action of a sign-in page: its form posts here, and the
// answer redirects (through the callback) to the app, and browsers apply
// form-action to that redirect too. "" when the URI has no origin.
func appFormAction(req *authRequest) string {
	if u, err := url.Parse(req.RedirectURI); err == nil && u.Scheme != "" && u.Host != "" {
		return " " + u.Scheme + "://" + u.Host
	}
	return ""
}

func (p *Provider) showLogin(w http.ResponseWriter, r *http.Request, status int, req *authRequest, v loginView) {
	v.Title = "Sign in"
	v.AuthRequestID = req.ID
	v.CSRF = p.csrfToken(w, r)
	v.Client = req.ClientID
	if len(v.Username) > 200 {
		v.Username = ""
	}
	v.Passkeys = p.passkeys != nil
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; form-action 'self'"+
		appFormAction(req)+"; frame-ancestors 'none'; base-uri 'none'")
	p.render(w, r, status, "login.html", v)
}

// loginSubmit checks a username and password through the limiter, and
// signs the person in.
func (p *Provider) loginSubmit(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		p.messagePage(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return
	}
	req, a, ok := p.loginAttempt(w, r)
	if !ok || !p.checkPassword(w, r, a, func(status int, v loginView) { p.showLogin(w, r, status, req, v) }) {
		return
	}
	ctx, cancel := p.dbBudget(r.Context())
	defer cancel()
	r = r.WithContext(ctx)
	p.rememberDevice(w, a.user)
	if pending, err := p.secondFactorNeeded(ctx, r, req, a.user.ID); err != nil || pending != nil {
		if err != nil {
			p.serverError(w, r, err)
			return
		}
		p.askFactor(w, r, req, pending)
		return
	}
	st, err := p.signIn(ctx, p.sessionCookie(r), a.user.ID, []string{mfa.AMRPassword})
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditLoginSucceeded, UserID: a.user.ID, SID: st.SID, Detail: p.loginDetail(ctx, a)})
	p.completeLogin(w, r, req, st)
}

// loginAttempt reads a submitted login form: its authorization request,
// which must be this browser's, the CSRF token, and the person named.
func (p *Provider) loginAttempt(w http.ResponseWriter, r *http.Request) (*authRequest, *passwordAttempt, bool) {
	ctx, cancel := p.dbBudget(r.Context())
	defer cancel()
	r = r.WithContext(ctx)
	req, ok := p.browserAuthRequest(w, r, r.PostFormValue("authRequestID"))
	if !ok {
		return nil, nil, false
	}
	if !p.sentBy(req, r) {
		p.otherBrowser(w, r)
		return nil, nil, false
	}
	if !p.checkCSRF(r) {
		p.showLogin(w, r, http.StatusForbidden, req, loginView{Error: "Your sign-in form expired. Please try again."})
		return nil, nil, false
	}
	a := &passwordAttempt{username: strings.TrimSpace(r.PostFormValue("username")), password: r.PostFormValue("password"),
		address: requestAddress(ctx)}
	if a.username == "" || a.password == "" || len(a.username) > 200 || len(a.password) > 1024 {
		p.showLogin(w, r, http.StatusBadRequest, req, loginView{Error: "Enter your username and password.", Username: a.username})
		return nil, nil, false
	}
	var err error
	a.user, err = p.store.UserByUsername(ctx, a.username)
	if err != nil && !errors.Is(err, session.ErrNotFound) {
		p.serverError(w, r, err)
		return nil, nil, false
	}
	a.device = p.knownDevice(r, a.user)
	return req, a, true
}

// signIn records a successful password sign-in: a fresh sign-in into the
// browser's live session of the same person, or a new session (ending the
// browser's previous one if it belonged to someone else).
func (p *Provider) signIn(ctx context.Context, oldSID, userID string, amr []string) (activity.Status, error) {
	if oldSID != "" {
		if old, err := p.tracker.Session(ctx, oldSID); err == nil && old.Active {
			if old.UserID == userID {
				if st, err := p.tracker.Reauthenticate(ctx, oldSID, amr); err == nil {
					return st, nil
				}
			} else if err := p.tracker.End(ctx, oldSID, session.ReasonLogout, "user"); err != nil {
				return activity.Status{}, err
			}
		}
	}
	return p.tracker.Start(ctx, userID, amr)
}

// completeLogin binds the authorization request to the session and sends
// the browser back to the protocol's callback, which issues the code.
func (p *Provider) completeLogin(w http.ResponseWriter, r *http.Request, req *authRequest, st activity.Status) {
	if target, ok := p.bindLogin(w, r, req, st); ok {
		http.Redirect(w, r, target, http.StatusFound)
	}
}

// bindLogin completes req with session st (its acr is the session's), sets
// the session cookie and returns the callback that issues the code; it
// answers the browser itself when that fails.
func (p *Provider) bindLogin(w http.ResponseWriter, r *http.Request, req *authRequest, st activity.Status) (string, bool) {
	req.UserID, req.SID, req.AuthTime, req.AMR, req.IsDone = st.UserID, st.SID, st.AuthTime, st.AMR, true
	req.ACR = mfa.ACR(st.AMR)
	if err := p.saveAuthRequest(r.Context(), req); err != nil {
		p.serverError(w, r, err)
		return "", false
	}
	enc, err := p.cookies.Encode(sessionCookieName, st.SID)
	if err != nil {
		p.serverError(w, r, err)
		return "", false
	}
	p.setCookie(w, sessionCookieName, enc, st.AbsoluteDeadline)
	return op.AuthCallbackURL(p.op)(r.Context(), req.ID), true
}

// secondFactorNeeded returns the pending factor a password sign-in of
// userID still needs, or nil when the password is enough.
func (p *Provider) secondFactorNeeded(ctx context.Context, r *http.Request, req *authRequest, userID string) (*pendingFactor, error) {
	f, err := p.factors.Of(ctx, userID)
	if err != nil {
		return nil, err
	}
	var previous []string // the live session this sign-in renews: its factors are asked again
	if sid := p.sessionCookie(r); sid != "" {
		if old, err := p.tracker.Session(ctx, sid); err == nil && old.Active && old.UserID == userID {
			previous = old.AMR
		}
	}
	need := p.signInACR(req, f, previous)
	if satisfies([]string{mfa.AMRPassword}, need) && !p.mustEnroll(f, need) {
		return nil, nil
	}
	return &pendingFactor{UserID: userID, AMR: []string{mfa.AMRPassword}, Need: need}, nil
}

// stepUp asks the person of live session st for the factor that req needs
// (a step-up inside the SSO session: no password again).
func (p *Provider) stepUp(w http.ResponseWriter, r *http.Request, req *authRequest, st activity.Status, need string) {
	if req.hasPrompt(zoidc.PromptNone) {
		p.stepUpNeeded(w, r, req)
		return
	}
	p.askFactor(w, r, req, &pendingFactor{UserID: st.UserID, AMR: st.AMR, SID: st.SID, Need: need})
}

func (p *Provider) audit(ctx context.Context, ev session.AuditEvent) {
	if err := p.store.AddAudit(ctx, ev); err != nil {
		p.cfg.Logger.ErrorContext(ctx, "audit", "kind", ev.Kind, "error", err)
	}
}
