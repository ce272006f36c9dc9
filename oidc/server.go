package oidc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/activity"
	"github.com/idleguard/idleguard/oidc/mfa"
)

// server extends zitadel's LegacyServer where idleguard's rules differ:
// introspection and userinfo count as activity and re-check the session
// against the clock (userinfo answers 401 once it is over), end_session runs
// front-channel logout, and discovery advertises the logout features.
type server struct {
	*op.LegacyServer
	p *Provider
}

// Discovery is the standard document (OpenID Connect Discovery 1.0 section
// 3) corrected to advertise exactly what the provider accepts: the
// protocol library lists what it could do (implicit and hybrid response
// types, the JWT bearer grant, claims nobody fills), and a relying party
// that believes it fails at run time. TestDiscoveryAdvertisesExactlyWhatWorks
// pins every field against the provider's behaviour.
func (s *server) Discovery(ctx context.Context, r *op.Request[struct{}]) (*op.Response, error) {
	resp, err := s.LegacyServer.Discovery(ctx, r)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(resp.Data)
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	// Signing algorithms of client authentication by JWT, which no endpoint takes.
	delete(doc, "introspection_endpoint_auth_signing_alg_values_supported")
	delete(doc, "revocation_endpoint_auth_signing_alg_values_supported")
	secret := []string{string(zoidc.AuthMethodBasic), string(zoidc.AuthMethodPost)}
	withPublic := append(slices.Clone(secret), string(zoidc.AuthMethodNone))
	for k, v := range map[string]any{
		"response_types_supported":                      []string{string(zoidc.ResponseTypeCode)},
		"response_modes_supported":                      []string{"query", "fragment", "form_post"},
		"grant_types_supported":                         []zoidc.GrantType{zoidc.GrantTypeCode, zoidc.GrantTypeRefreshToken, zoidc.GrantTypeClientCredentials},
		"token_endpoint_auth_methods_supported":         withPublic, // none: public clients, with PKCE
		"revocation_endpoint_auth_methods_supported":    withPublic, // a public client revokes its own tokens
		"introspection_endpoint_auth_methods_supported": secret,     // resource servers have a secret
		"scopes_supported":                              DefaultScopes,
		"claims_supported":                              issuedClaims,
		"code_challenge_methods_supported":              []string{string(zoidc.CodeChallengeMethodS256)},
		"request_parameter_supported":                   false,
		"request_uri_parameter_supported":               false,
		"claims_parameter_supported":                    true, // for an essential acr (see wantedACR)
		"acr_values_supported":                          mfa.ACRValues,
		"frontchannel_logout_supported":                 true,
		"frontchannel_logout_session_supported":         true,
		"backchannel_logout_supported":                  true,
		"backchannel_logout_session_supported":          true,
		"idleguard_activity_endpoint":                   s.p.issuer() + "/activity",
		"idleguard_session_endpoint":                    s.p.issuer() + "/session",
	} {
		doc[k] = v
	}
	resp.Data = doc
	return resp, nil
}

// issuedClaims are the claims the provider puts in ID tokens and userinfo
// answers (profile: name, preferred_username; email: email,
// email_verified).
var issuedClaims = []string{"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "azp", "at_hash", "c_hash",
	"sid", "client_id", "name", "preferred_username", "email", "email_verified"}

// Authorize stores a validated authorization request, bound to the browser
// that sent it, and sends that browser to the login page. It replaces the
// library's, which stores requests that any browser may then complete.
// Errors reach the app through its verified redirect_uri.
func (s *server) Authorize(ctx context.Context, r *op.ClientRequest[zoidc.AuthRequest]) (*op.Redirect, error) {
	if err := checkAuthorizeParams(r.Form); err != nil {
		if len(r.Form["state"]) > 1 || len(r.Data.State) > authorizeParamLimits["state"] {
			r.Data.State = "" // ambiguous or oversized: not echoed back
		}
		return nil, err
	}
	if r.Form.Get("request_uri") != "" {
		// OpenID Connect Core 1.0 section 6.2; dropping it silently would
		// issue a code without the state and nonce it carries.
		return nil, errRequestURINotSupported()
	}
	if r.Data.RequestParam != "" {
		return nil, zoidc.ErrRequestNotSupported()
	}
	if _, err := op.ValidateAuthReqIDTokenHint(ctx, r.Data.IDTokenHint, s.p.op.IDTokenHintVerifier(ctx)); err != nil {
		return nil, err
	}
	browser, cookie := s.p.bindBrowser(r.Header)
	req, err := s.p.newAuthRequest(ctx, r.Data, r.Form.Get("claims"), browser)
	if err != nil {
		return nil, zoidc.DefaultToServerError(err, "unable to save the authorization request")
	}
	redirect := op.NewRedirect(s.p.loginURL(req.ID))
	if cookie != nil {
		redirect.Header.Add("Set-Cookie", cookie.String())
	}
	return redirect, nil
}

