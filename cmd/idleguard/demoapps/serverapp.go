package demoapps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/idleguard/idleguard/oidc/rs"
)

// appCopy is what differs between the portal and the video app.
type appCopy struct {
	Title string
	Lede  string // the one explanatory line under the title
	Video bool   // show the stand-in video player
}

var (
	portalCopy = appCopy{Title: "Portal",
		Lede: "A server-rendered app with its own server-side sessions. The provider tells it of every sign-out by " +
			"back-channel logout; this page shows the one countdown that every app of your session shares."}
	videoCopy = appCopy{Title: "Video", Video: true,
		Lede: "A long video: this app is exempt from the shared idle limit. Watching without touching anything signs " +
			"nobody out here, and it stays signed in when the other apps sign you out for inactivity."}
)

// ServerApp is a server-rendered relying party (a confidential client): the
// portal, or with videoCopy the exempt video app. It runs the code flow with
// PKCE through golang.org/x/oauth2, verifies ID tokens and logout tokens with
// coreos/go-oidc, and keeps its sessions in memory, keyed by a cookie and
// indexed by the provider's sid so that a logout can find them.
type ServerApp struct {
	cfg        Config
	app        App
	copy       appCopy
	oauth      *oauth2.Config
	idTokens   *gooidc.IDTokenVerifier
	logouts    *LogoutVerifier
	provider   *gooidc.Provider
	endSession string
	cookie     string // name of the session cookie (all demo apps share the host localhost)
	page       *template.Template
	mux        *http.ServeMux

	mu       sync.Mutex
	sessions map[string]*localSession // by cookie value
	pending  map[string]pendingLogin  // by state
	received []ReceivedLogout
	seenJTI  map[string]bool
}

// localSession is the app's own session for one sign-in.
type localSession struct {
	id, csrf   string
	sid, sub   string
	name       string
	email      string
	idToken    string
	signedInAt time.Time

	// Guarded by ServerApp.mu.
	endedAt      time.Time
	reason       string
	reasonSource string
	backchannel  time.Time // when a back-channel logout for it arrived

	tokMu sync.Mutex // serialises refreshes: a refresh token is single-use
	token *oauth2.Token
}

type pendingLogin struct {
	nonce, verifier string
	created         time.Time
}

// ReceivedLogout is one back-channel logout the app accepted, as listed at
// GET /debug/logouts.
type ReceivedLogout struct {
	JTI        string    `json:"jti"`
	SID        string    `json:"sid"`
	Subject    string    `json:"sub"`
	Reason     string    `json:"reason"`
	IssuedAt   time.Time `json:"iat"`
	ReceivedAt time.Time `json:"received_at"`
}

// NewServerApp reads the provider's discovery document and returns the app's
// handler. ctx bounds the background fetches of the provider's keys.
func NewServerApp(ctx context.Context, cfg Config, app App, copy appCopy) (*ServerApp, error) {
	cfg.setDefaults()
	ctx = gooidc.ClientContext(ctx, cfg.HTTPClient)
	provider, err := gooidc.NewProvider(ctx, cfg.Issuer)
	if err != nil {
		return nil, err
	}
	var meta struct {
		EndSession string `json:"end_session_endpoint"`
	}
	if err := provider.Claims(&meta); err != nil {
		return nil, err
	}
	page, err := template.ParseFS(assets, "assets/server.html")
	if err != nil {
		return nil, err
	}
	a := &ServerApp{
		cfg: cfg, app: app, copy: copy, provider: provider, endSession: meta.EndSession,
		cookie: app.ClientID + "_session", page: page, mux: http.NewServeMux(),
		oauth: &oauth2.Config{
			ClientID: app.ClientID, ClientSecret: app.ClientSecret, Endpoint: provider.Endpoint(),
			RedirectURL: app.URL + "/callback",
			Scopes:      []string{gooidc.ScopeOpenID, "profile", "email", gooidc.ScopeOfflineAccess},
		},
		idTokens: provider.VerifierContext(ctx, &gooidc.Config{ClientID: app.ClientID, Now: cfg.Now}),
		logouts:  NewLogoutVerifier(provider.VerifierContext(ctx, &gooidc.Config{ClientID: app.ClientID, Now: cfg.Now}), cfg.Now),
		sessions: map[string]*localSession{}, pending: map[string]pendingLogin{}, seenJTI: map[string]bool{},
	}
	a.mux.HandleFunc("GET /{$}", a.home)
	a.mux.HandleFunc("GET /login", a.login)
	a.mux.HandleFunc("GET /callback", a.callback)
	a.mux.HandleFunc("GET /logout", a.logout)
	a.mux.HandleFunc("GET /api/token", a.apiToken)
	a.mux.HandleFunc("POST /backchannel-logout", a.backchannelLogout)
	a.mux.HandleFunc("GET /frontchannel-logout", a.frontchannelLogout)
	a.mux.HandleFunc("GET /debug/logouts", a.debugLogouts)
	a.mux.Handle("GET /assets/", assetHandler())
	if app.API.ClientID != "" {
		if err := a.mountAPI(ctx); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	return a, nil
}

// mountAPI serves the app's API, GET /api/orders, behind the
// resource-server kit: it accepts the app's access tokens while the
// person's session lasts, refuses them as soon as the provider ends it
// (session-revoked over Shared Signals), and its traffic is the person's
// activity (batched to the provider). The kit runs until ctx ends.
func (a *ServerApp) mountAPI(ctx context.Context) error {
	kit, err := rs.New(ctx, rs.Config{Issuer: a.cfg.Issuer, ClientID: a.app.API.ClientID, ClientSecret: a.app.API.ClientSecret,
		Audiences: []string{a.app.ClientID}, HTTPClient: a.cfg.HTTPClient, Logger: a.cfg.Logger})
	if err != nil {
		return err
	}
	go kit.Run(ctx)
	a.mux.Handle("GET /api/orders", kit.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := rs.ClaimsFrom(r.Context())
		writeJSON(w, http.StatusOK, map[string]any{"subject": c.Subject, "orders": []string{"#1001 espresso beans", "#1002 grinder"}})
	})))
	return nil
}

