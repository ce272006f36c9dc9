package oidc

import (
	"time"

	"github.com/idleguard/idleguard/session"
)

// BackchannelConfig tunes back-channel logout delivery.
type BackchannelConfig struct {
	Timeout     time.Duration // one POST; default 5s
	Concurrency int           // deliveries in flight in this process; default 8
	// PerDestination bounds the deliveries in flight to one
	// backchannel_logout_uri, so that an app that hangs holds only its own
	// slots; default 2.
	PerDestination int
	// Retention is how long delivered and abandoned rows are kept before
	// they are purged (the audit keeps the record); default 7 days.
	Retention      time.Duration
	RetryFor       time.Duration // give up (abandon) after this long since the end; default 24h
	InitialBackoff time.Duration // first retry delay; default 1s, doubled per attempt with jitter
	MaxBackoff     time.Duration // default 5m
	PollInterval   time.Duration // how often the outbox is polled when nothing woke the worker; default 1s
}

// DefaultRetention is how long finished outbox rows are kept by default.
const DefaultRetention = 7 * 24 * time.Hour

func (c *BackchannelConfig) setDefaults() {
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 8
	}
	if c.PerDestination <= 0 {
		c.PerDestination = 2
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.RetryFor <= 0 {
		c.RetryFor = 24 * time.Hour
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 5 * time.Minute
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
}

// MFAMode is login.mfa: when a second factor is asked.
type MFAMode string

// The login.mfa modes.
const (
	// MFAWhenRequired (the default) asks a second factor only when an app
	// requires it (require_mfa, require_phishing_resistant) or asks for it
	// (acr_values, an essential acr claim), by step-up inside the session.
	MFAWhenRequired MFAMode = "when_required"
	// MFAAlways also asks a person who has a factor for it at every sign-in.
	MFAAlways MFAMode = "always"
	// MFARequired also makes a person without a factor enroll one at the
	// next sign-in, before reaching any app.
	MFARequired MFAMode = "required"
)

// MFAModes are the login.mfa values.
var MFAModes = []MFAMode{MFAWhenRequired, MFAAlways, MFARequired}

// MFAConfig configures second factors.
type MFAConfig struct {
	Mode MFAMode
	// SecretKey (keys.secret_key, 32 bytes) seals TOTP secrets and keys
	// the hashes of recovery codes, so that a copy of the database alone
	// does not reveal them. Empty: secrets are stored as they are.
	SecretKey []byte
}

// LoginConfig tunes the defence against password guessing (the same rule
// for every store backend).
type LoginConfig = session.LoginPolicy
