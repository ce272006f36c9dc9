// Package mfa owns second factors: TOTP codes (RFC 6238) with replay
// refusal, single-use recovery codes, passkeys (WebAuthn), the sealing of
// stored secrets with the provider's secret key, and the assurance levels
// (amr, acr) a set of factors gives.
package mfa
