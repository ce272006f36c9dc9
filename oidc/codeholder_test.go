package oidc

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

// A code alone is not a credential: only the client it was issued to,
// with its redirect URI and the PKCE verifier of its challenge, may redeem
// it. Someone who read a code (from a proxy log, a browser's history, a
// Referer) and presents it through another client, without the verifier,
// must neither burn it before the app's own exchange nor, after it, end
// the app session as a "replay".

// exchangeAs posts a code exchange for client (public: no secret).
func exchangeAs(t *testing.T, e *env, client, secret, code, redirect, verifier string) (int, map[string]any) {
	t.Helper()
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {redirect}, "client_id": {client}}
	if verifier != "" {
		form.Set("code_verifier", verifier)
	}
	return tokenRequest(t, e, form, client, secret)
}

func TestAStolenCodeWithoutItsClientCannotBurnIt(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := e.rp("mail")
	resp, verifier, state := b.authorize(mail)
	code := b.code(b.submitLogin(body(t, resp), "alice", testPassword), state)

	for _, try := range []struct {
		name, client, secret, redirect, verifier string
	}{
		{"another client, no authentication", "spa", "", "http://127.0.0.1:1/spa/callback", oauth2.GenerateVerifier()},
		{"another confidential client", "bank", "bank-secret", "http://127.0.0.1:1/bank/callback", verifier},
		{"the right client, a wrong verifier", "mail", "mail-secret", "http://127.0.0.1:1/mail/callback", oauth2.GenerateVerifier()},
		{"the right client, another redirect_uri", "mail", "mail-secret", "http://127.0.0.1:1/bank/callback", verifier},
	} {
		status, out := exchangeAs(t, e, try.client, try.secret, code, try.redirect, try.verifier)
		require.Equal(t, http.StatusBadRequest, status, "%s: %v", try.name, out)
		require.Contains(t, []any{"invalid_grant", "invalid_request"}, out["error"], try.name)
	}

	tok := b.exchange(mail, code, verifier) // the app's own exchange still works
	require.True(t, active(t, e, tok.AccessToken))

	status, _ := exchangeAs(t, e, "spa", "", code, "http://127.0.0.1:1/spa/callback", oauth2.GenerateVerifier())
	require.Equal(t, http.StatusBadRequest, status)
	require.True(t, active(t, e, tok.AccessToken), "a replay by someone who cannot redeem the code ends nothing")

	_, err := mail.oauth.Exchange(t.Context(), code, oauth2.VerifierOption(verifier))
	requireOAuthError(t, err, "invalid_grant")
	require.False(t, active(t, e, tok.AccessToken), "a replay by the code's own client still revokes what it gave")
}
