package mfa

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"time"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/idleguard/idleguard/session"
)

// PasskeyStore keeps passkeys and the ceremonies between their two requests.
type PasskeyStore interface {
	AddWebAuthnCredential(ctx context.Context, c session.WebAuthnCredential, by string) error
	WebAuthnCredentials(ctx context.Context, userID string) ([]*session.WebAuthnCredential, error)
	WebAuthnCredential(ctx context.Context, id []byte) (*session.WebAuthnCredential, error)
	UseWebAuthnCredential(ctx context.Context, id []byte, signCount uint32, at time.Time) (bool, error)
	PutCeremony(ctx context.Context, id, userID string, data []byte, expires time.Time) error
	TakeCeremony(ctx context.Context, id string, now time.Time) (string, []byte, error)
	UserByID(ctx context.Context, id string) (*session.User, error)
}

// ErrPasskeysNeedDomain: WebAuthn binds a passkey to a domain name, so an
// issuer whose host is an IP address cannot offer passkeys.
var ErrPasskeysNeedDomain = errors.New("passkeys need an issuer whose host is a domain name (localhost included), not an IP address")

// Errors of a ceremony; the HTTP edge words them for people.
var (
	ErrCeremonyExpired = errors.New("the passkey request expired or was already answered")
	ErrPasskeyRefused  = errors.New("the passkey's answer does not verify")
	ErrPasskeyUnknown  = errors.New("this passkey is not registered here")
	ErrPasskeyReplayed = errors.New("the passkey's signature counter went backwards")
)

// CeremonyTTL is how long a passkey prompt may stay open.
const CeremonyTTL = 5 * time.Minute

// MaxResponseSize bounds a browser's answer to a ceremony (an attestation
// with certificates is a few kilobytes).
const MaxResponseSize = 16 << 10

// Passkeys runs WebAuthn ceremonies (github.com/go-webauthn/webauthn) for
// the relying party named by the issuer: its id is the issuer's host, its
// only origin the issuer's origin. Every ceremony's challenge is kept in
// the store and taken by the answer, so an answer counts once, at any
// replica.
type Passkeys struct {
	wa    *webauthn.WebAuthn
	store PasskeyStore
	now   func() time.Time
}

// NewPasskeys returns the passkey service for issuer, or
// ErrPasskeysNeedDomain.
func NewPasskeys(issuer string, store PasskeyStore, now func() time.Time) (*Passkeys, error) {
	u, err := url.Parse(issuer)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("issuer %q: %w", issuer, ErrPasskeysNeedDomain)
	}
	if _, err := netip.ParseAddr(u.Hostname()); err == nil {
		return nil, fmt.Errorf("issuer %q: %w", issuer, ErrPasskeysNeedDomain)
	}
	wa, err := webauthn.New(&webauthn.Config{RPID: u.Hostname(), RPDisplayName: u.Hostname(),
		RPOrigins: []string{u.Scheme + "://" + u.Host}})
	if err != nil {
		return nil, fmt.Errorf("webauthn: %w", err)
	}
	return &Passkeys{wa: wa, store: store, now: now}, nil
}

// account adapts a person and their passkeys to the library.
type account struct {
	user  *session.User
	creds []webauthn.Credential
}

func (a *account) WebAuthnID() []byte                         { return []byte(a.user.ID) }
func (a *account) WebAuthnName() string                       { return a.user.Username }
func (a *account) WebAuthnDisplayName() string                { return cmp.Or(a.user.Name, a.user.Username) }
func (a *account) WebAuthnCredentials() []webauthn.Credential { return a.creds }

func (k *Passkeys) account(ctx context.Context, userID string) (*account, error) {
	u, err := k.store.UserByID(ctx, userID)
	if err != nil {
		return nil, err
	}
	stored, err := k.store.WebAuthnCredentials(ctx, userID)
	if err != nil {
		return nil, err
	}
	a := &account{user: u}
	for _, s := range stored {
		var c webauthn.Credential
		if err := json.Unmarshal(s.Data, &c); err != nil {
			return nil, fmt.Errorf("passkey of %s: %w", userID, err)
		}
		c.Authenticator.SignCount = s.SignCount
		a.creds = append(a.creds, c)
	}
	return a, nil
}

// Ceremony is what the browser needs to run one: its id (sent back with
// the answer) and the options for navigator.credentials.
type Ceremony struct {
	ID      string `json:"ceremony"`
	Options any    `json:"options"`
}

