package oidc

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// UserStore reads the people who can sign in.
type UserStore interface {
	UserByUsername(ctx context.Context, username string) (*session.User, error)
	UserByID(ctx context.Context, id string) (*session.User, error)
}

// AuthRequestStore keeps authorization requests and their codes: at most
// one code per request, redeemed once, a replay recognised (ErrCodeReused)
// until the request expires, and expired requests purged.
type AuthRequestStore interface {
	SaveAuthRequest(ctx context.Context, id string, data []byte, created, expires time.Time) error
	AuthRequestData(ctx context.Context, id string, now time.Time) ([]byte, error)
	SaveAuthCode(ctx context.Context, id, codeHash string) error
	AuthRequestByCode(ctx context.Context, codeHash string, now time.Time) (string, []byte, error)
	// AuthRequestOfCode reads a code's request without redeeming it.
	AuthRequestOfCode(ctx context.Context, codeHash string, now time.Time) ([]byte, error)
	PurgeAuthRequests(ctx context.Context, now time.Time) error
}

// RevocationStore keeps access tokens revoked one by one.
type RevocationStore interface {
	RevokeToken(ctx context.Context, tokenID string, expires time.Time) error
	RevokedTokens(ctx context.Context, now time.Time) ([]string, error)
	PurgeRevokedTokens(ctx context.Context, now time.Time) (int64, error)
}

// storage implements op.Storage on top of the stores and the activity
// tracker. Every use of a credential re-checks its session against the
// tracker's clock.
type storage struct {
	p *Provider
}

var (
	_ op.Storage                        = storage{}
	_ op.ClientCredentialsStorage       = storage{}
	_ op.CanSetUserinfoFromRequest      = storage{}
	_ op.CanTerminateSessionFromRequest = storage{}
)

// maxCodeLength bounds an authorization code presented for exchange: far
// above the codes this provider issues.
const maxCodeLength = 512

func hashCode(code string) string {
	sum := sha256.Sum256([]byte(code))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// CreateAuthRequest is never reached: server.Authorize creates requests
// itself, bound to the browser that sent them; an unbound one is refused.
func (s storage) CreateAuthRequest(context.Context, *zoidc.AuthRequest, string) (op.AuthRequest, error) {
	return nil, zoidc.ErrServerError().WithDescription("authorization requests are created by the authorization endpoint")
}

func (p *Provider) saveAuthRequest(ctx context.Context, a *authRequest) error {
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return p.store.SaveAuthRequest(ctx, a.ID, data, a.CreatedAt, a.CreatedAt.Add(p.cfg.AuthRequestTTL))
}

func (p *Provider) authRequest(ctx context.Context, id string) (*authRequest, error) {
	data, err := p.store.AuthRequestData(ctx, id, p.now())
	if err != nil {
		return nil, err
	}
	var a authRequest
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("auth request %s: %w", id, err)
	}
	return &a, nil
}

// browserAuthRequest loads the authorization request a browser names by id.
// An unknown, expired or malformed id gets the "link expired" page; a
// failing store gets a server error (a readable page on browser routes), so
// that a database outage is not mistaken for a stale link.
func (p *Provider) browserAuthRequest(w http.ResponseWriter, r *http.Request, id string) (*authRequest, bool) {
	if id == "" || len(id) > 64 {
		p.badLoginLink(w, r)
		return nil, false
	}
	req, err := p.authRequest(r.Context(), id)
	switch {
	case errors.Is(err, session.ErrNotFound):
		p.badLoginLink(w, r)
		return nil, false
	case err != nil:
		p.serverError(w, r, fmt.Errorf("load authorization request: %w", err))
		return nil, false
	}
	return req, true
}

func (s storage) AuthRequestByID(ctx context.Context, id string) (_ op.AuthRequest, err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	a, err := s.p.authRequest(ctx, id)
	if err != nil {
		return nil, zoidc.ErrInvalidRequest().WithDescription("unknown or expired authorization request").WithParent(err)
	}
	return a, nil
}