// ServeHTTP serves the app.
func (a *ServerApp) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func (a *ServerApp) logger() *slog.Logger { return a.cfg.Logger.With("app", a.app.ClientID) }

// session returns the session the request's cookie names, or nil.
func (a *ServerApp) session(r *http.Request) *localSession {
	c, err := r.Cookie(a.cookie)
	if err != nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.sessions[c.Value]
}

func (a *ServerApp) setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge, HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: strings.HasPrefix(a.app.URL, "https://")})
}

const sourceBackchannel = "back-channel logout"

// end ends the local sessions of sid (all of them: one person may have
// signed in from two browsers) unless they are over already.
func (a *ServerApp) end(sid, sub, reason, source string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	now := a.cfg.Now()
	for _, s := range a.sessions {
		if sid != "" && s.sid != sid || sid == "" && s.sub != sub {
			continue
		}
		if source == sourceBackchannel && s.backchannel.IsZero() {
			s.backchannel = now
		}
		if s.endedAt.IsZero() {
			s.endedAt, s.reason, s.reasonSource = now, reason, source
			n++
		}
	}
	return n
}

// --- pages ---

type pageView struct {
	Copy    appCopy
	App     string
	Nav     []navLink
	State   string // "in", "ended" or "out"
	Name    string
	Email   string
	SID     string
	Reason  string
	Why     string
	Source  string
	EndedAt string
	// Backchannel is when the back-channel logout arrived, if it was not
	// what told the app first.
	Backchannel string
	Error       string
	Config      pageConfig
	MaxVideo    int
}

func (a *ServerApp) render(w http.ResponseWriter, status int, v pageView) {
	v.Copy, v.App, v.Nav = a.copy, a.app.ClientID, a.cfg.nav(a.app.ClientID)
	if v.Config.Issuer == "" {
		v.Config = a.cfg.page(a.app, false, "")
	}
	v.MaxVideo = 5400
	securityHeaders(w, a.cfg.Issuer, "'none'")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := a.page.ExecuteTemplate(w, "server.html", v); err != nil {
		a.logger().Error("render page", "error", err)
	}
}

func (a *ServerApp) home(w http.ResponseWriter, r *http.Request) {
	s := a.session(r)
	if s == nil {
		a.render(w, http.StatusOK, pageView{State: "out"})
		return
	}
	a.mu.Lock()
	endedAt, reason, source, backchannel := s.endedAt, s.reason, s.reasonSource, s.backchannel
	a.mu.Unlock()
	if !endedAt.IsZero() {
		v := pageView{State: "ended", Reason: reason, Why: reasonText(reason), Source: source, EndedAt: endedAt.Format("15:04:05")}
		if !backchannel.IsZero() && source != sourceBackchannel {
			v.Backchannel = backchannel.Format("15:04:05")
		}
		a.render(w, http.StatusOK, v)
		return
	}
	a.render(w, http.StatusOK, pageView{State: "in", Name: s.name, Email: s.email, SID: s.sid,
		Config: a.cfg.page(a.app, true, "/logout?csrf="+url.QueryEscape(s.csrf))})
}

