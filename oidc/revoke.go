package oidc

import (
	"context"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/idleguard/idleguard/session"
)

// maxTokenIDLength bounds a revoked access token id: far above the ids this
// provider issues (about 60 characters), far below anything that could
// fill memory or the database.
const maxTokenIDLength = 256

// Revocation implements RFC 7009 without trusting what it cannot verify:
// only a refresh token whose MAC checks, or an access token that this
// provider signed (a JWT under a published key, with our issuer) or sealed
// (an opaque token), and that was issued to the authenticated client, is
// revoked. zitadel's own handler passes an unverifiable token on as a raw id,
// which would let any client store forged ids of any length and expiry.
func (s *server) Revocation(ctx context.Context, r *op.ClientRequest[zoidc.RevocationRequest]) (*op.Response, error) {
	if err := s.p.revoke(ctx, r.Data.Token, r.Client.GetID()); err != nil {
		if unavailable(err) { // not revoked: never answered as if it were
			return nil, s.p.unavailableOr(ctx, err)
		}
		return nil, op.RevocationError(err)
	}
	return op.NewResponse(nil), nil
}

// revoke revokes one token presented by clientID. A token that is invalid,
// expired, unknown or already dead by its session's end is answered with
// success and stores nothing (RFC 7009 section 2.2); a token of another
// client is refused (section 2.1). Revocation is never activity.
func (p *Provider) revoke(ctx context.Context, token, clientID string) *zoidc.Error {
	if rt, err := p.refresh.parse(token); err == nil {
		return p.revokeRefresh(ctx, rt, clientID)
	}
	id, err := p.accessTokenID(token)
	if err != nil || len(id) > maxTokenIDLength {
		return nil
	}
	tid, err := parseTokenID(id)
	if err != nil || !p.now().Before(tid.expires) {
		return nil
	}
	owner, live := tid.clientID, true
	if tid.appSessionID != "" {
		st, err := p.tracker.Check(ctx, tid.appSessionID)
		if err != nil {
			return unknownOrUnavailable(err)
		}
		owner, live = st.ClientID, st.Active
	}
	if owner != clientID {
		return zoidc.ErrUnauthorizedClient().WithDescription("token was not issued to this client")
	}
	if !live {
		return nil // the end of its session revoked it already
	}
	if err := p.revokeTokenID(ctx, id, tid.expires); err != nil {
		return zoidc.ErrServerError().WithParent(err)
	}
	return nil
}

// unknownOrUnavailable is the answer to a token whose session could not be
// checked: success for a token that is not (or no longer) valid (RFC 7009
// section 2.2), but an error when the database did not answer, for then
// nothing was revoked and success would be a lie.
func unknownOrUnavailable(err error) *zoidc.Error {
	if !unavailable(err) {
		return nil
	}
	return zoidc.ErrServerError().WithParent(err)
}

// revokeRefresh ends the application session of a refresh token: RFC 7009
// section 2.1 asks that revoking a refresh token revoke the access tokens of
// the same grant, and every token of an app session dies with it.
func (p *Provider) revokeRefresh(ctx context.Context, rt refreshToken, clientID string) *zoidc.Error {
	st, err := p.tracker.Check(ctx, rt.app)
	if err != nil {
		return unknownOrUnavailable(err)
	}
	if st.ClientID != clientID {
		return zoidc.ErrUnauthorizedClient().WithDescription("token was not issued to this client")
	}
	if err := p.tracker.EndApp(ctx, rt.app, session.ReasonLogout, clientID); err != nil {
		return zoidc.ErrServerError().WithParent(err)
	}
	return nil
}
