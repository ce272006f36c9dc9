package demoapps

import (
	"context"
	"errors"
	"fmt"
	"time"

	gooidc "github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
)

// LogoutToken is a verified back-channel logout token.
type LogoutToken struct {
	JTI, SID, Subject string
	// Reason is idleguard's extra claim: why the session ended
	// (idle_timeout, max_lifetime, logout, app_idle_timeout, admin,
	// refresh_reuse, code_reuse).
	Reason   string
	IssuedAt time.Time
}

// LogoutVerifier checks logout tokens as OpenID Connect Back-Channel Logout
// 1.0, section 2.6 says: go-oidc's VerifyLogout checks the signature against
// the provider's JWKS, iss, aud, exp, jti, the events member, sub or sid, and
// that there is no nonce; this adds the explicit typ logout+jwt (section
// 2.4, so that no other JWT of the provider can pass as a logout token) and
// an iat that is neither in the future nor stale.
type LogoutVerifier struct {
	verifier *gooidc.IDTokenVerifier
	now      func() time.Time
	// MaxAge bounds how old iat may be; default 5 minutes.
	MaxAge time.Duration
}

// NewLogoutVerifier wraps an ID token verifier configured with the app's
// client id.
func NewLogoutVerifier(v *gooidc.IDTokenVerifier, now func() time.Time) *LogoutVerifier {
	if now == nil {
		now = time.Now
	}
	return &LogoutVerifier{verifier: v, now: now, MaxAge: 5 * time.Minute}
}

// clockSkew is the tolerance for an iat slightly ahead of our clock.
const clockSkew = 30 * time.Second

// Verify returns the token's claims, or why it is refused.
func (v *LogoutVerifier) Verify(ctx context.Context, raw string) (*LogoutToken, error) {
	if raw == "" {
		return nil, errors.New("no logout_token")
	}
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA})
	if err != nil {
		return nil, fmt.Errorf("logout token: %w", err)
	}
	if len(jws.Signatures) != 1 || jws.Signatures[0].Header.ExtraHeaders[jose.HeaderType] != "logout+jwt" {
		return nil, errors.New("logout token: typ is not logout+jwt")
	}
	lt, err := v.verifier.VerifyLogout(ctx, raw)
	if err != nil {
		return nil, err
	}
	now := v.now()
	switch {
	case lt.IssuedAt.IsZero():
		return nil, errors.New("logout token: no iat")
	case lt.IssuedAt.After(now.Add(clockSkew)):
		return nil, errors.New("logout token: iat is in the future")
	case now.Sub(lt.IssuedAt) > v.MaxAge:
		return nil, errors.New("logout token: iat is too old")
	}
	var extra struct {
		Reason string `json:"reason"`
	}
	if err := lt.Claims(&extra); err != nil {
		return nil, err
	}
	return &LogoutToken{JTI: lt.TokenID, SID: lt.SessionID, Subject: lt.Subject, Reason: extra.Reason, IssuedAt: lt.IssuedAt}, nil
}
