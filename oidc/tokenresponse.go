package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/session"
)

// CodeExchange redeems an authorization code. It differs from the library's
// in three ways: who presents the code is checked before the code counts as
// used (checkCodeHolder); a code issued with a code_challenge always needs
// its code_verifier (RFC 9700 section 2.1.1), confidential client or not;
// and the tokens are made by tokenResponse.
func (s *server) CodeExchange(ctx context.Context, r *op.ClientRequest[zoidc.AccessTokenRequest]) (*op.Response, error) {
	if err := s.p.checkCodeHolder(ctx, r.Client, r.Data); err != nil {
		return nil, err
	}
	req, err := op.AuthRequestByCode(ctx, s.p.op.Storage(), r.Data.Code)
	if err != nil {
		return nil, err
	}
	if err := checkCodeRequest(req, r.Client, r.Data); err != nil {
		return nil, err
	}
	needsRefresh := slices.Contains(req.GetScopes(), zoidc.ScopeOfflineAccess) && op.ValidateGrantType(r.Client, zoidc.GrantTypeRefreshToken)
	resp, err := s.p.tokenResponse(ctx, req.(*authRequest), r.Client, r.Data.Code, needsRefresh)
	if err != nil {
		return nil, err
	}
	return op.NewResponse(resp), nil
}

// checkCodeHolder refuses a code exchange by anyone but the code's client,
// with its redirect URI and PKCE verifier, before the code is redeemed. A
// code alone is not a credential: someone who read it (in a log, a
// browser's history, a Referer) and presents it through another client, or
// without the verifier, must neither use it up before the app's own
// exchange nor, after it, end the app session as a replay would.
func (p *Provider) checkCodeHolder(ctx context.Context, client op.Client, d *zoidc.AccessTokenRequest) error {
	if len(d.Code) > maxCodeLength {
		return zoidc.ErrInvalidGrant().WithDescription("invalid code")
	}
	data, err := p.store.AuthRequestOfCode(ctx, hashCode(d.Code), p.now())
	if errors.Is(err, session.ErrNotFound) {
		return zoidc.ErrInvalidGrant().WithDescription("invalid code")
	}
	if err != nil {
		return fmt.Errorf("read the request of a code: %w", err)
	}
	var a authRequest
	if err := json.Unmarshal(data, &a); err != nil {
		return fmt.Errorf("auth request of a code: %w", err)
	}
	return checkCodeRequest(&a, client, d)
}

// checkCodeRequest is what a code exchange must match in the request the
// code was issued for: its PKCE challenge, its client, its redirect URI.
func checkCodeRequest(req op.AuthRequest, client op.Client, d *zoidc.AccessTokenRequest) error {
	if err := op.AuthorizeCodeChallenge(d.CodeVerifier, req.GetCodeChallenge()); err != nil {
		return err
	}
	if client.GetID() != req.GetClientID() {
		return zoidc.ErrInvalidGrant()
	}
	if d.RedirectURI != req.GetRedirectURI() {
		return zoidc.ErrInvalidGrant().WithDescription("redirect_uri does not correspond")
	}
	return nil
}

// RefreshToken is the refresh-token grant, with tokens made by tokenResponse.
func (s *server) RefreshToken(ctx context.Context, r *op.ClientRequest[zoidc.RefreshTokenRequest]) (*op.Response, error) {
	req, err := op.RefreshTokenRequestByRefreshToken(ctx, s.p.op.Storage(), r.Data.RefreshToken)
	if err != nil {
		return nil, err
	}
	if r.Client.GetID() != req.GetClientID() {
		return nil, zoidc.ErrInvalidGrant()
	}
	if err := op.ValidateRefreshTokenScopes(r.Data.Scopes, req); err != nil {
		return nil, err
	}
	resp, err := s.p.tokenResponse(ctx, req.(*refreshRequest), r.Client, "", true)
	if err != nil {
		return nil, err
	}
	return op.NewResponse(resp), nil
}

// personRequest is a code or refresh grant made for a person.
type personRequest interface {
	op.TokenRequest
	op.IDTokenRequest
	sessionID() string
}

func (a *authRequest) sessionID() string    { return a.SID }
func (r *refreshRequest) sessionID() string { return r.sid }

