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
	Policy                 activity.ClientPolicy
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
func (c opClient) IsScopeAllowed(string) bool           { return false }
func (c opClient) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c opClient) ClockSkew() time.Duration             { return 0 }
