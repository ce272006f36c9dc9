package oidc

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
	"time"

	qrcode "github.com/skip2/go-qrcode"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// FactorStore keeps second factors and WebAuthn ceremonies.
type FactorStore interface {
	mfa.Store
	mfa.PasskeyStore
	DeleteWebAuthnCredential(ctx context.Context, userID string, id []byte, at time.Time, by string) error
	PurgeCeremonies(ctx context.Context, now time.Time) error
}

// factorView is the second-factor page: a code form, a passkey button, or
// the enrollment of an authenticator app.
type factorView struct {
	Title, Client, Notice, Error, AuthRequestID, CSRF string
	Action                                            string // where the code form posts
	HasTOTP, HasPasskey, PasskeyOnly                  bool
	PasskeyAction                                     string // "login", "register" or "" (see passkey.go)
	// Enrollment of an authenticator app (the QR code as a data: URI).
	Enroll       bool
	QR           template.URL
	Secret       string
	CanUseCode   bool
	RecoveryLeft int
}

// pageCSP is the policy of the factor and account pages: the QR code is a
// data: image, the passkey ceremony a script of our own.
const pageCSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; connect-src 'self'; " +
	"form-action 'self'%s; frame-ancestors 'none'; base-uri 'none'"

func (p *Provider) renderFactor(w http.ResponseWriter, r *http.Request, status int, req *authRequest, v factorView) {
	v.Title = "Second factor"
	if v.Enroll {
		v.Title = "Set up a second factor"
	}
	v.AuthRequestID, v.Client, v.CSRF = req.ID, req.ClientID, p.csrfToken(w, r)
	if v.Action == "" {
		v.Action = "/login/factor"
	}
	w.Header().Set("Content-Security-Policy", fmt.Sprintf(pageCSP, appFormAction(req)))
	p.render(w, r, status, "factor.html", v)
}

// qrDataURI draws text as a QR code PNG in a data: URI.
func qrDataURI(text string) (template.URL, error) {
	png, err := qrcode.Encode(text, qrcode.Medium, 240)
	if err != nil {
		return "", err
	}
	return template.URL("data:image/png;base64," + base64.StdEncoding.EncodeToString(png)), nil
}

// pendingRequest loads the authorization request named by the page and
// checks that this browser started it and that it waits for a factor.
func (p *Provider) pendingRequest(w http.ResponseWriter, r *http.Request, id string) (*authRequest, bool) {
	req, ok := p.browserAuthRequest(w, r, id)
	if !ok {
		return nil, false
	}
	if !p.sentBy(req, r) {
		p.otherBrowser(w, r)
		return nil, false
	}
	if req.Pending == nil || req.IsDone {
		p.badLoginLink(w, r)
		return nil, false
	}
	return req, true
}

