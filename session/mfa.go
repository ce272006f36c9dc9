package session

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Audit event kinds of second factors (issue 11).
const (
	AuditFactorUsed     = "mfa_used"     // a second factor was presented and accepted (Detail: which)
	AuditFactorFailed   = "mfa_failed"   // a second factor was presented and refused
	AuditStepUp         = "mfa_step_up"  // a live session's assurance rose (Detail: the new amr)
	AuditFactorEnrolled = "mfa_enrolled" // a factor was added or replaced
	AuditFactorRemoved  = "mfa_removed"  // a factor was removed (or every factor, by a reset)
)

// TOTPFactor is a person's TOTP secret as stored: sealed with the
// provider's secret key when Sealed, else plain.
type TOTPFactor struct {
	UserID    string
	Secret    []byte
	Sealed    bool
	LastStep  int64 // the time step of the last code accepted
	CreatedAt time.Time
}

// WebAuthnCredential is one passkey of a person. Data is the credential as
// the WebAuthn library keeps it (JSON); SignCount is kept apart so that it
// can be advanced atomically.
type WebAuthnCredential struct {
	ID         []byte
	UserID     string
	Name       string
	Data       []byte
	SignCount  uint32
	CreatedAt  time.Time
	LastUsedAt time.Time
}

// Factors summarises a person's second factors.
type Factors struct {
	TOTP          bool
	RecoveryCodes int // unused
	Passkeys      int
}

// Any reports whether the person has a second factor.
func (f Factors) Any() bool { return f.TOTP || f.Passkeys > 0 }

// String lists the factors for people ("totp (8 recovery codes), 2 passkeys").
func (f Factors) String() string {
	var parts []string
	if f.TOTP {
		parts = append(parts, fmt.Sprintf("totp (%d recovery codes)", f.RecoveryCodes))
	}
	switch {
	case f.Passkeys == 1:
		parts = append(parts, "1 passkey")
	case f.Passkeys > 1:
		parts = append(parts, fmt.Sprintf("%d passkeys", f.Passkeys))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// SetTOTP enrolls (or replaces) the TOTP factor of f.UserID together with
// its recovery codes (keyed hashes), in one transaction, with an audit event.
// lastStep is the step of the code that confirmed the enrollment (0 when
// none did), so that code cannot be used again to sign in.
func (s *SQLite) SetTOTP(ctx context.Context, f TOTPFactor, recoveryHashes []string, by string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO mfa_totp (user_id, secret, sealed, last_step, created_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, sealed = excluded.sealed, last_step = excluded.last_step,
			created_at = excluded.created_at`, f.UserID, f.Secret, f.Sealed, f.LastStep, ms(f.CreatedAt))
		if err != nil {
			return fmt.Errorf("set totp of %s: %w", f.UserID, err)
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM mfa_recovery_codes WHERE user_id = ?`, f.UserID); err != nil {
			return fmt.Errorf("replace recovery codes: %w", err)
		}
		for _, h := range recoveryHashes {
			if _, err := tx.ExecContext(ctx, `INSERT INTO mfa_recovery_codes (user_id, code_hash) VALUES (?, ?)`, f.UserID, h); err != nil {
				return fmt.Errorf("add recovery code: %w", err)
			}
		}
		return addAudit(ctx, auditVia{tx}, totpEnrolledEvent(f, len(recoveryHashes), by))
	})
}

