package oidc

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"
)

// revokeStatus posts one revocation as client and returns the status code.
func revokeStatus(t *testing.T, e *env, client, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e.issuer+"/revoke", strings.NewReader(url.Values{"token": {token}}.Encode()))
	require.NoError(t, err)
	req.SetBasicAuth(client, client+"-secret")
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// revocations counts what the provider keeps: rows in the database and ids
// in memory.
func revocations(t *testing.T, e *env) (rows, inMemory int) {
	t.Helper()
	require.NoError(t, e.store.ReaderForTest().QueryRow(`SELECT COUNT(*) FROM revoked_tokens`).Scan(&rows))
	e.p.revoked.Range(func(any, any) bool { inMemory++; return true })
	return rows, inMemory
}

// forgedJWT signs claims with a key the provider has never published.
func forgedJWT(t *testing.T, claims map[string]any) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("at+jwt"))
	require.NoError(t, err)
	raw, err := jwt.Signed(signer).Claims(claims).Serialize()
	require.NoError(t, err)
	return raw
}

// TestRevokeStoresOnlyVerifiedTokens is the flood of issue 9, finding 1: a
// client sent forged token ids of any length and expiry to /revoke, and each
// was stored in memory and in the database, never purged and reloaded at
// every start. Only a token the provider signed or sealed, issued to the
// calling client and still alive, may be stored; and only until it expires.
func TestRevokeStoresOnlyVerifiedTokens(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	mail := b.login(e.rp("mail"), "alice")
	bank := b.login(e.rp("bank"), "alice")
	claims := decodeSegment(t, strings.Split(mail.AccessToken, ".")[1])
	jti := claims["jti"].(string)
	parts := strings.Split(jti, ".") // <sid>.<app>.<exp>.<random>
	app := parts[0] + "." + parts[1]
	far := strconv.FormatInt(time.Now().Add(100*365*24*time.Hour).Unix(), 36)
	long := strings.Repeat("A", 6000)

	flood := map[string]string{
		"own app session, far expiry, long id": app + "." + far + "." + long,
		"client credentials id, far expiry":    "cc." + far + "." + long + "." + base64.RawURLEncoding.EncodeToString([]byte("mail")),
		"the bare jti of a real token":         jti,
		"garbage":                              long,
		"JWT under a foreign key":              forgedJWT(t, map[string]any{"iss": e.issuer, "jti": app + "." + far + ".x", "exp": time.Now().Add(time.Hour).Unix()}),
		"real token with a flipped signature":  mail.AccessToken[:len(mail.AccessToken)-4] + "AAAA",
	}
	for name, token := range flood {
		for range 100 {
			require.Equal(t, http.StatusOK, revokeStatus(t, e, "mail", token), name)
		}
	}
	rows, mem := revocations(t, e)
	require.Zero(t, rows, "the flood stored nothing in the database")
	require.Zero(t, mem, "nor in memory")
	require.True(t, active(t, e, mail.AccessToken), "and revoked nothing")

	// Another client's genuine token is refused (RFC 7009 section 2.1).
	require.Equal(t, http.StatusBadRequest, revokeStatus(t, e, "mail", bank.AccessToken))
	require.True(t, active(t, e, bank.AccessToken))

	// The real revocation of one's own token works, and survives a restart.
	require.Equal(t, http.StatusOK, revokeStatus(t, e, "mail", mail.AccessToken))
	require.False(t, active(t, e, mail.AccessToken))
	rows, mem = revocations(t, e)
	require.Equal(t, [2]int{1, 1}, [2]int{rows, mem})
	e.restart(nil)
	require.False(t, active(t, e, mail.AccessToken), "still revoked after a restart")

	// Once the token has expired anyway, its revocation is purged.
	e.clock.Advance(31 * time.Minute) // mail's tokens live at most its 30m limit
	require.NoError(t, e.p.purge(t.Context()))
	rows, mem = revocations(t, e)
	require.Equal(t, [2]int{0, 0}, [2]int{rows, mem}, "purged in memory and in the database")
}

// TestRevokeOfAnEndedSessionsTokenStoresNothing: the end of a session has
// revoked its tokens already.
func TestRevokeOfAnEndedSessionsTokenStoresNothing(t *testing.T) {
	e := newEnv(t)
	tok := e.browser().login(e.rp("mail"), "alice")
	require.NoError(t, e.p.tracker.End(t.Context(), tok.sid, "admin", "admin"))
	require.Equal(t, http.StatusOK, revokeStatus(t, e, "mail", tok.AccessToken))
	rows, mem := revocations(t, e)
	require.Equal(t, [2]int{0, 0}, [2]int{rows, mem})
}

// An access token revoked at one replica (RFC 7009) was refused there only:
// every other replica kept accepting it (introspection, userinfo,
// heartbeats) until it restarted or the token expired, since revocations
// were read from the database only at start. Each replica's housekeeping
// now reads them.
func TestReplicasRevokedAccessTokenIsRefusedEverywhere(t *testing.T) {
	onEveryBackend(t, func(t *testing.T, db backend) {
		c := newCluster(t, db, 2)
		b := c.via(0).browser()
		mail := b.login(c.rp("mail"), "alice")
		require.True(t, c.introspectAt(1, mail.AccessToken), "replica B knows the token")

		c.via(0)
		revoke(t, c.env, "mail", mail.AccessToken, "access_token")
		require.False(t, c.introspectAt(0, mail.AccessToken), "refused at once where it was revoked")

		require.NoError(t, c.replicas[1].p.purge(t.Context())) // one round of replica B's housekeeping
		require.False(t, c.introspectAt(1, mail.AccessToken), "refused at the other replica after its housekeeping")
		c.via(1)
		code, _ := c.userinfo(mail.AccessToken)
		require.Equal(t, http.StatusUnauthorized, code)
		require.Equal(t, http.StatusUnauthorized, c.heartbeat(mail.AccessToken))
	})
}