// errRequestURINotSupported is OpenID Connect Core 1.0 section 3.1.2.6's
// request_uri_not_supported, which the library does not define.
func errRequestURINotSupported() *zoidc.Error {
	return &zoidc.Error{ErrorType: "request_uri_not_supported", Description: "the request_uri parameter is not supported"}
}

// Introspect implements RFC 7662. Resource servers authenticate as clients.
func (s *server) Introspect(ctx context.Context, r *op.Request[op.IntrospectionRequest]) (*op.Response, error) {
	cc := r.Data.ClientCredentials
	if cc == nil || cc.ClientID == "" || cc.ClientSecret == "" {
		return nil, op.NewStatusError(zoidc.ErrInvalidClient().WithDescription("client authentication required"), http.StatusUnauthorized)
	}
	if err := (storage{s.p}).AuthorizeClientIDSecret(ctx, cc.ClientID, cc.ClientSecret); err != nil {
		return nil, op.NewStatusError(err, http.StatusUnauthorized)
	}
	inactive := op.NewResponse(introspection{})
	if r.Data.IntrospectionRequest == nil {
		return inactive, nil
	}
	id, err := s.p.accessTokenID(r.Data.Token)
	if err != nil {
		return inactive, nil
	}
	resp, err := s.p.introspect(ctx, id)
	if err != nil {
		if !isTokenError(err) {
			return nil, s.p.hideInternal(ctx, err)
		}
		return inactive, nil
	}
	resp.Active = true
	return op.NewResponse(resp), nil
}

// UserInfo returns the person's claims for the token's scopes and counts as
// activity. A token that is bad, expired, revoked or whose session is over
// gets 401 invalid_token (RFC 6750 section 3.1); userinfoEdge adds the
// challenge.
func (s *server) UserInfo(ctx context.Context, r *op.Request[zoidc.UserInfoRequest]) (*op.Response, error) {
	id, err := s.p.accessTokenID(r.Data.AccessToken)
	if err != nil {
		return nil, invalidToken("access token invalid")
	}
	st, err := s.p.useToken(ctx, id, activity.Userinfo, zeroTime)
	if err != nil {
		if isTokenError(err) {
			return nil, invalidToken(err.Error())
		}
		return nil, s.p.hideInternal(ctx, err)
	}
	info := new(zoidc.UserInfo)
	if err := s.p.fillUserinfo(ctx, info, st.UserID, st.Scopes); err != nil {
		var oe *zoidc.Error
		if errors.As(err, &oe) {
			return nil, invalidToken(oe.Description)
		}
		return nil, s.p.hideInternal(ctx, err)
	}
	return op.NewResponse(info), nil
}

// invalidToken is RFC 6750's invalid_token error, which the protocol
// library has no constructor for.
func invalidToken(desc string) error {
	return op.NewStatusError(&zoidc.Error{ErrorType: "invalid_token", Description: desc}, http.StatusUnauthorized)
}

// userinfoEdge gives the userinfo endpoint the answers of RFC 6750 section
// 3, which the protocol library does not: every refusal carries a
// WWW-Authenticate challenge; no token at all gets the bare challenge; a
// token in the URL (logged by every proxy on the way) or sent two ways at
// once is invalid_request (400). Answers are never cached.
func (p *Provider) userinfoEdge(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		noStore(w)
		if r.URL.Query().Has("access_token") || (bearer(r) != "" && r.PostFormValue("access_token") != "") {
			writeChallenge(w, http.StatusBadRequest, "invalid_request",
				"send the access token once, in the Authorization header or the request body", nil)
			return
		}
		rec, e := catchError(next, w, r)
		switch {
		case rec == nil:
		case rec.status == http.StatusUnauthorized && e.Error == "invalid_request":
			writeNoToken(w) // the library's "access token missing"
		default:
			writeChallenge(w, rec.status, e.Error, e.Description, nil)
		}
	})
}