func (k *Passkeys) keep(ctx context.Context, userID string, sd *webauthn.SessionData, options any) (Ceremony, error) {
	data, err := json.Marshal(sd)
	if err != nil {
		return Ceremony{}, err
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	if err := k.store.PutCeremony(ctx, id, userID, data, k.now().Add(CeremonyTTL)); err != nil {
		return Ceremony{}, err
	}
	return Ceremony{ID: id, Options: options}, nil
}

// take returns the ceremony id once; it must have been started for userID
// ("" for a passwordless sign-in, which names nobody).
func (k *Passkeys) take(ctx context.Context, id, userID string) (webauthn.SessionData, error) {
	var sd webauthn.SessionData
	owner, data, err := k.store.TakeCeremony(ctx, id, k.now())
	if errors.Is(err, session.ErrNotFound) || (err == nil && owner != userID) {
		return sd, ErrCeremonyExpired
	}
	if err != nil {
		return sd, err
	}
	return sd, json.Unmarshal(data, &sd)
}

// BeginRegistration starts the registration of a discoverable, user-verified
// passkey for userID (its existing ones excluded).
func (k *Passkeys) BeginRegistration(ctx context.Context, userID string) (Ceremony, error) {
	a, err := k.account(ctx, userID)
	if err != nil {
		return Ceremony{}, err
	}
	exclude := make([]protocol.CredentialDescriptor, len(a.creds))
	for i, c := range a.creds {
		exclude[i] = c.Descriptor()
	}
	opts, sd, err := k.wa.BeginRegistration(a, webauthn.WithExclusions(exclude),
		webauthn.WithAuthenticatorSelection(protocol.AuthenticatorSelection{
			ResidentKey: protocol.ResidentKeyRequirementRequired, RequireResidentKey: protocol.ResidentKeyRequired(),
			UserVerification: protocol.VerificationRequired}))
	if err != nil {
		return Ceremony{}, fmt.Errorf("begin passkey registration: %w", err)
	}
	return k.keep(ctx, userID, sd, opts)
}

// FinishRegistration checks the browser's answer to registration ceremony
// id of userID and stores the new passkey under name.
func (k *Passkeys) FinishRegistration(ctx context.Context, userID, id, name string, response []byte) (string, error) {
	if len(response) > MaxResponseSize {
		return "", fmt.Errorf("%w: the answer is larger than %d bytes", ErrPasskeyRefused, MaxResponseSize)
	}
	sd, err := k.take(ctx, id, userID)
	if err != nil {
		return "", err
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(response)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrPasskeyRefused, err)
	}
	a, err := k.account(ctx, userID)
	if err != nil {
		return "", err
	}
	cred, err := k.wa.CreateCredential(a, sd, parsed)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrPasskeyRefused, err)
	}
	data, err := json.Marshal(cred)
	if err != nil {
		return "", err
	}
	err = k.store.AddWebAuthnCredential(ctx, session.WebAuthnCredential{ID: cred.ID, UserID: userID, Name: name, Data: data,
		SignCount: cred.Authenticator.SignCount, CreatedAt: k.now()}, "user")
	if errors.Is(err, session.ErrConflict) {
		return "", fmt.Errorf("%w: this passkey is already registered", ErrPasskeyRefused)
	}
	return methodOf(cred), err
}

// methodOf is the amr of a passkey: swk when it may leave its device
// (backup eligible: a synced passkey), else hwk.
func methodOf(c *webauthn.Credential) string {
	if c.Flags.BackupEligible {
		return AMRSoftware
	}
	return AMRHardware
}

// BeginLogin starts an assertion by one of userID's passkeys (a second
// factor), or, for userID "", by any discoverable passkey (a sign-in
// without password or username).
func (k *Passkeys) BeginLogin(ctx context.Context, userID string) (Ceremony, error) {
	uv := webauthn.WithUserVerification(protocol.VerificationRequired)
	if userID == "" {
		opts, sd, err := k.wa.BeginDiscoverableLogin(uv)
		if err != nil {
			return Ceremony{}, fmt.Errorf("begin passkey sign-in: %w", err)
		}
		return k.keep(ctx, "", sd, opts)
	}
	a, err := k.account(ctx, userID)
	if err != nil {
		return Ceremony{}, err
	}
	opts, sd, err := k.wa.BeginLogin(a, uv)
	if err != nil {
		return Ceremony{}, fmt.Errorf("begin passkey assertion: %w", err)
	}
	return k.keep(ctx, userID, sd, opts)
}

// FinishLogin checks the answer to assertion ceremony id (started for
// userID, "" for a passwordless one) and returns the person it proves and
// the amr method of the passkey used. The signature counter must move
// forward (unless the authenticator keeps none).
func (k *Passkeys) FinishLogin(ctx context.Context, userID, id string, response []byte) (string, string, error) {
	if len(response) > MaxResponseSize {
		return "", "", fmt.Errorf("%w: the answer is larger than %d bytes", ErrPasskeyRefused, MaxResponseSize)
	}
	sd, err := k.take(ctx, id, userID)
	if err != nil {
		return "", "", err
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(response)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrPasskeyRefused, err)
	}
	var a *account
	if userID == "" {
		var handlerErr error
		owner, found := "", false
		_, cred, err := k.wa.ValidatePasskeyLogin(func(rawID, userHandle []byte) (webauthn.User, error) {
			stored, err := k.store.WebAuthnCredential(ctx, rawID)
			if err != nil || !bytes.Equal([]byte(stored.UserID), userHandle) {
				handlerErr = ErrPasskeyUnknown
				return nil, ErrPasskeyUnknown
			}
			owner, found = stored.UserID, true
			a, handlerErr = k.account(ctx, owner)
			if handlerErr != nil {
				return nil, handlerErr
			}
			return a, nil
		}, sd, parsed)
		if handlerErr != nil {
			return "", "", handlerErr
		}
		if err != nil || !found {
			return "", "", fmt.Errorf("%w: %v", ErrPasskeyRefused, err)
		}
		return owner, methodOf(cred), k.counted(ctx, cred)
	}
	if a, err = k.account(ctx, userID); err != nil {
		return "", "", err
	}
	cred, err := k.wa.ValidateLogin(a, sd, parsed)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrPasskeyRefused, err)
	}
	return userID, methodOf(cred), k.counted(ctx, cred)
}

// counted records the use of cred with its new signature counter.
func (k *Passkeys) counted(ctx context.Context, cred *webauthn.Credential) error {
	ok, err := k.store.UseWebAuthnCredential(ctx, cred.ID, cred.Authenticator.SignCount, k.now())
	if err != nil {
		return err
	}
	if !ok || cred.Authenticator.CloneWarning {
		return ErrPasskeyReplayed
	}
	return nil
}