// TOTP returns the TOTP factor of userID, or ErrNotFound.
func (s *SQLite) TOTP(ctx context.Context, userID string) (*TOTPFactor, error) {
	f := TOTPFactor{UserID: userID}
	var created int64
	err := s.r.QueryRowContext(ctx, `SELECT secret, sealed, last_step, created_at FROM mfa_totp WHERE user_id = ?`, userID).
		Scan(&f.Secret, &f.Sealed, &f.LastStep, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("totp of %s: %w", userID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("totp of %s: %w", userID, err)
	}
	f.CreatedAt = fromMS(created)
	return &f, nil
}

// UseTOTPStep records that a code of time step step was accepted for
// userID, and reports false when a code of that step or a later one was
// accepted before (a replay): a compare-and-swap, so that of two replicas
// given the same code at once exactly one accepts it.
func (s *SQLite) UseTOTPStep(ctx context.Context, userID string, step int64) (bool, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE mfa_totp SET last_step = ? WHERE user_id = ? AND last_step < ?`, step, userID, step)
	return affected(res, err)
}

// UseRecoveryCode spends the recovery code of userID whose keyed hash is
// hash, and reports false when there is no such unused code.
func (s *SQLite) UseRecoveryCode(ctx context.Context, userID, hash string, at time.Time) (bool, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE mfa_recovery_codes SET used_at = ? WHERE user_id = ? AND code_hash = ? AND used_at IS NULL`,
		ms(at), userID, hash)
	return affected(res, err)
}

// AddWebAuthnCredential stores a newly registered passkey, with an audit
// event; ErrConflict when the credential id is already registered.
func (s *SQLite) AddWebAuthnCredential(ctx context.Context, c WebAuthnCredential, by string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO mfa_webauthn (id, user_id, name, data, sign_count, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
			c.ID, c.UserID, c.Name, c.Data, c.SignCount, ms(c.CreatedAt))
		if isUnique(err) {
			return fmt.Errorf("passkey of %s: %w", c.UserID, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("add passkey of %s: %w", c.UserID, err)
		}
		return addAudit(ctx, auditVia{tx}, passkeyEnrolledEvent(c, by))
	})
}

const webauthnCols = `id, user_id, name, data, sign_count, created_at, last_used_at`

func scanWebAuthn(row scanner) (*WebAuthnCredential, error) {
	var c WebAuthnCredential
	var created, count int64
	var used sql.NullInt64
	if err := row.Scan(&c.ID, &c.UserID, &c.Name, &c.Data, &count, &created, &used); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	c.SignCount, c.CreatedAt, c.LastUsedAt = uint32(count), fromMS(created), fromNullMS(used)
	return &c, nil
}

// WebAuthnCredentials returns the passkeys of userID, oldest first.
func (s *SQLite) WebAuthnCredentials(ctx context.Context, userID string) ([]*WebAuthnCredential, error) {
	return queryAll(ctx, s.r, scanWebAuthn, `SELECT `+webauthnCols+` FROM mfa_webauthn WHERE user_id = ? ORDER BY created_at, id`, userID)
}

// WebAuthnCredential returns the passkey with credential id, or ErrNotFound.
func (s *SQLite) WebAuthnCredential(ctx context.Context, id []byte) (*WebAuthnCredential, error) {
	c, err := scanWebAuthn(s.r.QueryRowContext(ctx, `SELECT `+webauthnCols+` FROM mfa_webauthn WHERE id = ?`, id))
	if err != nil {
		return nil, fmt.Errorf("passkey: %w", err)
	}
	return c, nil
}

// UseWebAuthnCredential records a use of passkey id whose authenticator
// counted signCount, and reports false when the stored counter is not
// below it (a cloned authenticator, or a replay). Authenticators that keep
// no counter (signCount 0, both times) always pass: for them the
// single-use challenge is the replay defence.
func (s *SQLite) UseWebAuthnCredential(ctx context.Context, id []byte, signCount uint32, at time.Time) (bool, error) {
	res, err := s.w.ExecContext(ctx, `UPDATE mfa_webauthn SET sign_count = ?, last_used_at = ?
		WHERE id = ? AND (sign_count < ? OR (sign_count = 0 AND ? = 0))`, signCount, ms(at), id, signCount, signCount)
	return affected(res, err)
}