// EndSession is RP-initiated logout: it ends the browser's authentication
// session (named by the id_token_hint's sid, or the session cookie) and all
// its application sessions, then sends the browser through the
// front-channel logout page. Without an id_token_hint the person is asked
// to confirm first.
func (s *server) EndSession(ctx context.Context, r *op.Request[zoidc.EndSessionRequest]) (*op.Redirect, error) {
	if err := checkEndSession(r.Data); err != nil {
		return nil, err
	}
	req, err := op.ValidateEndSessionRequest(ctx, r.Data, s.p.op)
	if err != nil {
		return nil, err
	}
	if err := checkHintAudience(req); err != nil {
		return nil, err
	}
	if req.IDTokenHintClaims == nil {
		// Nothing ties this request to the session (it could come from any
		// page): ask the person first (RP-Initiated Logout 1.0, section 2).
		if sid := s.p.sessionCookie(&http.Request{Header: r.Header}); sid != "" {
			target, err := s.p.logoutURL("/logout/confirm", logoutTicket{SID: sid, Redirect: s.p.validRedirect(req), ClientID: req.ClientID})
			if err != nil {
				return nil, err
			}
			return op.NewRedirect(target), nil
		}
	}
	sid := ""
	if req.IDTokenHintClaims != nil {
		sid = req.IDTokenHintClaims.SessionID
	}
	if own := s.p.sessionCookie(&http.Request{Header: r.Header}); own != "" && sid != "" && own != sid &&
		s.p.liveSession(ctx, own) {
		return s.p.askAboutOwnSession(ctx, sid, own, req)
	}
	target, err := s.p.endAndFrontchannel(ctx, sid, req)
	if err != nil {
		return nil, s.p.hideInternal(ctx, err)
	}
	return op.NewRedirect(target), nil
}

// askAboutOwnSession answers an id_token_hint that names another session
// than the browser's live one (an app holding the ID token of an earlier
// session): what the hint names ends, and the person is asked whether to
// end the browser's own session too (RP-Initiated Logout 1.0 section 2),
// instead of being left signed in.
func (p *Provider) askAboutOwnSession(ctx context.Context, hinted, own string, req *op.EndSessionRequest) (*op.Redirect, error) {
	if err := p.endForLogout(ctx, hinted, req); err != nil {
		return nil, p.hideInternal(ctx, err)
	}
	target, err := p.logoutURL("/logout/confirm", logoutTicket{SID: own, Redirect: p.validRedirect(req), ClientID: req.ClientID})
	if err != nil {
		return nil, err
	}
	return op.NewRedirect(target), nil
}

// isAccessTokenType reports whether a JWS carries the header typ of a JWT
// access token (RFC 9068 section 4), so that no other token we sign (an ID
// token, a logout token) is taken for one.
func isAccessTokenType(jws *jose.JSONWebSignature) bool {
	if len(jws.Signatures) != 1 {
		return false
	}
	typ, _ := jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType].(string)
	return strings.EqualFold(typ, "at+jwt") || strings.EqualFold(typ, "application/at+jwt")
}

func isTokenError(err error) bool {
	return errors.Is(err, errTokenInvalid) || errors.Is(err, errTokenExpired) ||
		errors.Is(err, errTokenRevoked) || errors.Is(err, activity.ErrSessionOver)
}

// accessTokenID returns the id of an access token issued by this provider:
// the jti of a JWT whose signature verifies against a published key, or the
// id sealed inside an opaque token (a compact JWE, AES-256-GCM, whose key
// never leaves the provider). Expiry and session state are
// checked by the caller against the provider's clock.
func (p *Provider) accessTokenID(token string) (string, error) {
	if token == "" || len(token) > 8192 {
		return "", errTokenInvalid
	}
	if strings.Count(token, ".") == 2 {
		if id, ok := p.verified.get(token); ok {
			return id, nil
		}
		jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
		if err != nil || !isAccessTokenType(jws) {
			return "", errTokenInvalid
		}
		payload, err := p.keys.VerifySignature(context.Background(), jws)
		if err != nil {
			return "", errTokenInvalid
		}
		var claims struct {
			Issuer string `json:"iss"`
			JTI    string `json:"jti"`
			Exp    int64  `json:"exp"`
		}
		if err := json.Unmarshal(payload, &claims); err != nil || claims.Issuer != p.issuer() || claims.JTI == "" {
			return "", errTokenInvalid
		}
		p.verified.put(token, claims.JTI, time.Unix(claims.Exp, 0))
		return claims.JTI, nil
	}
	if strings.Count(token, ".") != 4 { // opaque tokens are compact JWE (AES-256-GCM)
		return "", errTokenInvalid
	}
	if id, ok := p.verified.get(token); ok {
		return id, nil
	}
	plain, err := p.op.Crypto().Decrypt(token)
	if err != nil {
		return "", errTokenInvalid
	}
	id, _, ok := strings.Cut(plain, ":")
	if !ok {
		return "", errTokenInvalid
	}
	if tid, err := parseTokenID(id); err == nil {
		p.verified.put(token, id, tid.expires)
	}
	return id, nil
}