// askFactor stores a pending factor in req and sends the browser to the
// second-factor page.
func (p *Provider) askFactor(w http.ResponseWriter, r *http.Request, req *authRequest, pending *pendingFactor) {
	pending.At = p.now()
	req.Pending = pending
	if err := p.saveAuthRequest(r.Context(), req); err != nil {
		p.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/login/factor?authRequestID="+url.QueryEscape(req.ID), http.StatusSeeOther)
}

// factorPage shows the second-factor form, or the enrollment of one for a
// person who has none and needs one.
func (p *Provider) factorPage(w http.ResponseWriter, r *http.Request) {
	req, ok := p.pendingRequest(w, r, r.URL.Query().Get("authRequestID"))
	if !ok {
		return
	}
	p.showFactor(w, r, http.StatusOK, req, "")
}

func (p *Provider) showFactor(w http.ResponseWriter, r *http.Request, status int, req *authRequest, errMsg string) {
	ctx := r.Context()
	f, err := p.factors.Of(ctx, req.Pending.UserID)
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	v := factorView{Error: errMsg, HasTOTP: f.TOTP, HasPasskey: f.Passkeys > 0, PasskeyOnly: req.Pending.passkeyOnly(),
		RecoveryLeft: f.RecoveryCodes}
	v.CanUseCode = f.TOTP && !v.PasskeyOnly
	if p.passkeys != nil && v.HasPasskey {
		v.PasskeyAction = purposeFactor
	}
	switch {
	case v.PasskeyOnly && !v.HasPasskey && p.passkeys == nil:
		v.Error = cmp.Or(errMsg, "This application needs a passkey, and this server cannot offer passkeys. Ask your administrator.")
	case v.PasskeyOnly && !v.HasPasskey && !p.mayRegisterInSignIn(r, req):
		v.CanUseCode = true // the code first, then a passkey can be added
		v.Notice = "This application needs a passkey. Enter the code from your authenticator app, then add a passkey."
	case v.PasskeyOnly && !v.HasPasskey:
		v.Notice = "This application needs a passkey. Add one to continue."
		v.Enroll, v.PasskeyAction = true, purposeRegister
	case !f.Any():
		if err := p.startTOTPEnrollment(w, r, req.Pending.UserID, &v); err != nil {
			p.serverError(w, r, err)
			return
		}
		v.Action = "/login/enroll"
		if p.passkeys != nil {
			v.PasskeyAction = purposeRegister // or a passkey instead
		}
	}
	p.renderFactor(w, r, status, req, v)
}

// enrollCookieName carries a TOTP secret being enrolled, sealed (and
// authenticated) by the cookie keys, until one code confirms it: nothing
// is stored before the person proves their app has the secret.
const enrollCookieName = "idleguard_enroll"

type pendingTOTP struct {
	UserID string
	Secret string
}

// startTOTPEnrollment fills v with a fresh secret (or the one this browser
// is already enrolling) and its QR code.
func (p *Provider) startTOTPEnrollment(w http.ResponseWriter, r *http.Request, userID string, v *factorView) error {
	u, err := p.store.UserByID(r.Context(), userID)
	if err != nil {
		return err
	}
	pend, ok := p.pendingTOTP(r, userID)
	if !ok {
		e, err := p.factors.NewEnrollment(u.Username)
		if err != nil {
			return err
		}
		pend = pendingTOTP{UserID: userID, Secret: e.Secret}
		enc, err := p.tickets.Encode(enrollCookieName, pend)
		if err != nil {
			return err
		}
		c := p.newCookie(enrollCookieName, enc, http.SameSiteStrictMode)
		c.MaxAge = 600
		http.SetCookie(w, c)
	}
	uri, err := p.factors.EnrollmentURI(u.Username, pend.Secret)
	if err != nil {
		return err
	}
	v.Enroll, v.Secret = true, pend.Secret
	v.QR, err = qrDataURI(uri)
	return err
}

func (p *Provider) pendingTOTP(r *http.Request, userID string) (pendingTOTP, bool) {
	var pend pendingTOTP
	if p.tickets.Decode(enrollCookieName, p.cookieValue(r.Header, enrollCookieName), &pend) != nil || pend.UserID != userID || pend.Secret == "" {
		return pendingTOTP{}, false
	}
	return pend, true
}

// factorForm reads and checks a posted second-factor form.
func (p *Provider) factorForm(w http.ResponseWriter, r *http.Request) (*authRequest, string, bool) {
	if err := r.ParseForm(); err != nil {
		p.messagePage(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return nil, "", false
	}
	req, ok := p.pendingRequest(w, r, r.PostFormValue("authRequestID"))
	if !ok {
		return nil, "", false
	}
	if !p.checkCSRF(r) {
		p.showFactor(w, r, http.StatusForbidden, req, "Your form expired. Please try again.")
		return nil, "", false
	}
	code := strings.TrimSpace(r.PostFormValue("code"))
	if code == "" || len(code) > 64 {
		p.showFactor(w, r, http.StatusBadRequest, req, "Enter the six-digit code from your authenticator app, or a recovery code.")
		return nil, "", false
	}
	return req, code, true
}

// factorSubmit checks a TOTP or recovery code for a pending sign-in or
// step-up.
func (p *Provider) factorSubmit(w http.ResponseWriter, r *http.Request) {
	req, code, ok := p.factorForm(w, r)
	if !ok {
		return
	}
	kind, ok := p.checkCode(w, r, req.Pending.UserID, code, func(status int, msg string) { p.showFactor(w, r, status, req, msg) })
	if !ok {
		return
	}
	p.factorDone(w, r, req, mfa.AMROTP, "factor="+kind, nil)
}

// enrollSubmit confirms the authenticator app being enrolled during a
// sign-in with one code, stores it, and shows the recovery codes.
func (p *Provider) enrollSubmit(w http.ResponseWriter, r *http.Request) {
	req, code, ok := p.factorForm(w, r)
	if !ok {
		return
	}
	codes, ok := p.confirmEnrollment(w, r, req.Pending.UserID, code, func(status int, msg string) { p.showFactor(w, r, status, req, msg) })
	if !ok {
		return
	}
	p.factorDone(w, r, req, mfa.AMROTP, "factor=totp enrolled", codes)
}

// confirmEnrollment checks code against the secret this browser is
// enrolling for userID and stores the factor; it answers the browser
// through fail unless that worked.
func (p *Provider) confirmEnrollment(w http.ResponseWriter, r *http.Request, userID, code string, fail func(int, string)) ([]string, bool) {
	ctx := r.Context()
	pend, ok := p.pendingTOTP(r, userID)
	if !ok {
		fail(http.StatusBadRequest, "The setup expired. Scan the new QR code and enter a code from it.")
		return nil, false
	}
	if !mfa.WellFormedCode(code) {
		fail(http.StatusBadRequest, "Enter the six-digit code your authenticator app shows.")
		return nil, false
	}
	step, ok := p.factors.Confirm(pend.Secret, code)
	if !ok {
		p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditFactorFailed, UserID: userID, Detail: "factor=totp enrollment request_id=" + requestID(ctx)})
		fail(http.StatusUnauthorized, "That code does not match. Check the time on your phone and try the next code.")
		return nil, false
	}
	codes, err := p.factors.Enroll(ctx, userID, pend.Secret, step, "user")
	if err != nil {
		p.serverError(w, r, err)
		return nil, false
	}
	p.clearCookie(w, enrollCookieName)
	return codes, true
}

