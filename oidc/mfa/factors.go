package mfa

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/idleguard/idleguard/session"
)

// Store keeps second factors (session.SQLite; the PostgreSQL backend too).
type Store interface {
	SetTOTP(ctx context.Context, f session.TOTPFactor, recoveryHashes []string, by string) error
	TOTP(ctx context.Context, userID string) (*session.TOTPFactor, error)
	UseTOTPStep(ctx context.Context, userID string, step int64) (bool, error)
	UseRecoveryCode(ctx context.Context, userID, hash string, at time.Time) (bool, error)
	Factors(ctx context.Context, userID string) (session.Factors, error)
	ResetMFA(ctx context.Context, userID string, at time.Time, by string) error
	Secret(ctx context.Context, name string, gen func() []byte) ([]byte, error)
}

// Factors enrolls and checks TOTP and recovery codes.
type Factors struct {
	store  Store
	sealer *Sealer
	// recoveryKey keys the hashes of recovery codes: derived from the
	// secret key when there is one, else a key kept in the database.
	recoveryKey []byte
	issuer      string // the name authenticator apps show
	now         func() time.Time
}

// NewFactors returns the factor service. secretKey is keys.secret_key (32
// bytes) or empty; issuer names the provider in authenticator apps.
func NewFactors(ctx context.Context, store Store, secretKey []byte, issuer string, now func() time.Time) (*Factors, error) {
	sealer, err := NewSealer(secretKey)
	if err != nil {
		return nil, err
	}
	f := &Factors{store: store, sealer: sealer, issuer: issuer, now: now}
	if sealer != nil {
		m := hmac.New(sha256.New, secretKey)
		m.Write([]byte("idleguard recovery codes"))
		f.recoveryKey = m.Sum(nil)
	} else if f.recoveryKey, err = store.Secret(ctx, "recovery_code_mac", func() []byte {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		return b
	}); err != nil {
		return nil, err
	}
	return f, nil
}

func totpAAD(userID string) string { return "totp|" + userID }

// Enrollment is a TOTP factor being enrolled: its secret and the URI an
// authenticator app reads from the QR code.
type Enrollment struct {
	Secret string
	URI    string
}

// NewEnrollment returns a fresh TOTP secret for account (the username).
func (f *Factors) NewEnrollment(account string) (Enrollment, error) {
	secret, uri, err := NewTOTP(f.issuer, account)
	return Enrollment{Secret: secret, URI: uri}, err
}

// EnrollmentURI is the otpauth URI of a pending enrollment's secret.
func (f *Factors) EnrollmentURI(account, secret string) (string, error) {
	return TOTPURI(f.issuer, account, secret)
}

// Enroll stores secret as userID's TOTP factor, replacing any, with fresh
// recovery codes, which it returns (the only time they are seen). step is
// the time step of the code that confirmed the enrollment (refused from
// then on), or 0.
func (f *Factors) Enroll(ctx context.Context, userID, secret string, step int64, by string) ([]string, error) {
	stored, sealed := f.sealer.Seal([]byte(secret), totpAAD(userID))
	codes := NewRecoveryCodes()
	hashes := make([]string, len(codes))
	for i, c := range codes {
		hashes[i] = HashRecoveryCode(f.recoveryKey, userID, c)
	}
	err := f.store.SetTOTP(ctx, session.TOTPFactor{UserID: userID, Secret: stored, Sealed: sealed, LastStep: step, CreatedAt: f.now()}, hashes, by)
	if err != nil {
		return nil, err
	}
	return codes, nil
}

// Confirm checks code against a pending enrollment's secret and returns
// its time step.
func (f *Factors) Confirm(secret, code string) (int64, bool) {
	return MatchTOTP(secret, code, f.now())
}

// Errors of a code check; the HTTP edge words them for people.
var (
	ErrMalformedCode = errors.New("not a six-digit code or a recovery code")
	ErrWrongCode     = errors.New("wrong code")
	ErrReplayedCode  = errors.New("code already used")
)

// CheckCode checks a code typed by userID: a TOTP code (within one step of
// drift, never one of a step already used) or an unused recovery code,
// which it spends. It returns which kind was accepted ("totp" or
// "recovery"), or ErrMalformedCode, ErrWrongCode, ErrReplayedCode.
func (f *Factors) CheckCode(ctx context.Context, userID, code string) (string, error) {
	switch {
	case WellFormedCode(code):
		return "totp", f.checkTOTP(ctx, userID, code)
	case LooksLikeRecoveryCode(code):
		ok, err := f.store.UseRecoveryCode(ctx, userID, HashRecoveryCode(f.recoveryKey, userID, code), f.now())
		if err != nil {
			return "", err
		}
		if !ok {
			return "recovery", ErrWrongCode
		}
		return "recovery", nil
	}
	return "", ErrMalformedCode
}

func (f *Factors) checkTOTP(ctx context.Context, userID, code string) error {
	t, err := f.store.TOTP(ctx, userID)
	if errors.Is(err, session.ErrNotFound) {
		return ErrWrongCode
	}
	if err != nil {
		return err
	}
	secret, err := f.sealer.Open(t.Secret, t.Sealed, totpAAD(userID))
	if err != nil {
		return fmt.Errorf("totp of %s: %w", userID, err)
	}
	step, ok := MatchTOTP(string(secret), code, f.now())
	if !ok {
		return ErrWrongCode
	}
	if step <= t.LastStep {
		return ErrReplayedCode
	}
	fresh, err := f.store.UseTOTPStep(ctx, userID, step)
	if err != nil {
		return err
	}
	if !fresh {
		return ErrReplayedCode
	}
	return nil
}

// Reset removes every second factor of userID.
func (f *Factors) Reset(ctx context.Context, userID, by string) error {
	return f.store.ResetMFA(ctx, userID, f.now(), by)
}

// Of summarises userID's factors.
func (f *Factors) Of(ctx context.Context, userID string) (session.Factors, error) {
	return f.store.Factors(ctx, userID)
}

// IssuerLabel is the name authenticator apps show for the provider: the
// host of its issuer URL.
func IssuerLabel(issuer string) string {
	if u, err := url.Parse(issuer); err == nil && u.Hostname() != "" {
		return u.Hostname()
	}
	return issuer
}
