package oidc

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// accountFreshness is how recent a sign-in must be for a change on the
// account page: someone at a forgotten, still signed-in browser cannot add
// their own factor to another person's account.
const accountFreshness = 5 * time.Minute

// accountView is the /account page.
type accountView struct {
	Title, Username, Notice, Error, CSRF string
	Fresh                                bool // signed in at most accountFreshness ago: changes allowed
	NeedsCode                            bool // the confirmation asks for a code too
	ConfirmPasskey                       bool // the confirmation may be a passkey
	ConfirmPassword                      bool // the confirmation may be the password (and code)
	Factors                              session.Factors
	Passkeys                             []passkeyView
	Enroll                               bool // the TOTP setup is shown
	QR                                   template.URL
	Secret                               string
	Action                               string
}

type passkeyView struct {
	ID, Name, Added string
}

// accountSession returns the live session of the signed-in browser, or
// answers the browser itself.
func (p *Provider) accountSession(w http.ResponseWriter, r *http.Request) (activity.Status, *session.User, bool) {
	ctx := r.Context()
	var st activity.Status
	var err error
	if sid := p.sessionCookie(r); sid != "" {
		st, err = p.tracker.Session(ctx, sid)
	}
	if err != nil && !errors.Is(err, session.ErrNotFound) {
		p.serverError(w, r, err)
		return st, nil, false
	}
	if err != nil || !st.Active {
		p.messagePage(w, r, http.StatusUnauthorized, "Not signed in",
			"Your account page is there while you are signed in. Sign in to one of your applications, then come back.")
		return st, nil, false
	}
	u, err := p.store.UserByID(ctx, st.UserID)
	if err != nil {
		p.serverError(w, r, err)
		return st, nil, false
	}
	return st, u, true
}

// mayChange reports whether session st may change the factors of its
// person, who has factors f: signed in at most accountFreshness ago, and,
// when the person has a second factor, with it. Otherwise a stolen password
// alone could replace the authenticator app or add the thief's passkey.
func (p *Provider) mayChange(st activity.Status, f session.Factors) bool {
	return p.now().Sub(st.AuthTime) <= accountFreshness && (!f.Any() || satisfies(st.AMR, mfa.ACRMulti))
}

// mayChangeNow is mayChange with the person's factors read from the store.
func (p *Provider) mayChangeNow(ctx context.Context, st activity.Status) (bool, error) {
	f, err := p.factors.Of(ctx, st.UserID)
	return err == nil && p.mayChange(st, f), err
}

func (p *Provider) accountPage(w http.ResponseWriter, r *http.Request) {
	st, u, ok := p.accountSession(w, r)
	if !ok {
		return
	}
	p.showAccount(w, r, http.StatusOK, st, u, accountView{})
}

func (p *Provider) showAccount(w http.ResponseWriter, r *http.Request, status int, st activity.Status, u *session.User, v accountView) {
	ctx := r.Context()
	var err error
	if v.Factors, err = p.factors.Of(ctx, u.ID); err != nil {
		p.serverError(w, r, err)
		return
	}
	creds, err := p.store.WebAuthnCredentials(ctx, u.ID)
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	for _, c := range creds {
		v.Passkeys = append(v.Passkeys, passkeyView{ID: base64.RawURLEncoding.EncodeToString(c.ID), Name: c.Name,
			Added: c.CreatedAt.UTC().Format("2 Jan 2006")})
	}
	v.Title, v.Username, v.CSRF = "Your account", u.Username, p.csrfToken(w, r)
	v.Fresh, v.NeedsCode = p.mayChange(st, v.Factors), v.Factors.TOTP
	v.ConfirmPasskey = !v.Fresh && v.Factors.Passkeys > 0 && p.passkeys != nil
	v.ConfirmPassword = !v.Fresh && (v.Factors.TOTP || !v.Factors.Any()) // a password alone would not do
	if !v.Fresh && v.Notice == "" {
		v.Notice = "To change how you sign in, confirm it is you."
	}
	w.Header().Set("Content-Security-Policy", fmt.Sprintf(pageCSP, ""))
	p.render(w, r, status, "account.html", v)
}

// accountPost checks the form of a change on the account page: a live
// session, the CSRF token, and, when needFresh, a fresh sign-in.
func (p *Provider) accountPost(w http.ResponseWriter, r *http.Request, needFresh bool) (activity.Status, *session.User, bool) {
	if err := r.ParseForm(); err != nil {
		p.messagePage(w, r, http.StatusBadRequest, "Bad request", "The form could not be read.")
		return activity.Status{}, nil, false
	}
	st, u, ok := p.accountSession(w, r)
	if !ok {
		return st, nil, false
	}
	if !p.checkCSRF(r) {
		p.showAccount(w, r, http.StatusForbidden, st, u, accountView{Error: "Your form expired. Please try again."})
		return st, nil, false
	}
	if needFresh {
		ok, err := p.mayChangeNow(r.Context(), st)
		if err != nil {
			p.serverError(w, r, err)
			return st, nil, false
		}
		if !ok {
			p.showAccount(w, r, http.StatusForbidden, st, u, accountView{Error: "Confirm it is you first: changes need a sign-in at most 5 minutes old, with your second factor."})
			return st, nil, false
		}
	}
	return st, u, true
}

