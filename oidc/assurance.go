package oidc

import (
	"encoding/json"
	"time"

	zoidc "github.com/zitadel/oidc/v3/pkg/oidc"

	"github.com/idleguard/idleguard/oidc/mfa"
	"github.com/idleguard/idleguard/session"
)

// wantedACR reads the assurance an app asks for: acr_values (OpenID
// Connect Core 1.0 section 3.1.2.1) and an essential acr claim in the
// claims parameter (section 5.5.1.1). Either names acceptable values; the
// weakest known one is what the sign-in must reach (a stronger one
// satisfies it too). Unknown acr_values are ignored, as voluntary values
// may be; an essential acr none of whose values the provider knows cannot
// be met and is refused.
func wantedACR(acrValues []string, claims string) (string, error) {
	want := weakestKnown(acrValues)
	if claims == "" {
		return want, nil
	}
	var c struct {
		IDToken struct {
			ACR *struct {
				Essential bool     `json:"essential"`
				Value     string   `json:"value"`
				Values    []string `json:"values"`
			} `json:"acr"`
		} `json:"id_token"`
	}
	if err := json.Unmarshal([]byte(claims), &c); err != nil {
		return "", zoidc.ErrInvalidRequest().WithDescription("the claims parameter is not a JSON object")
	}
	acr := c.IDToken.ACR
	if acr == nil || !acr.Essential {
		return want, nil
	}
	values := acr.Values
	if acr.Value != "" {
		values = append(values, acr.Value)
	}
	essential := weakestKnown(values)
	if essential == "" {
		return "", zoidc.ErrInvalidRequest().WithDescription("the essential acr values %v are not supported (supported: %v)", values, mfa.ACRValues)
	}
	return strongest(want, essential), nil
}

func weakestKnown(values []string) string {
	best := ""
	for _, v := range values {
		if r := mfa.Rank(v); r >= 0 && (best == "" || r < mfa.Rank(best)) {
			best = v
		}
	}
	return best
}

func strongest(a, b string) string {
	if mfa.Rank(b) > mfa.Rank(a) {
		return b
	}
	return a
}

// requiredACR is the assurance a request needs from the session that
// answers it: its app's floor (require_mfa, require_phishing_resistant)
// and what it asked for (acr_values, claims).
func (p *Provider) requiredACR(req *authRequest) string {
	need := mfa.ACRPassword
	if c := p.clients[req.ClientID]; c != nil {
		if c.RequireMFA {
			need = mfa.ACRMulti
		}
		if c.RequirePhishingResistant {
			need = mfa.ACRPhishingResistant
		}
	}
	return strongest(need, req.WantACR)
}

// signInACR is what a password sign-in must reach: the request's need,
// mfa under login.mfa always or required for a person who has a factor,
// and, when the person signs in again into their live session
// (prompt=login, max_age), the assurance that session had: every factor
// is asked again.
func (p *Provider) signInACR(req *authRequest, f session.Factors, previousAMR []string) string {
	need := p.requiredACR(req)
	if p.cfg.MFA.Mode != MFAWhenRequired && f.Any() {
		need = strongest(need, mfa.ACRMulti)
	}
	if previousAMR != nil {
		need = strongest(need, mfa.ACR(previousAMR))
	}
	return need
}

// mustEnroll reports whether a person with factors f must enroll one before
// going on: login.mfa required, or a sign-in that needs more than a
// password from a person who has no second factor.
func (p *Provider) mustEnroll(f session.Factors, need string) bool {
	return !f.Any() && (p.cfg.MFA.Mode == MFARequired || mfa.Rank(need) > 0)
}

// satisfies reports whether amr reaches acr need.
func satisfies(amr []string, need string) bool { return mfa.Rank(mfa.ACR(amr)) >= mfa.Rank(need) }

// pendingFactor is a sign-in or step-up waiting for a second factor, kept
// in the authorization request (in the database, so that the factor may be
// given at any replica), bound to the browser that started it.
type pendingFactor struct {
	UserID string   `json:"user_id"`
	AMR    []string `json:"amr"` // proved so far
	// SID is the live session that steps up; "" for a sign-in, which
	// creates (or reauthenticates) the session once the factor is given.
	SID  string    `json:"sid,omitempty"`
	Need string    `json:"need"` // the acr to reach
	At   time.Time `json:"at"`
}

// passkeyOnly reports whether only a passkey will do.
func (f *pendingFactor) passkeyOnly() bool { return f.Need == mfa.ACRPhishingResistant }
