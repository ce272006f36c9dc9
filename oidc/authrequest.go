package oidc

import (
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
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

	// Set once the person is authenticated.
	UserID   string    `json:"user_id,omitempty"`
	SID      string    `json:"sid,omitempty"`
	AuthTime time.Time `json:"auth_time,omitzero"`
	AMR      []string  `json:"amr,omitempty"`
	IsDone   bool      `json:"done,omitempty"`
	// Set when the code is issued: the application session it joins.
	AppSessionID string `json:"app_session_id,omitempty"`
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string                          { return a.ID }
func (a *authRequest) GetACR() string                         { return "" }
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
