package oidc

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/session"
)

// authRequest is an authorization request between /authorize and the code
// exchange. It is stored as JSON.
type authRequest struct {
	ID            string               `json:"id"`
	CreatedAt     time.Time            `json:"created_at"`
	ClientID      string               `json:"client_id"`
	RedirectURI   string               `json:"redirect_uri"`
	State         string               `json:"state,omitempty"`
	Nonce         string               `json:"nonce,omitempty"`
	Scopes        []string             `json:"scopes"`
	ResponseType  zoidc.ResponseType   `json:"response_type"`
	ResponseMode  zoidc.ResponseMode   `json:"response_mode,omitempty"`
	CodeChallenge *zoidc.CodeChallenge `json:"code_challenge,omitempty"`
	Prompt        []string             `json:"prompt,omitempty"`
	MaxAge        *uint                `json:"max_age,omitempty"`
	LoginHint     string               `json:"login_hint,omitempty"`
	// Browser is the SHA-256 of the binding token in the cookie of the
	// browser that sent the request: only that browser may complete it.
	Browser string `json:"browser"`

	// Set once the person is authenticated.
	UserID   string    `json:"user_id,omitempty"`
	SID      string    `json:"sid,omitempty"`
	AuthTime time.Time `json:"auth_time,omitzero"`
	AMR      []string  `json:"amr,omitempty"`
	ACR      string    `json:"acr,omitempty"`
	IsDone   bool      `json:"done,omitempty"`
	// WantACR is the assurance the app asked for (acr_values, or an
	// essential acr claim): the weakest acr it named that the provider
	// knows, or "".
	WantACR string `json:"want_acr,omitempty"`
	// Pending is set while the person has proved some factors but the
	// request needs more (see pendingFactor, assurance.go).
	Pending *pendingFactor `json:"pending,omitempty"`
	// Set when the code is issued: the application session it joins.
	AppSessionID string `json:"app_session_id,omitempty"`
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string                          { return a.ID }
func (a *authRequest) GetACR() string                         { return a.ACR }
func (a *authRequest) GetAMR() []string                       { return a.AMR }
func (a *authRequest) GetAudience() []string                  { return []string{a.ClientID} }
func (a *authRequest) GetAuthTime() time.Time                 { return a.AuthTime }
func (a *authRequest) GetClientID() string                    { return a.ClientID }
func (a *authRequest) GetCodeChallenge() *zoidc.CodeChallenge { return a.CodeChallenge }
func (a *authRequest) GetNonce() string                       { return a.Nonce }
func (a *authRequest) GetRedirectURI() string                 { return a.RedirectURI }
func (a *authRequest) GetResponseType() zoidc.ResponseType    { return a.ResponseType }
func (a *authRequest) GetResponseMode() zoidc.ResponseMode    { return a.ResponseMode }
func (a *authRequest) GetScopes() []string                    { return a.Scopes }
func (a *authRequest) GetState() string                       { return a.State }
func (a *authRequest) GetSubject() string                     { return a.UserID }
func (a *authRequest) Done() bool                             { return a.IsDone }

func (a *authRequest) hasPrompt(p string) bool {
	for _, x := range a.Prompt {
		if x == p {
			return true
		}
	}
	return false
}

// browserCookieName is the cookie that binds authorization requests to the
// browser that sent them. One per browser, reused by every request, so that
// two tabs signing in to two apps at once both complete, and the number of
// cookies stays one however many requests a browser starts.
const browserCookieName = "idleguard_browser"

// browserTokenLen is the length of a binding token: 32 random bytes,
// base64url without padding.
const browserTokenLen = 43

// browserToken returns the binding token in the request's cookie, or "".
func (p *Provider) browserToken(h http.Header) string {
	tok := p.cookieValue(h, browserCookieName)
	if len(tok) != browserTokenLen {
		return ""
	}
	if _, err := base64.RawURLEncoding.DecodeString(tok); err != nil {
		return ""
	}
	return tok
}

// bindBrowser returns the hash to store with a new authorization request and,
// when the browser has no binding token yet, the cookie that gives it one.
// The cookie is SameSite=Lax so that it comes with the app's top-level
// redirect to /authorize; HttpOnly, so that no script reads it; it lives a
// year, so that tabs restored together after a restart share one.
func (p *Provider) bindBrowser(h http.Header) (string, *http.Cookie) {
	if tok := p.browserToken(h); tok != "" {
		return hashCode(tok), nil
	}
	tok := randomB64(32)
	c := p.newCookie(browserCookieName, tok, http.SameSiteLaxMode)
	c.MaxAge = 365 * 24 * 3600
	return hashCode(tok), c
}

// sentBy reports whether r comes from the browser that started a.
func (p *Provider) sentBy(a *authRequest, r *http.Request) bool {
	tok := p.browserToken(r.Header)
	return tok != "" && a.Browser != "" && subtle.ConstantTimeCompare([]byte(hashCode(tok)), []byte(a.Browser)) == 1
}

// otherBrowser answers a sign-in link opened in a browser other than the
// one that started it (a link sent to someone else, the attack of issue 9):
// a page, never the login form, never a code.
func (p *Provider) otherBrowser(w http.ResponseWriter, r *http.Request) {
	p.messagePage(w, r, http.StatusForbidden, "Start again from the app",
		"This sign-in link was opened in another browser than the one that started it, or your browser does not keep cookies. "+
			"For your safety it cannot be used here: go back to the application and sign in from there.")
}

// Limits of an authorization request (finding 4 of issue 9). The whole
// request is at most maxAuthorizeQuery bytes whatever its method; each
// parameter has its own bound, so that what is stored until the code
// exchange stays a few kilobytes.
var authorizeParamLimits = map[string]int{
	"client_id": 256, "redirect_uri": 2048, "response_type": 64, "response_mode": 32, "scope": 1024,
	"state": 2048, "nonce": 512, "prompt": 128, "display": 32, "max_age": 10, "ui_locales": 256,
	"claims_locales": 256, "login_hint": 256, "id_token_hint": 4096, "acr_values": 512, "claims": 2048,
	"code_challenge": 128, "code_challenge_method": 16,
}

// checkAuthorizeParams refuses a parameter that is repeated or over its
// bound with invalid_request (RFC 6749 section 4.1.2.1), naming it.
func checkAuthorizeParams(form url.Values) *zoidc.Error {
	for name, values := range form {
		limit, known := authorizeParamLimits[name]
		if known && len(values) > 1 {
			return zoidc.ErrInvalidRequest().WithDescription("the %s parameter is repeated", name)
		}
		if known && len(values[0]) > limit {
			return zoidc.ErrInvalidRequest().WithDescription("the %s parameter is longer than %d bytes", name, limit)
		}
	}
	return nil
}

// knownPrompts are the prompt values of OpenID Connect Core 1.0 section
// 3.1.2.1; others are ignored, as a provider may.
var knownPrompts = []string{zoidc.PromptNone, zoidc.PromptLogin, zoidc.PromptConsent, zoidc.PromptSelectAccount}

// newAuthRequest validates and stores an authorization request bound to the
// browser whose token hashes to browser.
func (p *Provider) newAuthRequest(ctx context.Context, req *zoidc.AuthRequest, claims, browser string) (*authRequest, error) {
	c, ok := p.clients[req.ClientID]
	if !ok {
		return nil, zoidc.ErrInvalidClient()
	}
	if err := validateAuthRequest(c, req); err != nil {
		return nil, err
	}
	want, err := wantedACR(req.ACRValues, claims)
	if err != nil {
		return nil, err
	}
	a := &authRequest{
		ID: session.NewID(), CreatedAt: p.now(), ClientID: req.ClientID, RedirectURI: req.RedirectURI,
		State: req.State, Nonce: req.Nonce, Scopes: c.CodeScopes(dedupe(req.Scopes)), ResponseType: req.ResponseType,
		ResponseMode: req.ResponseMode, MaxAge: req.MaxAge, LoginHint: req.LoginHint, Browser: browser, WantACR: want,
		Prompt: dedupe(slices.DeleteFunc(slices.Clone(req.Prompt), func(v string) bool { return !slices.Contains(knownPrompts, v) })),
	}
	if req.CodeChallenge != "" {
		a.CodeChallenge = &zoidc.CodeChallenge{Challenge: req.CodeChallenge, Method: req.CodeChallengeMethod}
	}
	if err := p.saveAuthRequest(ctx, a); err != nil {
		return nil, err
	}
	return a, nil
}

// validateAuthRequest applies idleguard's rules on top of the library's:
// openid scope, PKCE S256 only (required for public clients), a known
// response_mode.
func validateAuthRequest(c *Client, req *zoidc.AuthRequest) error {
	switch {
	case !slices.Contains(req.Scopes, zoidc.ScopeOpenID):
		return zoidc.ErrInvalidScope().WithDescription("the openid scope is required")
	case req.CodeChallenge != "" && req.CodeChallengeMethod != zoidc.CodeChallengeMethodS256:
		return zoidc.ErrInvalidRequest().WithDescription("code_challenge_method must be S256")
	case req.CodeChallenge != "" && !isS256Challenge(req.CodeChallenge):
		return zoidc.ErrInvalidRequest().WithDescription("code_challenge must be the 43-character base64url SHA-256 of the verifier")
	case c.Public() && req.CodeChallenge == "":
		return zoidc.ErrInvalidRequest().WithDescription("PKCE (code_challenge with S256) is required for public clients")
	case !slices.Contains(responseModes, req.ResponseMode):
		return zoidc.ErrInvalidRequest().WithDescription("response_mode must be query, fragment or form_post")
	}
	return nil
}

// responseModes are the response modes the code flow answers with ("" is query).
var responseModes = []zoidc.ResponseMode{"", zoidc.ResponseModeQuery, zoidc.ResponseModeFragment, zoidc.ResponseModeFormPost}

func isS256Challenge(c string) bool {
	if len(c) != 43 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(c)
	return err == nil
}

// dedupe returns the values in their first order, each once.
func dedupe(values []string) []string {
	var out []string
	for _, v := range values {
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// boundAuthorize caps every authorization request at maxAuthorizeQuery
// bytes, query and body together, whatever its method. A POST that carries
// no binding cookie (a cross-site form post, where the browser withholds
// SameSite=Lax cookies) is turned into the same request by GET (303), which
// the browser sends with its cookies, so that it is bound to the browser's
// existing token instead of replacing it.
func (p *Provider) boundAuthorize(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodPost {
			w.Header().Set("Allow", "GET, POST")
			p.messagePage(w, r, http.StatusMethodNotAllowed, "Sign-in request refused", "The application sent a sign-in request with a method other than GET or POST.")
			return
		}
		if len(r.URL.RawQuery) > maxAuthorizeQuery {
			p.tooLarge(w, r)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, int64(maxAuthorizeQuery-len(r.URL.RawQuery)))
			if err := r.ParseForm(); err != nil {
				var tooBig *http.MaxBytesError
				if errors.As(err, &tooBig) {
					p.tooLarge(w, r)
					return
				}
				p.messagePage(w, r, http.StatusBadRequest, "Sign-in request refused", "The application sent a sign-in request that could not be read.")
				return
			}
			if p.browserToken(r.Header) == "" {
				http.Redirect(w, r, r.URL.Path+"?"+r.Form.Encode(), http.StatusSeeOther)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (p *Provider) tooLarge(w http.ResponseWriter, r *http.Request) {
	p.messagePage(w, r, http.StatusRequestEntityTooLarge, "Sign-in request refused",
		fmt.Sprintf("The application sent a sign-in request that is too large (over %d bytes).", maxAuthorizeQuery))
}

// authorizeCallback issues the code of a completed authorization request,
// in place of the library's callback, which checks nothing about its caller:
// the code goes only to the browser that started the request, only while
// that browser is signed in to the session that completed it, and at most
// once (the store refuses a second code).
func (p *Provider) authorizeCallback(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	req, ok := p.browserAuthRequest(w, r, id)
	if !ok {
		return
	}
	if !p.sentBy(req, r) || (req.IsDone && p.sessionCookie(r) != req.SID) {
		p.otherBrowser(w, r)
		return
	}
	if !req.IsDone {
		op.AuthRequestError(w, r, req, zoidc.ErrInteractionRequired().WithDescription("the sign-in is not complete"), p.op)
		return
	}
	op.AuthResponse(req, p.op, w, r)
}

// refreshRequest is a validated refresh-token grant.
type refreshRequest struct {
	appSessionID string
	chain        string
	gen          uint64
	userID       string
	clientID     string
	sid          string
	scopes       []string
	authTime     time.Time
	amr          []string
}

var _ op.RefreshTokenRequest = (*refreshRequest)(nil)

func (r *refreshRequest) GetAMR() []string            { return r.amr }
func (r *refreshRequest) GetAudience() []string       { return []string{r.clientID} }
func (r *refreshRequest) GetAuthTime() time.Time      { return r.authTime }
func (r *refreshRequest) GetClientID() string         { return r.clientID }
func (r *refreshRequest) GetScopes() []string         { return r.scopes }
func (r *refreshRequest) GetSubject() string          { return r.userID }
func (r *refreshRequest) SetCurrentScopes(s []string) { r.scopes = s }

// clientCredentialsRequest is a client_credentials grant: the client acts
// for itself, with no person and no session.
type clientCredentialsRequest struct {
	clientID string
	scopes   []string
}

func (c *clientCredentialsRequest) GetSubject() string    { return c.clientID }
func (c *clientCredentialsRequest) GetAudience() []string { return []string{c.clientID} }
func (c *clientCredentialsRequest) GetScopes() []string   { return c.scopes }
