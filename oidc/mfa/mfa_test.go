package mfa

import (
	"bytes"
	"testing"
	"time"

	"github.com/pquerna/otp/totp"
	"github.com/stretchr/testify/require"
)

func TestSealerBindsValueToOwner(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	s, err := NewSealer(key)
	require.NoError(t, err)
	stored, sealed := s.Seal([]byte("JBSWY3DPEHPK3PXP"), "totp|alice")
	require.True(t, sealed)
	require.NotContains(t, string(stored), "JBSWY3DPEHPK3PXP")
	plain, err := s.Open(stored, true, "totp|alice")
	require.NoError(t, err)
	require.Equal(t, "JBSWY3DPEHPK3PXP", string(plain))
	_, err = s.Open(stored, true, "totp|mallory")
	require.Error(t, err, "a sealed secret copied to another person's row does not open")
	_, err = (*Sealer)(nil).Open(stored, true, "totp|alice")
	require.ErrorIs(t, err, ErrNoSecretKey)
	_, err = NewSealer([]byte("short"))
	require.Error(t, err)
	none, err := NewSealer(nil)
	require.NoError(t, err)
	stored, sealed = none.Seal([]byte("x"), "a")
	require.False(t, sealed)
	require.Equal(t, []byte("x"), stored)
}

func TestMatchTOTPAcceptsOneStepOfDrift(t *testing.T) {
	secret, uri, err := NewTOTP("idleguard", "alice")
	require.NoError(t, err)
	require.Contains(t, uri, "otpauth://totp/")
	now := time.Unix(1_800_000_000, 0)
	step := now.Unix() / TOTPPeriod
	for _, tc := range []struct {
		name  string
		drift int64
		ok    bool
	}{{"now", 0, true}, {"one step behind", -1, true}, {"one step ahead", 1, true}, {"two behind", -2, false}, {"two ahead", 2, false}} {
		t.Run(tc.name, func(t *testing.T) {
			code, err := totp.GenerateCodeCustom(secret, time.Unix((step+tc.drift)*TOTPPeriod, 0), totpOpts)
			require.NoError(t, err)
			got, ok := MatchTOTP(secret, code, now)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, step+tc.drift, got)
			}
		})
	}
	for _, bad := range []string{"", "12345", "1234567", "12a456", "١٢٣٤٥٦"} {
		_, ok := MatchTOTP(secret, bad, now)
		require.False(t, ok, "%q", bad)
	}
}

func TestRecoveryCodes(t *testing.T) {
	codes := NewRecoveryCodes()
	require.Len(t, codes, RecoveryCodeCount)
	seen := map[string]bool{}
	for _, c := range codes {
		require.Regexp(t, `^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}$`, c)
		require.True(t, LooksLikeRecoveryCode(c))
		require.False(t, seen[c])
		seen[c] = true
	}
	key := []byte("k")
	c := codes[0]
	require.Equal(t, HashRecoveryCode(key, "u", c), HashRecoveryCode(key, "u", " "+bytesUpper(c)[:4]+" "+c[5:]))
	require.NotEqual(t, HashRecoveryCode(key, "u", c), HashRecoveryCode(key, "v", c), "bound to the person")
	require.False(t, LooksLikeRecoveryCode("123456"))
}

func bytesUpper(s string) string { return string(bytes.ToUpper([]byte(s))) }

func TestAssurance(t *testing.T) {
	for _, tc := range []struct {
		amr  []string
		add  string
		want []string
		acr  string
	}{
		{nil, AMRPassword, []string{"pwd"}, "pwd"},
		{[]string{"pwd"}, AMROTP, []string{"pwd", "otp", "mfa"}, "mfa"},
		{[]string{"pwd", "otp", "mfa"}, AMROTP, []string{"pwd", "otp", "mfa"}, "mfa"},
		{[]string{"pwd"}, AMRHardware, []string{"pwd", "hwk", "mfa"}, "phr"},
		{nil, AMRSoftware, []string{"swk", "mfa"}, "phr"},
		{[]string{"pwd", "otp", "mfa"}, AMRSoftware, []string{"pwd", "otp", "mfa", "swk"}, "phr"},
	} {
		got := WithFactor(tc.amr, tc.add)
		require.Equal(t, tc.want, got)
		require.Equal(t, tc.acr, ACR(got))
	}
	require.Equal(t, []int{0, 1, 2, -1}, []int{Rank("pwd"), Rank("mfa"), Rank("phr"), Rank("gold")})
}