// accountConfirm is the fresh sign-in the account page asks before a
// change: the password, and the code when the person has an authenticator
// app. It reauthenticates the session (a new auth_time) with what was
// proved.
func (p *Provider) accountConfirm(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, u, ok := p.accountPost(w, r, false)
	if !ok {
		return
	}
	fail := func(status int, v loginView) { p.showAccount(w, r, status, st, u, accountView{Error: v.Error}) }
	a := &passwordAttempt{username: u.Username, password: r.PostFormValue("password"), address: requestAddress(ctx), user: u}
	if a.password == "" || len(a.password) > 1024 {
		fail(http.StatusBadRequest, loginView{Error: "Enter your password."})
		return
	}
	a.device = p.knownDevice(r, u)
	if !p.checkPassword(w, r, a, fail) {
		return
	}
	amr := []string{mfa.AMRPassword}
	f, err := p.factors.Of(ctx, u.ID)
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	if f.TOTP {
		kind, ok := p.checkCode(w, r, u.ID, strings.TrimSpace(r.PostFormValue("code")), func(status int, msg string) { fail(status, loginView{Error: msg}) })
		if !ok {
			return
		}
		amr = mfa.WithFactor(amr, mfa.AMROTP)
		p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditFactorUsed, UserID: u.ID, SID: st.SID, Detail: "factor=" + kind + " account"})
	}
	if st, err = p.tracker.Reauthenticate(ctx, st.SID, amr); err != nil {
		p.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/account", http.StatusSeeOther)
}

// accountConfirmPasskey is the fresh sign-in of the account page made with
// a passkey (which is two factors by itself).
func (p *Provider) accountConfirmPasskey(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, u, id, answer, ok := p.accountPasskeyPost(w, r, false)
	if !ok {
		return
	}
	_, method, err := p.passkeys.FinishLogin(ctx, u.ID, id, answer)
	if err != nil {
		p.passkeyFailed(w, r, u.ID, purposeConfirm, err, func(status int, msg string) { p.showAccount(w, r, status, st, u, accountView{Error: msg}) })
		return
	}
	p.audit(ctx, session.AuditEvent{At: p.now(), Kind: session.AuditFactorUsed, UserID: u.ID, SID: st.SID, Detail: "factor=passkey account"})
	if _, err := p.tracker.Reauthenticate(ctx, st.SID, mfa.WithFactor(nil, method)); err != nil {
		p.serverError(w, r, err)
		return
	}
	http.Redirect(w, r, "/account", http.StatusSeeOther)
}

// accountTOTPStart shows the setup of an authenticator app (a fresh secret
// in a sealed cookie until one code confirms it).
func (p *Provider) accountTOTPStart(w http.ResponseWriter, r *http.Request) {
	st, u, ok := p.accountPost(w, r, true)
	if !ok {
		return
	}
	p.showTOTPSetup(w, r, http.StatusOK, st, u, "")
}

func (p *Provider) showTOTPSetup(w http.ResponseWriter, r *http.Request, status int, st activity.Status, u *session.User, errMsg string) {
	var fv factorView
	if err := p.startTOTPEnrollment(w, r, u.ID, &fv); err != nil {
		p.serverError(w, r, err)
		return
	}
	p.showAccount(w, r, status, st, u, accountView{Enroll: true, QR: fv.QR, Secret: fv.Secret, Error: errMsg})
}

// accountTOTPConfirm confirms the authenticator app being set up with one
// code, stores it (replacing any) and shows the recovery codes.
func (p *Provider) accountTOTPConfirm(w http.ResponseWriter, r *http.Request) {
	st, u, ok := p.accountPost(w, r, true)
	if !ok {
		return
	}
	code := strings.TrimSpace(r.PostFormValue("code"))
	codes, ok := p.confirmEnrollment(w, r, u.ID, code, func(status int, msg string) { p.showTOTPSetup(w, r, status, st, u, msg) })
	if !ok || !p.raiseForEnrollment(w, r, st, mfa.AMROTP) {
		return
	}
	p.render(w, r, http.StatusOK, "recovery.html", recoveryView{Title: "Save your recovery codes", Codes: codes, Continue: "/account"})
}

// raiseForEnrollment raises the session that just enrolled a factor with
// it: the person proved it (the confirming code, the passkey's
// ceremony), and the account page stays usable to them.
func (p *Provider) raiseForEnrollment(w http.ResponseWriter, r *http.Request, st activity.Status, method string) bool {
	if _, err := p.tracker.RaiseAssurance(r.Context(), st.SID, mfa.WithFactor(st.AMR, method), "enrolled on /account"); err != nil {
		p.serverError(w, r, err)
		return false
	}
	return true
}

// accountPasskeyDelete removes one of the person's passkeys.
func (p *Provider) accountPasskeyDelete(w http.ResponseWriter, r *http.Request) {
	st, u, ok := p.accountPost(w, r, true)
	if !ok {
		return
	}
	id, err := base64.RawURLEncoding.DecodeString(r.PostFormValue("id"))
	if err != nil || len(id) == 0 || len(id) > 1023 {
		p.showAccount(w, r, http.StatusBadRequest, st, u, accountView{Error: "That passkey is unknown."})
		return
	}
	err = p.store.DeleteWebAuthnCredential(r.Context(), u.ID, id, p.now(), "user")
	if errors.Is(err, session.ErrNotFound) {
		p.showAccount(w, r, http.StatusNotFound, st, u, accountView{Error: "That passkey is unknown."})
		return
	}
	if err != nil {
		p.serverError(w, r, err)
		return
	}
	p.showAccount(w, r, http.StatusOK, st, u, accountView{Notice: "The passkey was removed."})
}