// DeleteWebAuthnCredential removes passkey id of userID, with an audit event.
func (s *SQLite) DeleteWebAuthnCredential(ctx context.Context, userID string, id []byte, at time.Time, by string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM mfa_webauthn WHERE user_id = ? AND id = ?`, userID, id)
		if err := mustAffect(res, err, "passkey of "+userID); err != nil {
			return err
		}
		return addAudit(ctx, auditVia{tx}, factorRemovedEvent(userID, "passkey", at, by))
	})
}

// ResetMFA removes every second factor of userID, with an audit event.
func (s *SQLite) ResetMFA(ctx context.Context, userID string, at time.Time, by string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, table := range []string{"mfa_totp", "mfa_recovery_codes", "mfa_webauthn"} {
			if _, err := tx.ExecContext(ctx, `DELETE FROM `+table+` WHERE user_id = ?`, userID); err != nil {
				return fmt.Errorf("reset factors of %s: %w", userID, err)
			}
		}
		return addAudit(ctx, auditVia{tx}, factorRemovedEvent(userID, "all", at, by))
	})
}

// Factors summarises the second factors of userID.
func (s *SQLite) Factors(ctx context.Context, userID string) (Factors, error) {
	var f Factors
	err := s.r.QueryRowContext(ctx, `SELECT
		EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = ?1),
		(SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = ?1 AND used_at IS NULL),
		(SELECT COUNT(*) FROM mfa_webauthn WHERE user_id = ?1)`, userID).Scan(&f.TOTP, &f.RecoveryCodes, &f.Passkeys)
	if err != nil {
		return Factors{}, fmt.Errorf("factors of %s: %w", userID, err)
	}
	return f, nil
}

// PutCeremony keeps the state of a WebAuthn ceremony until expires.
func (s *SQLite) PutCeremony(ctx context.Context, id, userID string, data []byte, expires time.Time) error {
	_, err := s.w.ExecContext(ctx, `INSERT INTO mfa_ceremonies (id, user_id, data, expires_at) VALUES (?, ?, ?, ?)`, id, userID, data, ms(expires))
	if err != nil {
		return fmt.Errorf("put ceremony: %w", err)
	}
	return nil
}

// TakeCeremony returns and deletes the ceremony id if it has not expired
// at now; ErrNotFound otherwise. A ceremony can be taken once.
func (s *SQLite) TakeCeremony(ctx context.Context, id string, now time.Time) (string, []byte, error) {
	var userID string
	var data []byte
	var live bool
	err := s.w.QueryRowContext(ctx, `DELETE FROM mfa_ceremonies WHERE id = ? RETURNING user_id, data, expires_at > ?`, id, ms(now)).
		Scan(&userID, &data, &live)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !live) {
		return "", nil, fmt.Errorf("ceremony: %w", ErrNotFound)
	}
	if err != nil {
		return "", nil, fmt.Errorf("take ceremony: %w", err)
	}
	return userID, data, nil
}

// PurgeCeremonies drops ceremonies that expired before now.
func (s *SQLite) PurgeCeremonies(ctx context.Context, now time.Time) error {
	_, err := s.w.ExecContext(ctx, `DELETE FROM mfa_ceremonies WHERE expires_at <= ?`, ms(now))
	return err
}

// RaiseAssurance records a step-up of live session a: its amr becomes
// a.AMR (auth_time stays that of the sign-in), with a change feed row, so
// that every replica reloads it, and an audit event, in one transaction.
func (s *SQLite) RaiseAssurance(ctx context.Context, a *AuthSession, at time.Time, detail string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE auth_sessions SET amr = ? WHERE id = ? AND ended_at IS NULL`, strings.Join(a.AMR, " "), a.ID)
		if err := mustAffect(res, err, "auth session "+a.ID); err != nil {
			return err
		}
		if err := addChange(ctx, tx, a.ID, at); err != nil {
			return err
		}
		return addAudit(ctx, auditVia{tx}, stepUpEvent(a, at, detail))
	})
}