// AuthRequestByCode redeems a code. A code presented again after it was
// redeemed is refused, and its application session is ended with reason
// code_reuse, which revokes every token issued from it (RFC 6749 section
// 4.1.2): someone other than the app had the code.
func (s storage) AuthRequestByCode(ctx context.Context, code string) (_ op.AuthRequest, err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	if len(code) > maxCodeLength {
		return nil, zoidc.ErrInvalidGrant().WithDescription("invalid code")
	}
	_, data, err := s.p.store.AuthRequestByCode(ctx, hashCode(code), s.p.now())
	reused := errors.Is(err, session.ErrCodeReused)
	if err != nil && !reused {
		return nil, err
	}
	var a authRequest
	if jerr := json.Unmarshal(data, &a); jerr != nil {
		return nil, fmt.Errorf("auth request of a code: %w", jerr)
	}
	if reused {
		return nil, s.p.codeReused(ctx, &a, err)
	}
	return &a, nil
}

// codeReused ends the application session a replayed code joined, and
// returns the error for the token endpoint.
func (p *Provider) codeReused(ctx context.Context, a *authRequest, reuse error) error {
	p.cfg.Logger.WarnContext(ctx, "authorization code replayed", "client", a.ClientID, "sid", a.SID, "app_session", a.AppSessionID)
	if a.AppSessionID != "" {
		err := p.tracker.EndApp(ctx, a.AppSessionID, session.ReasonCodeReuse, "system")
		if err != nil && !errors.Is(err, session.ErrNotFound) {
			return fmt.Errorf("end app session of a replayed code: %w", err)
		}
	}
	return zoidc.ErrInvalidGrant().WithDescription("the code was already used; the tokens issued from it are revoked").WithParent(reuse)
}

// SaveAuthCode is called when the provider issues a code: this is where the
// client joins the authentication session (its application session is
// created, tightening the idle limit if it is stricter). The store issues
// at most one code per request.
func (s storage) SaveAuthCode(ctx context.Context, id, code string) (err error) {
	defer func() { err = s.p.hideInternal(ctx, err) }()
	a, err := s.p.authRequest(ctx, id)
	if err != nil {
		return err
	}
	if !a.IsDone {
		return zoidc.ErrLoginRequired()
	}
	if err := s.p.checkRejoin(ctx, a.SID, a.ClientID); err != nil {
		return err
	}
	st, err := s.p.tracker.Join(ctx, a.SID, a.ClientID, a.Scopes)
	if errors.Is(err, activity.ErrSessionOver) {
		return zoidc.ErrLoginRequired().WithDescription("the session is over")
	}
	if err != nil {
		return err
	}
	a.AppSessionID = st.AppSessionID
	if err := s.p.saveAuthRequest(ctx, a); err != nil {
		return err
	}
	err = s.p.store.SaveAuthCode(ctx, id, hashCode(code))
	if errors.Is(err, session.ErrConflict) {
		return zoidc.ErrInvalidRequest().WithDescription("a code was already issued for this request")
	}
	return err
}

// DeleteAuthRequest is called after a code exchange. The request stays,
// redeemed, until it expires, so that a replay of its code is recognised;
// the housekeeping purge removes it.
func (s storage) DeleteAuthRequest(context.Context, string) error { return nil }