// tokenResponse issues the access token (a JWT per RFC 9068 with typ at+jwt,
// or an opaque sealed token), the refresh token when due and the ID token.
func (p *Provider) tokenResponse(ctx context.Context, req personRequest, client op.Client, code string, withRefresh bool) (*zoidc.AccessTokenResponse, error) {
	st := storage{p}
	var id, refresh string
	var exp time.Time
	var err error
	if withRefresh {
		id, refresh, exp, err = st.CreateAccessAndRefreshTokens(ctx, req, "")
	} else {
		id, exp, err = st.CreateAccessToken(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	var access string
	if client.AccessTokenType() == op.AccessTokenTypeJWT {
		c := accessClaims{Subject: req.GetSubject(), Audience: req.GetAudience(), ClientID: req.GetClientID(),
			Scope: strings.Join(req.GetScopes(), " "), SID: req.sessionID()}
		if t := req.GetAuthTime(); !t.IsZero() {
			c.AuthTime = t.Unix()
		}
		access, err = p.accessJWT(c, id, exp)
	} else {
		access, err = op.CreateBearerToken(id, req.GetSubject(), p.op.Crypto())
	}
	if err != nil {
		return nil, err
	}
	idToken, err := op.CreateIDToken(ctx, p.issuer(), req, client.IDTokenLifetime(), access, code, st, client)
	if err != nil {
		return nil, err
	}
	if a, ok := req.(*authRequest); ok {
		if err := st.DeleteAuthRequest(ctx, a.ID); err != nil {
			return nil, err
		}
	}
	return &zoidc.AccessTokenResponse{
		AccessToken: access, IDToken: idToken, RefreshToken: refresh, TokenType: zoidc.BearerToken,
		ExpiresIn: uint64(max(exp.Sub(p.now()), 0) / time.Second), Scope: req.GetScopes(),
	}, nil
}

// accessClaims are the claims of a JWT access token (RFC 9068 section 2.2).
type accessClaims struct {
	Issuer   string   `json:"iss"`
	Subject  string   `json:"sub"`
	Audience []string `json:"aud"`
	Expiry   int64    `json:"exp"`
	IssuedAt int64    `json:"iat"`
	JTI      string   `json:"jti"`
	ClientID string   `json:"client_id"`
	Scope    string   `json:"scope,omitempty"`
	AuthTime int64    `json:"auth_time,omitempty"`
	SID      string   `json:"sid,omitempty"`
}

// accessJWT signs c as a JWT access token with header typ at+jwt, setting
// the issuer, times and id.
func (p *Provider) accessJWT(c accessClaims, id string, exp time.Time) (string, error) {
	c.Issuer, c.JTI, c.Expiry, c.IssuedAt = p.issuer(), id, exp.Unix(), p.now().Unix()
	return p.signJWT("at+jwt", c)
}

// signJWT signs claims with the current signing key under header typ
// (access tokens, logout tokens and SETs each have their own, so that none
// is taken for another).
func (p *Provider) signJWT(typ jose.ContentType, claims any) (string, error) {
	key := p.keys.Signing()
	if key == nil {
		return "", errors.New("no signing key")
	}
	signer, err := p.signers.get(key, typ)
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(claims).Serialize()
}

// ClientCredentialsExchange issues a client's own access token (RFC 6749
// section 4.4), a JWT like a person's: no session, no refresh token.
func (s *server) ClientCredentialsExchange(ctx context.Context, r *op.ClientRequest[zoidc.ClientCredentialsRequest]) (*op.Response, error) {
	st := storage{s.p}
	req, err := st.ClientCredentialsTokenRequest(ctx, r.Client.GetID(), r.Data.Scope)
	if err != nil {
		return nil, err
	}
	id, exp, err := st.CreateAccessToken(ctx, req)
	if err != nil {
		return nil, err
	}
	var access string
	if r.Client.AccessTokenType() == op.AccessTokenTypeJWT {
		access, err = s.p.accessJWT(accessClaims{Subject: r.Client.GetID(), Audience: req.GetAudience(), ClientID: r.Client.GetID(),
			Scope: strings.Join(req.GetScopes(), " ")}, id, exp)
	} else {
		access, err = op.CreateBearerToken(id, r.Client.GetID(), s.p.op.Crypto())
	}
	if err != nil {
		return nil, err
	}
	return op.NewResponse(&zoidc.AccessTokenResponse{AccessToken: access, TokenType: zoidc.BearerToken,
		ExpiresIn: uint64(max(exp.Sub(s.p.now()), 0) / time.Second), Scope: req.GetScopes()}), nil
}

// signerCache keeps one jose.Signer per (key, typ): building one per token
// costs an allocation-heavy key conversion on every refresh.
type signerCache struct {
	mu sync.Mutex
	m  map[string]jose.Signer
}

func (c *signerCache) get(key op.SigningKey, typ jose.ContentType) (jose.Signer, error) {
	k := key.ID() + "|" + string(typ)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.m[k]; ok {
		return s, nil
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: key.SignatureAlgorithm(), Key: &jose.JSONWebKey{Key: key.Key(), KeyID: key.ID()}},
		(&jose.SignerOptions{}).WithType(typ))
	if err != nil {
		return nil, err
	}
	if c.m == nil {
		c.m = map[string]jose.Signer{}
	}
	c.m[k] = s
	return s, nil
}

// JWTProfile refuses the JWT bearer grant (RFC 7523): the protocol library
// would verify the assertion first, but no client may use the grant and
// discovery does not advertise it.
func (s *server) JWTProfile(context.Context, *op.Request[zoidc.JWTProfileGrantRequest]) (*op.Response, error) {
	return nil, zoidc.ErrUnsupportedGrantType().WithDescription("the JWT bearer grant is not supported")
}