// login starts the authorization code flow with PKCE, state and nonce.
func (a *ServerApp) login(w http.ResponseWriter, r *http.Request) {
	state, nonce, verifier := random(16), random(16), oauth2.GenerateVerifier()
	now := a.cfg.Now()
	a.mu.Lock()
	for k, p := range a.pending {
		if now.Sub(p.created) > 10*time.Minute {
			delete(a.pending, k)
		}
	}
	a.pending[state] = pendingLogin{nonce: nonce, verifier: verifier, created: now}
	a.mu.Unlock()
	// Binds the flow to this browser (login CSRF).
	a.setCookie(w, a.app.ClientID+"_login", state, 600)
	http.Redirect(w, r, a.oauth.AuthCodeURL(state, gooidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusFound)
}

func (a *ServerApp) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c, err := r.Cookie(a.app.ClientID + "_login")
	a.setCookie(w, a.app.ClientID+"_login", "", -1)
	state := q.Get("state")
	a.mu.Lock()
	p, ok := a.pending[state]
	delete(a.pending, state)
	a.mu.Unlock()
	fail := func(msg string, err error) {
		a.logger().Warn("sign-in failed", "error", err, "msg", msg)
		a.render(w, http.StatusBadRequest, pageView{State: "out", Error: msg})
	}
	switch {
	case q.Get("error") != "":
		fail("The provider refused the sign-in: "+q.Get("error")+" "+q.Get("error_description"), nil)
		return
	case err != nil || !ok || c.Value != state:
		fail("This sign-in was not started here, or it expired. Please sign in again.", err)
		return
	}
	ctx := gooidc.ClientContext(r.Context(), a.cfg.HTTPClient)
	tok, err := a.oauth.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(p.verifier))
	if err != nil {
		fail("The code exchange failed.", err)
		return
	}
	rawID, _ := tok.Extra("id_token").(string)
	idt, err := a.idTokens.Verify(ctx, rawID)
	if err != nil || idt.Nonce != p.nonce {
		fail("The ID token was not valid.", err)
		return
	}
	var claims struct {
		SID string `json:"sid"`
	}
	if err := idt.Claims(&claims); err != nil || claims.SID == "" {
		fail("The ID token has no sid.", err)
		return
	}
	s := &localSession{id: random(32), csrf: random(16), sid: claims.SID, sub: idt.Subject, idToken: rawID,
		signedInAt: a.cfg.Now(), token: tok}
	// The person just signed in: one userinfo call (it counts as activity, which it is).
	if info, err := a.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err == nil {
		var extra struct {
			Name string `json:"name"`
		}
		_ = info.Claims(&extra)
		s.name, s.email = extra.Name, info.Email
	}
	if s.name == "" {
		s.name = idt.Subject
	}
	a.mu.Lock()
	a.sessions[s.id] = s
	a.mu.Unlock()
	a.setCookie(w, a.cookie, s.id, 0)
	http.Redirect(w, r, "/", http.StatusFound)
}

// logout is the browser library's logoutUrl: every tab of the app comes here
// with ?reason= when the session is over.
//
// Only reason "logout" (the person pressed "Sign out", here or in another
// tab) goes through the provider's end_session, which ends the whole
// session, exempt apps included. Any other reason means the provider has
// ended the session already; sending the browser to end_session then would
// be a second, RP-initiated end that also signs the person out of the exempt
// video app, which must outlive an idle end. So the app only asks the
// provider why (GET /session, never activity), unless the back-channel
// logout told it already, and shows the answer.
func (a *ServerApp) logout(w http.ResponseWriter, r *http.Request) {
	s := a.session(r)
	q := r.URL.Query()
	if s == nil || q.Get("csrf") != s.csrf {
		http.Redirect(w, r, "/", http.StatusFound)
		return
	}
	a.mu.Lock()
	over := !s.endedAt.IsZero()
	a.mu.Unlock()
	if over {
		http.Redirect(w, r, "/", http.StatusFound)
		return
	}
	reason, source := q.Get("reason"), "the browser library"
	if reason == "logout" {
		a.end(s.sid, s.sub, "logout", "your sign-out here")
		u, err := url.Parse(a.endSession)
		if err != nil || a.endSession == "" {
			http.Redirect(w, r, "/", http.StatusFound)
			return
		}
		v := url.Values{"id_token_hint": {s.idToken}, "client_id": {a.app.ClientID},
			"post_logout_redirect_uri": {a.app.URL + "/"}, "state": {random(8)}}
		u.RawQuery = v.Encode()
		http.Redirect(w, r, u.String(), http.StatusFound)
		return
	}
	if st, err := a.providerStatus(r.Context(), s); err == nil && !st.Active && st.Reason != "" {
		reason, source = st.Reason, "the provider's session status"
	}
	if _, ok := reasonTexts[reason]; !ok {
		reason = "session_ended"
	}
	a.end(s.sid, s.sub, reason, source)
	http.Redirect(w, r, "/", http.StatusFound)
}