// tokenExpiry is now + min(client access_token_ttl, idle limit in force),
// and never past the absolute deadline, so that a resource server that only
// checks signatures is never more than one short TTL behind.
func (p *Provider) tokenExpiry(c *Client, st activity.Status) time.Time {
	now := p.now()
	exp := now.Add(min(c.AccessTokenTTL, st.IdleLimit))
	return minTime(exp, st.AbsoluteDeadline)
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func (p *Provider) appSessionOf(req op.TokenRequest) string {
	switch r := req.(type) {
	case *authRequest:
		return r.AppSessionID
	case *refreshRequest:
		return r.appSessionID
	}
	return ""
}

func (s storage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (_ string, _ time.Time, err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	if cc, ok := req.(*clientCredentialsRequest); ok {
		c := s.p.clients[cc.clientID]
		exp := s.p.now().Add(c.AccessTokenTTL)
		return newClientTokenID(cc.clientID, exp), exp, nil
	}
	app := s.p.appSessionOf(req)
	if app == "" {
		return "", time.Time{}, zoidc.ErrUnsupportedGrantType()
	}
	st, err := s.p.tracker.Check(ctx, app)
	if err != nil || !st.Active {
		return "", time.Time{}, zoidc.ErrInvalidGrant().WithDescription("the session is over")
	}
	exp := s.p.tokenExpiry(s.p.clients[st.ClientID], st)
	return newUserTokenID(app, exp), exp, nil
}

func (s storage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, _ string) (_, _ string, _ time.Time, err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	app := s.p.appSessionOf(req)
	if app == "" {
		return "", "", time.Time{}, zoidc.ErrUnsupportedGrantType()
	}
	var rt refreshToken
	var st activity.Status
	if r, ok := req.(*refreshRequest); ok {
		rt = refreshToken{app: app, chain: r.chain}
		st, rt.gen, err = s.p.tracker.RotateRefresh(ctx, app, r.chain, r.gen)
	} else {
		rt.app = app
		if rt.chain, rt.gen, err = s.p.tracker.NewRefreshChain(ctx, app); err == nil {
			st, err = s.p.tracker.Check(ctx, app)
		}
	}
	if err != nil {
		return "", "", time.Time{}, zoidc.ErrInvalidGrant().WithDescription("the refresh token is no longer valid").WithParent(err)
	}
	exp := s.p.tokenExpiry(s.p.clients[st.ClientID], st)
	return newUserTokenID(app, exp), s.p.refresh.token(rt), exp, nil
}

func (s storage) TokenRequestByRefreshToken(ctx context.Context, token string) (_ op.RefreshTokenRequest, err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	rt, err := s.p.refresh.parse(token)
	if err != nil {
		return nil, zoidc.ErrInvalidGrant().WithDescription("invalid refresh token")
	}
	st, err := s.p.tracker.CheckRefresh(ctx, rt.app, rt.chain, rt.gen)
	switch {
	case errors.Is(err, activity.ErrRefreshReuse):
		return nil, zoidc.ErrInvalidGrant().WithDescription("refresh token was already used; the application session has been ended")
	case errors.Is(err, activity.ErrSessionOver):
		return nil, zoidc.ErrInvalidGrant().WithDescription("the session is over (%s)", st.EndReason)
	case err != nil:
		return nil, zoidc.ErrInvalidGrant().WithDescription("invalid refresh token").WithParent(err)
	}
	return &refreshRequest{appSessionID: rt.app, chain: rt.chain, gen: rt.gen, userID: st.UserID, clientID: st.ClientID, sid: st.SID,
		scopes: st.Scopes, authTime: st.AuthTime, amr: st.AMR}, nil
}

// TerminateSession ends every live session of the user (used only when an
// end-session request carries no session of its own).
func (s storage) TerminateSession(ctx context.Context, userID, clientID string) error {
	return s.p.endUserSessions(ctx, userID, session.ReasonLogout, clientID)
}

func (s storage) TerminateSessionFromRequest(ctx context.Context, req *op.EndSessionRequest) (string, error) {
	sid := ""
	if req.IDTokenHintClaims != nil {
		sid = req.IDTokenHintClaims.SessionID
	}
	return s.p.endAndFrontchannel(ctx, sid, req)
}

// RevokeToken is op.Storage's revocation; Server.Revocation answers the
// endpoint itself (see revoke), so that nothing unverified reaches here.
func (s storage) RevokeToken(ctx context.Context, token, _, clientID string) *zoidc.Error {
	return s.p.revoke(ctx, token, clientID)
}

func (s storage) GetRefreshTokenInfo(ctx context.Context, clientID, token string) (string, string, error) {
	rt, err := s.p.refresh.parse(token)
	if err != nil {
		return "", "", op.ErrInvalidRefreshToken
	}
	st, err := s.p.tracker.Check(ctx, rt.app)
	if err != nil || st.ClientID != clientID {
		return "", "", op.ErrInvalidRefreshToken
	}
	return st.UserID, token, nil
}

func (s storage) SigningKey(context.Context) (op.SigningKey, error) {
	k := s.p.keys.Signing()
	if k == nil {
		return nil, errors.New("no signing key")
	}
	return k, nil
}

func (s storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return s.p.keys.Algorithms(), nil
}

func (s storage) KeySet(context.Context) ([]op.Key, error) { return s.p.keys.Public(), nil }

func (s storage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	c, ok := s.p.clients[id]
	if !ok {
		return nil, zoidc.ErrInvalidClient().WithDescription("unknown client")
	}
	return opClient{Client: c, loginURL: s.p.loginURL}, nil
}

func (s storage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	c, ok := s.p.clients[id]
	if !ok || !c.CheckSecret(secret) {
		return zoidc.ErrInvalidClient().WithDescription("client authentication failed")
	}
	return nil
}

func (s storage) ClientCredentials(_ context.Context, id, secret string) (op.Client, error) {
	c, ok := s.p.clients[id]
	if !ok || !c.CheckSecret(secret) {
		return nil, zoidc.ErrInvalidClient().WithDescription("client authentication failed")
	}
	if !slices.Contains(c.GrantTypes, zoidc.GrantTypeClientCredentials) {
		return nil, zoidc.ErrUnauthorizedClient().WithDescription("client_credentials is not allowed for this client")
	}
	return opClient{Client: c, loginURL: s.p.loginURL}, nil
}

// ClientCredentialsTokenRequest grants the authenticated client id the
// scopes it may have out of those requested (Client.ServiceScopes).
func (s storage) ClientCredentialsTokenRequest(_ context.Context, id string, scopes []string) (op.TokenRequest, error) {
	c, ok := s.p.clients[id]
	if !ok {
		return nil, zoidc.ErrInvalidClient().WithDescription("unknown client")
	}
	granted, err := c.ServiceScopes(scopes)
	if err != nil {
		return nil, err
	}
	return &clientCredentialsRequest{clientID: id, scopes: granted}, nil
}

// SetUserinfoFromScopes is deprecated upstream; SetUserinfoFromRequest does the work.
func (s storage) SetUserinfoFromScopes(context.Context, *zoidc.UserInfo, string, string, []string) error {
	return nil
}

func (s storage) SetUserinfoFromRequest(ctx context.Context, info *zoidc.UserInfo, req op.IDTokenRequest, scopes []string) (err error) {
	defer func() { err = s.p.unavailableOr(ctx, err) }()
	if err := s.p.fillUserinfo(ctx, info, req.GetSubject(), scopes); err != nil {
		return err
	}
	var sid string
	switch r := req.(type) {
	case *authRequest:
		sid = r.SID
	case *refreshRequest:
		sid = r.sid
		// The protocol library takes acr only from an authorization
		// request; a refreshed ID token says the session's, as it is now.
		info.AppendClaims("acr", mfa.ACR(r.amr))
	}
	if sid != "" {
		info.AppendClaims("sid", sid)
	}
	return nil
}

func (p *Provider) fillUserinfo(ctx context.Context, info *zoidc.UserInfo, userID string, scopes []string) error {
	u, err := p.store.UserByID(ctx, userID)
	if errors.Is(err, session.ErrNotFound) {
		return zoidc.ErrInvalidGrant().WithDescription("the user no longer exists")
	}
	if err != nil {
		return fmt.Errorf("user %s: %w", userID, err)
	}
	info.Subject = u.ID
	for _, sc := range scopes {
		switch sc {
		case zoidc.ScopeProfile:
			info.Name = u.Name
			info.PreferredUsername = u.Username
		case zoidc.ScopeEmail:
			info.Email = u.Email
			info.EmailVerified = zoidc.Bool(u.EmailVerified)
		}
	}
	return nil
}

// SetUserinfoFromToken is reached only through the userinfo endpoint, which
// Server.UserInfo handles itself so that an ended session answers 401.
func (s storage) SetUserinfoFromToken(ctx context.Context, info *zoidc.UserInfo, tokenID, _, _ string) error {
	st, err := s.p.useToken(ctx, tokenID, activity.Userinfo, zeroTime)
	if err != nil {
		return err
	}
	return s.p.fillUserinfo(ctx, info, st.UserID, st.Scopes)
}

// SetIntrospectionFromToken is never reached: Server.Introspect answers the
// introspection endpoint itself. It fills resp the same way for
// completeness of the op.Storage contract.
func (s storage) SetIntrospectionFromToken(ctx context.Context, resp *zoidc.IntrospectionResponse, tokenID, _, _ string) error {
	in, err := s.p.introspect(ctx, tokenID)
	if err != nil {
		return err
	}
	resp.Scope, resp.ClientID, resp.Subject, resp.Audience = strings.Fields(in.Scope), in.ClientID, in.Subject, in.Audience
	resp.Expiration, resp.TokenType, resp.Issuer = zoidc.FromTime(time.Unix(in.Exp, 0)), in.TokenType, in.Issuer
	return nil
}

func (s storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

func (s storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, zoidc.ErrInvalidClient().WithDescription("private_key_jwt is not supported")
}

func (s storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, zoidc.ErrUnsupportedGrantType()
}

func (s storage) Health(ctx context.Context) error { return s.p.store.Ping(ctx) }
