package mfa

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// TOTP parameters (RFC 6238), those every authenticator app reads from an
// otpauth URI: SHA-1, 6 digits, 30 seconds.
const (
	TOTPPeriod = 30
	TOTPDigits = 6
	// TOTPSkew is how many steps of clock drift either way are accepted.
	TOTPSkew = 1
)

var totpOpts = totp.ValidateOpts{Period: TOTPPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// NewTOTP returns a fresh TOTP key for account at issuer: its base32
// secret and its otpauth:// URI (for a QR code).
func NewTOTP(issuer, account string) (secret, uri string, err error) {
	key, err := totp.Generate(totp.GenerateOpts{Issuer: issuer, AccountName: account, Period: TOTPPeriod,
		Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, SecretSize: 20})
	if err != nil {
		return "", "", err
	}
	return key.Secret(), key.URL(), nil
}

// TOTPURI is the otpauth:// URI of an existing base32 secret.
func TOTPURI(issuer, account, secret string) (string, error) {
	raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
	if err != nil {
		return "", err
	}
	key, err := totp.Generate(totp.GenerateOpts{Issuer: issuer, AccountName: account, Period: TOTPPeriod,
		Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Secret: raw})
	if err != nil {
		return "", err
	}
	return key.URL(), nil
}

// WellFormedCode reports whether code is six ASCII digits.
func WellFormedCode(code string) bool {
	if len(code) != TOTPDigits {
		return false
	}
	for _, c := range code {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// MatchTOTP returns the time step whose code is code, for the step of now
// and TOTPSkew steps either side, or false. The caller must still refuse a
// step at or before the last one accepted (replay).
func MatchTOTP(secret, code string, now time.Time) (int64, bool) {
	if !WellFormedCode(code) {
		return 0, false
	}
	step := now.Unix() / TOTPPeriod
	match := int64(-1)
	for d := int64(-TOTPSkew); d <= TOTPSkew; d++ {
		want, err := totp.GenerateCodeCustom(secret, time.Unix((step+d)*TOTPPeriod, 0), totpOpts)
		if err == nil && subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 {
			match = step + d // the latest matching step wins
		}
	}
	return match, match >= 0
}

// RecoveryCodeCount is how many recovery codes an enrollment gives.
const RecoveryCodeCount = 10

var recoveryAlphabet = base32.NewEncoding("abcdefghijkmnpqrstuvwxyz23456789").WithPadding(base32.NoPadding)

// NewRecoveryCodes returns RecoveryCodeCount fresh codes, each 60 random
// bits written as xxxx-xxxx-xxxx (no 0/o, 1/l confusion).
func NewRecoveryCodes() []string {
	codes := make([]string, RecoveryCodeCount)
	for i := range codes {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		s := recoveryAlphabet.EncodeToString(b)[:12]
		codes[i] = s[:4] + "-" + s[4:8] + "-" + s[8:]
	}
	return codes
}

// NormalizeRecoveryCode reads a code as typed (any case, spaces or dashes).
func NormalizeRecoveryCode(code string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return r
	}, code)
}

// LooksLikeRecoveryCode reports whether code, normalized, has the shape of
// a recovery code.
func LooksLikeRecoveryCode(code string) bool {
	n := NormalizeRecoveryCode(code)
	if len(n) != 12 {
		return false
	}
	_, err := recoveryAlphabet.DecodeString(n + "aaaa")
	return err == nil
}

// HashRecoveryCode is the stored form of a recovery code of userID: an
// HMAC under key, so that neither the database nor a guess at it reveals
// the code.
func HashRecoveryCode(key []byte, userID, code string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("recovery|" + userID + "|" + NormalizeRecoveryCode(code)))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
