package oidc

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Token identifiers carry what is needed to check a token without a row per
// token: the application session it belongs to and its expiry.
//
//	access token id (jti) of a person's token: <sid>.<app>.<exp base36>.<random>
//	access token id of a client_credentials token: cc.<exp base36>.<random>.<base64url client id>
//	refresh token: <sid>.<app>.<chain>.<generation base36>.<MAC>
//
// Ending an application session therefore revokes all its tokens at once.
// Refresh tokens are never stored: each one is the MAC of its application
// session, chain (one per code exchange) and generation under a key kept in
// the database, and only each chain's current generation is kept. A refresh
// rotates the generation in memory (flushed with activity); presenting an
// older generation is reuse.

var errBadToken = errors.New("malformed token")

func randomB64(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

type tokenID struct {
	appSessionID string // empty for client credentials
	clientID     string // only for client credentials
	expires      time.Time
}

func newUserTokenID(appSessionID string, exp time.Time) string {
	return appSessionID + "." + strconv.FormatInt(exp.Unix(), 36) + "." + randomB64(8)
}

func newClientTokenID(clientID string, exp time.Time) string {
	return "cc." + strconv.FormatInt(exp.Unix(), 36) + "." + randomB64(8) + "." + base64.RawURLEncoding.EncodeToString([]byte(clientID))
}

func parseTokenID(id string) (tokenID, error) {
	parts := strings.Split(id, ".")
	if len(parts) != 4 {
		return tokenID{}, errBadToken
	}
	if parts[0] == "cc" {
		exp, err := strconv.ParseInt(parts[1], 36, 64)
		if err != nil {
			return tokenID{}, errBadToken
		}
		client, err := base64.RawURLEncoding.DecodeString(parts[3])
		if err != nil {
			return tokenID{}, errBadToken
		}
		return tokenID{clientID: string(client), expires: time.Unix(exp, 0)}, nil
	}
	exp, err := strconv.ParseInt(parts[2], 36, 64)
	if err != nil || parts[0] == "" || parts[1] == "" {
		return tokenID{}, errBadToken
	}
	return tokenID{appSessionID: parts[0] + "." + parts[1], expires: time.Unix(exp, 0)}, nil
}

// refreshMAC signs refresh tokens.
type refreshMAC []byte

// refreshToken is a parsed refresh token.
type refreshToken struct {
	app, chain string
	gen        uint64
}

func (k refreshMAC) mac(r refreshToken) string {
	h := hmac.New(sha256.New, k)
	h.Write([]byte("refresh|" + r.app + "|" + r.chain + "|" + strconv.FormatUint(r.gen, 36)))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:18])
}

func (k refreshMAC) token(r refreshToken) string {
	return r.app + "." + r.chain + "." + strconv.FormatUint(r.gen, 36) + "." + k.mac(r)
}

// parse checks a refresh token's MAC in constant time.
func (k refreshMAC) parse(token string) (refreshToken, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 5 || len(token) > 200 {
		return refreshToken{}, errBadToken
	}
	gen, err := strconv.ParseUint(parts[3], 36, 64)
	if err != nil {
		return refreshToken{}, errBadToken
	}
	r := refreshToken{app: parts[0] + "." + parts[1], chain: parts[2], gen: gen}
	if !hmac.Equal([]byte(parts[4]), []byte(k.mac(r))) {
		return refreshToken{}, errBadToken
	}
	return r, nil
}
