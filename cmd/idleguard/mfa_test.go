package main

import (
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUserTOTPListAndReset(t *testing.T) {
	config, issuer, db := writeConfig(t, "")
	_, err := runCLI(t, "a long password\n", "user", "add", "alice", "--config", config)
	require.NoError(t, err)

	var out strings.Builder
	err = run(t.Context(), []string{"user", "totp", "alice", "--config", config}, strings.NewReader(""), &out, os.Stderr)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	u, err := url.Parse(lines[0])
	require.NoError(t, err, "the first line is the otpauth URI")
	require.Equal(t, "otpauth", u.Scheme)
	require.Equal(t, "totp", u.Host)
	q := u.Query()
	require.NotEmpty(t, q.Get("secret"))
	require.Equal(t, strings.TrimPrefix(issuer, "http://")[:strings.Index(strings.TrimPrefix(issuer, "http://"), ":")], q.Get("issuer"))
	require.Equal(t, "SHA1", q.Get("algorithm"))
	require.Equal(t, "6", q.Get("digits"))
	require.Equal(t, "30", q.Get("period"))
	require.Len(t, lines[1:], 10, "then ten recovery codes")
	for _, c := range lines[1:] {
		require.Regexp(t, `^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$`, c)
	}
	data, err := os.ReadFile(db)
	require.NoError(t, err)
	require.NotContains(t, string(data), lines[1], "recovery codes are stored hashed")

	listed, err := runCLI(t, "", "user", "list", "--config", config)
	require.NoError(t, err)
	require.Contains(t, listed, "FACTORS")
	require.Contains(t, listed, "totp (10 recovery codes)")

	reset, err := runCLI(t, "", "user", "mfa", "reset", "alice", "--config", config)
	require.NoError(t, err)
	require.Contains(t, reset, "removed every second factor of alice")
	listed, err = runCLI(t, "", "user", "list", "--config", config)
	require.NoError(t, err)
	require.Contains(t, listed, "none")

	_, err = runCLI(t, "", "user", "totp", "nobody", "--config", config)
	require.ErrorContains(t, err, "nobody")
	_, err = runCLI(t, "", "user", "mfa", "wipe", "alice", "--config", config)
	require.ErrorContains(t, err, "usage: idleguard user mfa reset NAME")
}

func TestSecretKeyAndMFAModeAreValidated(t *testing.T) {
	for _, tc := range []struct{ extra, field string }{
		{"login:\n  mfa: sometimes\n", "login.mfa"},
		{"keys:\n  secret_key: abcd\n", "keys.secret_key"},
		{"keys:\n  secret_key: " + strings.Repeat("zz", 32) + "\n", "keys.secret_key"},
	} {
		config, _, _ := writeConfig(t, "")
		data, err := os.ReadFile(config)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(config, append([]byte(tc.extra), data...), 0o600))
		_, err = runCLI(t, "", "user", "list", "--config", config)
		require.ErrorContains(t, err, tc.field)
	}
}