// checkCode checks a code of userID through the sign-in throttle: counted
// against the person (apart from their password failures, which a right
// password forgets) and the address before it is checked, so wrong codes
// slow down like wrong passwords, at every replica.
func (p *Provider) checkCode(w http.ResponseWriter, r *http.Request, userID, code string, fail func(int, string)) (string, bool) {
	ctx := r.Context()
	keys := []string{p.limiter.hash("m", userID), p.limiter.hash("a", addressKey(requestAddress(ctx)))}
	release, err := p.limiter.enter(ctx, keys)
	if err != nil {
		fail(http.StatusTooManyRequests, "Another attempt is in progress. Try again in a moment.")
		return "", false
	}
	defer release()
	attempt, wait, err := p.reserveLoginAttempt(ctx, keys)
	if err != nil {
		p.serverError(w, r, err)
		return "", false
	}
	if wait > 0 {
		p.loginThrottled(w, wait, fmt.Sprintf("Too many wrong codes. Try again in %s.", humanWait(wait)), fail)
		return "", false
	}
	kind, err := p.factors.CheckCode(ctx, userID, code)
	if err == nil {
		if err := p.limiter.succeeded(ctx, attempt); err != nil {
			p.cfg.Logger.WarnContext(ctx, "login throttle: forget failures", "error", err)
		}
		return kind, true
	}
	msg := codeError(err)
	if msg == "" {
		p.serverError(w, r, err)
		return "", false
	}
	p.factorRefused(ctx, userID, kindOr(kind), err)
	fail(http.StatusUnauthorized, msg)
	return "", false
}

