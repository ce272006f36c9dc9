package oidc

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/url"
	"slices"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
)

// Client is one registered relying party, as configured.
type Client struct {
	ID string
	// SecretHash is the SHA-256 digest of the client secret. Secrets are
	// high-entropy and checked on every introspection, so a fast digest
	// compared in constant time is right here, not a password hash.
	SecretHash             []byte
	AuthMethod             zoidc.AuthMethod // client_secret_basic, client_secret_post or none
	RedirectURIs           []string
	PostLogoutRedirectURIs []string
	BackchannelLogoutURI   string
	FrontchannelLogoutURI  string
	WebOrigins             []string
	GrantTypes             []zoidc.GrantType
	AccessTokenTTL         time.Duration
	OpaqueAccessTokens     bool
	IDTokenTTL             time.Duration
	// Scopes are the scopes the client may be granted; empty means
	// DefaultScopes. See CodeScopes and ServiceScopes.
	Scopes []string
	Policy activity.ClientPolicy
	// ResourceServer marks a client that stands for APIs rather than an
	// app people sign in to: it may report activity in batches (POST
	// /activity/batch) for the apps it serves.
	ResourceServer bool
	// Serves are the ids of the apps whose tokens its APIs accept; empty
	// means the client's own id. See ServesApp.
	Serves []string
	// RequireMFA: signing in to this app, or arriving by SSO, needs a
	// second factor in the session (acr mfa or better).
	RequireMFA bool
	// RequirePhishingResistant: this app needs a passkey in the session
	// (acr phr).
	RequirePhishingResistant bool
}

// ServesApp reports whether resource server c accepts the tokens of app
// clientID: one of its Serves, or its own id when it lists none. A client
// that is not a resource server serves nothing.
func (c *Client) ServesApp(clientID string) bool {
	if !c.ResourceServer {
		return false
	}
	if len(c.Serves) == 0 {
		return clientID == c.ID
	}
	return slices.Contains(c.Serves, clientID)
}

// DefaultScopes are the OpenID Connect scopes the provider issues: openid,
// profile and email (the person's claims) and offline_access (a refresh
// token). A client whose configuration names no scopes may be granted
// these, and only these.
var DefaultScopes = []string{zoidc.ScopeOpenID, zoidc.ScopeProfile, zoidc.ScopeEmail, zoidc.ScopeOfflineAccess}

// allowedScopes is what the client may be granted.
func (c *Client) allowedScopes() []string {
	if len(c.Scopes) == 0 {
		return DefaultScopes
	}
	return c.Scopes
}

// CodeScopes are the scopes granted to a person's sign-in out of requested:
// those the client may be granted, in the order asked. Scopes it may not
// be granted are left out, as OpenID Connect Core section 3.1.2.1 asks of
// scopes a provider does not understand; the token response's scope says
// what was granted (RFC 6749 section 3.3).
func (c *Client) CodeScopes(requested []string) []string {
	allowed := c.allowedScopes()
	return slices.DeleteFunc(slices.Clone(requested), func(s string) bool { return !slices.Contains(allowed, s) })
}

// ServiceScopes are the scopes granted to the client itself (the client
// credentials grant, RFC 6749 section 4.4) out of requested: those it may
// be granted, except the OpenID Connect scopes, which are about a person
// and there is none. A scope that is neither is refused with
// invalid_scope (section 5.2) rather than dropped: `scope=openid admin`
// must not look like a success to a client that expected admin.
func (c *Client) ServiceScopes(requested []string) ([]string, error) {
	allowed := c.allowedScopes()
	granted := make([]string, 0, len(requested))
	for _, s := range requested {
		switch {
		case s == "" || slices.Contains(DefaultScopes, s):
		case slices.Contains(allowed, s):
			if !slices.Contains(granted, s) {
				granted = append(granted, s)
			}
		default:
			return nil, zoidc.ErrInvalidScope().WithDescription("scope %q is not allowed for this client", s)
		}
	}
	return granted, nil
}

// HashSecret returns the digest stored for a client secret.
func HashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// CheckSecret compares a presented secret with the stored digest in
// constant time.
func (c *Client) CheckSecret(secret string) bool {
	if len(c.SecretHash) == 0 {
		return false
	}
	sum := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(sum[:], c.SecretHash) == 1
}

// Public reports whether the client has no secret (PKCE required).
func (c *Client) Public() bool { return c.AuthMethod == zoidc.AuthMethodNone }

// AllowsOrigin reports whether origin is one of the client's web origins.
func (c *Client) AllowsOrigin(origin string) bool { return slices.Contains(c.WebOrigins, origin) }

// opClient adapts Client to op.Client for one request.
type opClient struct {
	*Client
	loginURL func(string) string
}

var _ op.Client = opClient{}

func (c opClient) GetID() string                    { return c.ID }
func (c opClient) RedirectURIs() []string           { return c.Client.RedirectURIs }
func (c opClient) PostLogoutRedirectURIs() []string { return c.Client.PostLogoutRedirectURIs }
func (c opClient) ApplicationType() op.ApplicationType {
	if c.Public() {
		return op.ApplicationTypeUserAgent
	}
	return op.ApplicationTypeWeb
}
func (c opClient) AuthMethod() zoidc.AuthMethod { return c.Client.AuthMethod }
func (c opClient) ResponseTypes() []zoidc.ResponseType {
	return []zoidc.ResponseType{zoidc.ResponseTypeCode}
}
func (c opClient) GrantTypes() []zoidc.GrantType  { return c.Client.GrantTypes }
func (c opClient) LoginURL(id string) string      { return c.loginURL(id) }
func (c opClient) IDTokenLifetime() time.Duration { return c.IDTokenTTL }
func (c opClient) AccessTokenType() op.AccessTokenType {
	if c.OpaqueAccessTokens {
		return op.AccessTokenTypeBearer
	}
	return op.AccessTokenTypeJWT
}

// DevMode allows plain-http redirect URIs. Configuration only admits them for
// loopback hosts, so it is on exactly for clients that registered one.
func (c opClient) DevMode() bool {
	for _, u := range c.Client.RedirectURIs {
		if p, err := url.Parse(u); err == nil && p.Scheme == "http" {
			return true
		}
	}
	return false
}
func (c opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}

// IsScopeAllowed keeps a client's own (non-OpenID) scopes in its
// authorization requests; CodeScopes narrows the rest.
func (c opClient) IsScopeAllowed(s string) bool         { return slices.Contains(c.Scopes, s) }
func (c opClient) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c opClient) ClockSkew() time.Duration             { return 0 }
