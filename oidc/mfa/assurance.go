package mfa

import "slices"

// Authentication method references (RFC 8176) the provider issues.
const (
	AMRPassword = "pwd" // a password
	AMROTP      = "otp" // a TOTP code or a recovery code
	AMRHardware = "hwk" // a passkey bound to its device
	AMRSoftware = "swk" // a passkey that can leave its device (synced)
	AMRMulti    = "mfa" // two factors were used
)

// Authentication context class references (acr) the provider issues and
// accepts in acr_values, weakest first.
const (
	ACRPassword          = "pwd" // one factor
	ACRMulti             = "mfa" // two factors
	ACRPhishingResistant = "phr" // a passkey (user-verified, bound to the origin)
)

// ACRValues are the acr values, weakest first (discovery's
// acr_values_supported).
var ACRValues = []string{ACRPassword, ACRMulti, ACRPhishingResistant}

// Rank orders acr values: 0 for pwd, 1 for mfa, 2 for phr, -1 for others.
func Rank(acr string) int { return slices.Index(ACRValues, acr) }

// ACR is the acr that amr gives: phr with a passkey, mfa with two
// factors, else pwd.
func ACR(amr []string) string {
	switch {
	case slices.Contains(amr, AMRHardware) || slices.Contains(amr, AMRSoftware):
		return ACRPhishingResistant
	case slices.Contains(amr, AMRMulti):
		return ACRMulti
	}
	return ACRPassword
}

// WithFactor returns amr with method added, and mfa when that makes two
// factors. A user-verified passkey is two factors by itself (the device,
// and the PIN or biometric that unlocks it), so it always gives mfa.
func WithFactor(amr []string, method string) []string {
	out := slices.Clone(amr)
	if !slices.Contains(out, method) {
		out = append(out, method)
	}
	factors := 0
	for _, m := range out {
		if m != AMRMulti {
			factors++
		}
	}
	passkey := method == AMRHardware || method == AMRSoftware
	if (factors >= 2 || passkey) && !slices.Contains(out, AMRMulti) {
		out = append(out, AMRMulti)
	}
	return out
}