type sessionStatus struct {
	Active bool   `json:"active"`
	Reason string `json:"reason"`
}

// providerStatus reads GET /session with the session's access token. An
// expired token still reads the status, so no refresh is needed.
func (a *ServerApp) providerStatus(ctx context.Context, s *localSession) (sessionStatus, error) {
	s.tokMu.Lock()
	token := s.token.AccessToken
	s.tokMu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.cfg.Issuer+"/session", nil)
	if err != nil {
		return sessionStatus{}, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		return sessionStatus{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return sessionStatus{}, fmt.Errorf("GET /session: %s", resp.Status)
	}
	var st sessionStatus
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st, err
}

// apiToken hands the page the session's access token for the browser
// library (which calls the provider's /session and /activity with it; an
// app that must keep its tokens out of the browser would proxy those two
// endpoints instead, with the library's issuer option pointing at it). It
// refreshes the token when it is about to expire or when the library asks
// (?refresh=1, after a 401). Refreshing is not activity at the provider, so
// a page that sits open keeps nobody signed in.
func (a *ServerApp) apiToken(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s := a.session(r)
	if s == nil {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "no_session"})
		return
	}
	a.mu.Lock()
	reason := s.reason
	over := !s.endedAt.IsZero()
	a.mu.Unlock()
	if over {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "signed_out", "reason": reason})
		return
	}
	force := r.URL.Query().Get("refresh") != ""
	s.tokMu.Lock()
	defer s.tokMu.Unlock()
	tok := s.token
	if force || tok.Expiry.Before(a.cfg.Now().Add(5*time.Second)) {
		ctx := gooidc.ClientContext(r.Context(), a.cfg.HTTPClient)
		fresh, err := a.oauth.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
		switch {
		case err == nil:
			s.token, tok = fresh, fresh
		case force:
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "refresh_failed"})
			return
		default:
			// Hand out the old token: GET /session still tells the library why.
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"access_token": tok.AccessToken})
}

// backchannelLogout receives the provider's logout token (OpenID Connect
// Back-Channel Logout 1.0, section 2.8): verify it fully, end the sessions of
// its sid, answer 200. A repeated delivery (same jti) is answered 200 again.
func (a *ServerApp) backchannelLogout(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	lt, err := a.logouts.Verify(r.Context(), r.PostFormValue("logout_token"))
	if err != nil {
		a.logger().Warn("back-channel logout refused", "error", err)
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request", "error_description": err.Error()})
		return
	}
	a.mu.Lock()
	dup := a.seenJTI[lt.JTI]
	if !dup {
		a.seenJTI[lt.JTI] = true
		a.received = append(a.received, ReceivedLogout{JTI: lt.JTI, SID: lt.SID, Subject: lt.Subject, Reason: lt.Reason,
			IssuedAt: lt.IssuedAt, ReceivedAt: a.cfg.Now()})
	}
	a.mu.Unlock()
	if !dup {
		n := a.end(lt.SID, lt.Subject, lt.Reason, sourceBackchannel)
		a.logger().Info("back-channel logout", "sid", lt.SID, "reason", lt.Reason, "sessions", n)
	}
	w.WriteHeader(http.StatusOK)
}

// frontchannelLogout is loaded by the provider's signed-out page in a hidden
// iframe (OpenID Connect Front-Channel Logout 1.0): end the sessions of sid
// if iss is our provider.
func (a *ServerApp) frontchannelLogout(w http.ResponseWriter, r *http.Request) {
	securityHeaders(w, a.cfg.Issuer, originOf(a.cfg.Issuer))
	q := r.URL.Query()
	if q.Get("iss") != a.cfg.Issuer || q.Get("sid") == "" {
		http.Error(w, "iss or sid missing or wrong", http.StatusBadRequest)
		return
	}
	n := a.end(q.Get("sid"), "", "logout", "front-channel logout")
	a.logger().Info("front-channel logout", "sid", q.Get("sid"), "sessions", n)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, "<!doctype html><title>Signed out</title><p>Signed out of "+template.HTMLEscapeString(a.copy.Title)+".</p>")
}

// debugLogouts lists the back-channel logouts received, for tests and the
// curious. DEMO ONLY: a real app would not publish this.
func (a *ServerApp) debugLogouts(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	list := slices.Clone(a.received)
	a.mu.Unlock()
	if list == nil {
		list = []ReceivedLogout{}
	}
	writeJSON(w, http.StatusOK, list)
}

// Logouts returns the back-channel logouts received so far.
func (a *ServerApp) Logouts() []ReceivedLogout {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.received)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil && !errors.Is(err, http.ErrHandlerTimeout) {
		slog.Debug("write json", "error", err)
	}
}
