package oidc

import (
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// Passkey ceremonies. The browser asks POST /passkey/begin for a ceremony
// (JSON: its id and the options for navigator.credentials), runs it, and
// posts the answer as a form to the page that finishes it: /login/passkey
// (a second factor, a sign-in without password, or a passkey added during
// a sign-in that needs one) or /account/passkeys. The answers are pages, so
// every error is said on the page.

// Ceremony purposes, as the page names them (data-passkey).
const (
	purposeFactor   = "login"    // a second factor of a pending sign-in or step-up
	purposeSignIn   = "signin"   // a sign-in without password or username
	purposeRegister = "register" // a passkey added during a sign-in that needs one
	purposeAccount  = "account"  // a passkey added on the account page
	purposeConfirm  = "confirm"  // the account page's fresh sign-in, with a passkey
)

func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// passkeyBegin starts a ceremony for the page's purpose.
func (p *Provider) passkeyBegin(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if p.passkeys == nil {
		jsonError(w, http.StatusNotFound, "Passkeys are not available on this server.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if r.ParseForm() != nil || !p.checkCSRF(r) {
		jsonError(w, http.StatusForbidden, "This page expired. Reload it and try again.")
		return
	}
	userID, register, msg := p.ceremonyOwner(r, r.PostFormValue("purpose"))
	if msg != "" {
		jsonError(w, http.StatusBadRequest, msg)
		return
	}
	begin := p.passkeys.BeginLogin
	if register {
		begin = p.passkeys.BeginRegistration
	}
	c, err := begin(ctx, userID)
	if err != nil {
		p.cfg.Logger.ErrorContext(ctx, "begin passkey ceremony", "error", err)
		jsonError(w, http.StatusInternalServerError, "The passkey prompt could not be prepared. Reference: "+requestID(ctx))
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// ceremonyOwner says whose ceremony a begin request may start, and whether
// it registers a passkey, or why it may not.
func (p *Provider) ceremonyOwner(r *http.Request, purpose string) (string, bool, string) {
	expired := "This sign-in expired. Go back to the application and sign in again."
	switch purpose {
	case purposeAccount:
		st, ok := p.browserSession(r)
		if may, err := p.mayChangeNow(r.Context(), st); !ok || err != nil || !may {
			return "", false, "Confirm it is you first: reload the page."
		}
		return st.UserID, true, ""
	case purposeConfirm:
		st, ok := p.browserSession(r)
		if !ok {
			return "", false, "You are not signed in any more. Sign in again from an application."
		}
		return st.UserID, false, ""
	case purposeSignIn:
		req, err := p.authRequest(r.Context(), r.PostFormValue("authRequestID"))
		if err != nil || !p.sentBy(req, r) || req.IsDone {
			return "", false, expired
		}
		return "", false, ""
	case purposeFactor, purposeRegister:
		req, err := p.authRequest(r.Context(), r.PostFormValue("authRequestID"))
		if err != nil || !p.sentBy(req, r) || req.IsDone || req.Pending == nil {
			return "", false, expired
		}
		if purpose == purposeRegister && !p.mayRegisterInSignIn(r, req) {
			return "", false, "Enter the code from your authenticator app first."
		}
		return req.Pending.UserID, purpose == purposeRegister, ""
	}
	return "", false, "Unknown passkey request."
}

// mayRegisterInSignIn: a passkey may be added during a sign-in only by a
// person with no second factor (the first one, like an authenticator app
// under login.mfa required), or after their second factor in this sign-in,
// so that a stolen password alone never adds an attacker's passkey.
func (p *Provider) mayRegisterInSignIn(r *http.Request, req *authRequest) bool {
	f, err := p.factors.Of(r.Context(), req.Pending.UserID)
	return err == nil && (!f.Any() || slices.Contains(req.Pending.AMR, mfa.AMRMulti))
}

// browserSession is the browser's live authentication session.
func (p *Provider) browserSession(r *http.Request) (st activity.Status, ok bool) {
	sid := p.sessionCookie(r)
	if sid == "" {
		return st, false
	}
	st, err := p.tracker.Session(r.Context(), sid)
	return st, err == nil && st.Active
}

// passkeyAnswer reads the ceremony id and the browser's answer of a form.
func passkeyAnswer(r *http.Request) (string, []byte, bool) {
	id, answer := r.PostFormValue("ceremony"), r.PostFormValue("credential")
	return id, []byte(answer), id != "" && len(id) <= 64 && answer != ""
}

// passkeyError words a refused ceremony for people; "" for a failure of ours.
func passkeyError(err error) string {
	switch {
	case errors.Is(err, mfa.ErrCeremonyExpired):
		return "The passkey request expired or was already used. Try again."
	case errors.Is(err, mfa.ErrPasskeyUnknown):
		return "This passkey is not registered for your account here."
	case errors.Is(err, mfa.ErrPasskeyReplayed):
		return "This passkey's answer was refused (it may have been copied). Try again, or use another way to sign in."
	case errors.Is(err, mfa.ErrPasskeyRefused):
		return "The passkey's answer could not be verified. Try again."
	}
	return ""
}

// loginPasskey finishes a ceremony of the sign-in pages.
func (p *Provider) loginPasskey(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	r.Body = http.MaxBytesReader(w, r.Body, mfa.MaxResponseSize+4096)
	if err := r.ParseForm(); err != nil {
		p.messagePage(w, r, http.StatusRequestEntityTooLarge, "Passkey refused", "The passkey's answer is too large or could not be read.")
		return
	}
	req, ok := p.browserAuthRequest(w, r, r.PostFormValue("authRequestID"))
	if !ok {
		return
	}
	if !p.sentBy(req, r) || req.IsDone {
		p.otherBrowser(w, r)
		return
	}
	purpose := r.PostFormValue("purpose")
	fail := func(status int, msg string) {
		if req.Pending != nil {
			p.showFactor(w, r, status, req, msg)
			return
		}
		p.showLogin(w, r, status, req, loginView{Error: msg})
	}
	id, answer, ok := passkeyAnswer(r)
	if p.passkeys == nil || !p.checkCSRF(r) || !ok {
		fail(http.StatusBadRequest, "The passkey's answer was incomplete or this page expired. Try again.")
		return
	}
	userID := ""
	if purpose != purposeSignIn {
		if req.Pending == nil || (purpose == purposeRegister && !p.mayRegisterInSignIn(r, req)) {
			p.badLoginLink(w, r)
			return
		}
		userID = req.Pending.UserID
	}
	var method string
	var err error
	if purpose == purposeRegister {
		method, err = p.passkeys.FinishRegistration(ctx, userID, id, passkeyName(r), answer)
	} else {
		userID, method, err = p.passkeys.FinishLogin(ctx, userID, id, answer)
	}
	if err != nil {
		p.passkeyFailed(w, r, userID, purpose, err, fail)
		return
	}
	if purpose == purposeSignIn {
		req.Pending = &pendingFactor{UserID: userID, Need: p.requiredACR(req), At: p.now()}
	}
	p.factorDone(w, r, req, method, "factor=passkey purpose="+purpose, nil)
}

func passkeyName(r *http.Request) string {
	name := strings.TrimSpace(r.PostFormValue("name"))
	if name == "" || len(name) > 60 {
		return "passkey"
	}
	return name
}

// passkeyFailed audits a refused ceremony and answers through fail.
func (p *Provider) passkeyFailed(w http.ResponseWriter, r *http.Request, userID, purpose string, err error, fail func(int, string)) {
	ctx := r.Context()
	msg := passkeyError(err)
	if msg == "" {
		p.serverError(w, r, err)
		return
	}
	p.cfg.Logger.InfoContext(ctx, "passkey refused", "purpose", purpose, "error", err)
	p.factorRefused(ctx, userID, "passkey purpose="+purpose, err)
	fail(http.StatusUnauthorized, msg)
}

// accountPasskeyPost reads a passkey answer posted to the account page,
// bounded, after accountPost's checks (needFresh: a recent sign-in); it has
// answered the browser itself when ok is false.
func (p *Provider) accountPasskeyPost(w http.ResponseWriter, r *http.Request, needFresh bool) (st activity.Status, u *session.User, id string, answer []byte, ok bool) {
	r.Body = http.MaxBytesReader(w, r.Body, mfa.MaxResponseSize+4096)
	if st, u, ok = p.accountPost(w, r, needFresh); !ok {
		return st, u, "", nil, false
	}
	if id, answer, ok = passkeyAnswer(r); p.passkeys == nil || !ok {
		p.showAccount(w, r, http.StatusBadRequest, st, u, accountView{Error: "The passkey's answer was incomplete. Try again."})
		return st, u, "", nil, false
	}
	return st, u, id, answer, true
}

// accountPasskeyAdd finishes the registration of a passkey on the account page.
func (p *Provider) accountPasskeyAdd(w http.ResponseWriter, r *http.Request) {
	st, u, id, answer, ok := p.accountPasskeyPost(w, r, true)
	if !ok {
		return
	}
	method, err := p.passkeys.FinishRegistration(r.Context(), u.ID, id, passkeyName(r), answer)
	if err != nil {
		p.passkeyFailed(w, r, u.ID, purposeAccount, err, func(status int, msg string) {
			p.showAccount(w, r, status, st, u, accountView{Error: msg})
		})
		return
	}
	if !p.raiseForEnrollment(w, r, st, method) {
		return
	}
	st.AMR = mfa.WithFactor(st.AMR, method)
	p.showAccount(w, r, http.StatusOK, st, u, accountView{Notice: "Your passkey was added."})
}