// factorRefused counts and audits a refused second factor of userID;
// factor names it (and, for a passkey, the ceremony's purpose).
func (p *Provider) factorRefused(ctx context.Context, userID, factor string, err error) {
	p.counters.loginFailed.Add(1)
	p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditFactorFailed, UserID: userID,
		Detail: fmt.Sprintf("factor=%s error=%q address=%s request_id=%s", factor, err, requestAddress(ctx), requestID(ctx))})
}

// codeError words a refused code for people; "" for a failure of ours.
func codeError(err error) string {
	switch {
	case errors.Is(err, mfa.ErrMalformedCode):
		return "Enter the six-digit code from your authenticator app, or a recovery code (xxxx-xxxx-xxxx)."
	case errors.Is(err, mfa.ErrWrongCode):
		return "That code is not right. Try the code your app shows now."
	case errors.Is(err, mfa.ErrReplayedCode):
		return "That code was already used. Wait for the next code."
	}
	return ""
}

func kindOr(kind string) string {
	if kind == "" {
		return "code"
	}
	return kind
}

// factorDone finishes a pending sign-in or step-up once a factor of method
// was accepted: the session is created (or reauthenticated) with every
// factor proved, or the live session's assurance rises; then the app gets
// its code. recovery, when set, are fresh recovery codes to show first.
func (p *Provider) factorDone(w http.ResponseWriter, r *http.Request, req *authRequest, method, detail string, recovery []string) {
	ctx := r.Context()
	pend := req.Pending
	amr := mfa.WithFactor(pend.AMR, method)
	p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditFactorUsed, UserID: pend.UserID, SID: pend.SID, ClientID: req.ClientID,
		Detail: detail + " request_id=" + requestID(ctx)})
	if !satisfies(amr, pend.Need) {
		pend.AMR = amr
		if err := p.saveAuthRequest(ctx, req); err != nil {
			p.serverError(w, r, err)
			return
		}
		p.showFactor(w, r, http.StatusForbidden, req, "This application needs a passkey.")
		return
	}
	st, err := p.finishFactor(ctx, r, req, amr, detail)
	if errors.Is(err, activity.ErrSessionOver) {
		req.Pending = nil
		p.showLogin(w, r, http.StatusOK, req, loginView{Notice: "Your session ended meanwhile. Please sign in again."})
		return
	}
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	req.Pending = nil
	target, ok := p.bindLogin(w, r, req, st)
	if !ok {
		return
	}
	if len(recovery) > 0 {
		p.render(w, r, http.StatusOK, "recovery.html", recoveryView{Title: "Save your recovery codes", Codes: recovery, Continue: target})
		return
	}
	http.Redirect(w, r, target, http.StatusFound)
}

func (p *Provider) finishFactor(ctx context.Context, r *http.Request, req *authRequest, amr []string, detail string) (activity.Status, error) {
	pend := req.Pending
	if pend.SID != "" {
		if _, err := p.tracker.RaiseAssurance(ctx, pend.SID, amr, detail); err != nil {
			return activity.Status{}, err
		}
		return p.tracker.TouchSession(ctx, pend.SID, req.ClientID, activity.SSO)
	}
	st, err := p.signIn(ctx, p.sessionCookie(r), pend.UserID, amr)
	if err == nil {
		p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditLoginSucceeded, UserID: pend.UserID, SID: st.SID,
			Detail: "amr=" + strings.Join(amr, ",") + " address=" + requestAddress(ctx) + " request_id=" + requestID(ctx)})
	}
	return st, err
}

// recoveryView shows recovery codes once, with the way on.
type recoveryView struct {
	Title    string
	Codes    []string
	Continue string
}

// stepUpNeeded answers a prompt=none request whose session lacks the
// assurance asked for: interaction_required, through its redirect_uri.
func (p *Provider) stepUpNeeded(w http.ResponseWriter, r *http.Request, req *authRequest) {
	op.AuthRequestError(w, r, req, zoidc.ErrInteractionRequired().WithDescription("a second factor is required"), p.op)
}
