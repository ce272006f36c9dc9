package session

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgreSQL twins of the second-factor methods in mfa.go (same contract,
// tested by the same storetest cases).

// SetTOTP enrolls (or replaces) a TOTP factor and its recovery codes.
func (p *Postgres) SetTOTP(ctx context.Context, f TOTPFactor, recoveryHashes []string, by string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO mfa_totp (user_id, secret, sealed, last_step, created_at) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, sealed = excluded.sealed, last_step = excluded.last_step,
			created_at = excluded.created_at`, f.UserID, f.Secret, f.Sealed, f.LastStep, ms(f.CreatedAt))
		if err != nil {
			return fmt.Errorf("set totp of %s: %w", f.UserID, err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM mfa_recovery_codes WHERE user_id = $1`, f.UserID); err != nil {
			return fmt.Errorf("replace recovery codes: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO mfa_recovery_codes (user_id, code_hash) SELECT $1, unnest($2::text[])`, f.UserID, recoveryHashes); err != nil {
			return fmt.Errorf("add recovery codes: %w", err)
		}
		return pgAudit(ctx, tx, totpEnrolledEvent(f, len(recoveryHashes), by))
	})
}

// TOTP returns the TOTP factor of userID, or ErrNotFound.
func (p *Postgres) TOTP(ctx context.Context, userID string) (*TOTPFactor, error) {
	if !storable(userID) {
		return nil, fmt.Errorf("totp of %s: %w", userID, ErrNotFound)
	}
	f := TOTPFactor{UserID: userID}
	var created int64
	err := p.pool.QueryRow(ctx, `SELECT secret, sealed, last_step, created_at FROM mfa_totp WHERE user_id = $1`, userID).
		Scan(&f.Secret, &f.Sealed, &f.LastStep, &created)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("totp of %s: %w", userID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("totp of %s: %w", userID, err)
	}
	f.CreatedAt = fromMS(created)
	return &f, nil
}

// UseTOTPStep records an accepted step, refusing a replay (compare-and-swap).
func (p *Postgres) UseTOTPStep(ctx context.Context, userID string, step int64) (bool, error) {
	tag, err := p.pool.Exec(ctx, `UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1`, step, userID)
	return tag.RowsAffected() == 1, err
}

// UseRecoveryCode spends an unused recovery code.
func (p *Postgres) UseRecoveryCode(ctx context.Context, userID, hash string, at time.Time) (bool, error) {
	if !storable(userID) {
		return false, nil
	}
	tag, err := p.pool.Exec(ctx, `UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL`,
		ms(at), userID, hash)
	return tag.RowsAffected() == 1, err
}

// AddWebAuthnCredential stores a new passkey; ErrConflict for a known id.
func (p *Postgres) AddWebAuthnCredential(ctx context.Context, c WebAuthnCredential, by string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO mfa_webauthn (id, user_id, name, data, sign_count, created_at) VALUES ($1, $2, $3, $4, $5, $6)`,
			c.ID, c.UserID, storableText(c.Name), c.Data, int64(c.SignCount), ms(c.CreatedAt))
		if pgUnique(err) {
			return fmt.Errorf("passkey of %s: %w", c.UserID, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("add passkey of %s: %w", c.UserID, err)
		}
		return pgAudit(ctx, tx, passkeyEnrolledEvent(c, by))
	})
}

// WebAuthnCredentials returns the passkeys of userID, oldest first.
func (p *Postgres) WebAuthnCredentials(ctx context.Context, userID string) ([]*WebAuthnCredential, error) {
	if !storable(userID) {
		return nil, nil
	}
	return pgQueryAll(ctx, p.pool, scanWebAuthn, `SELECT `+webauthnCols+` FROM mfa_webauthn WHERE user_id = $1 ORDER BY created_at, id`, userID)
}

// WebAuthnCredential returns the passkey with credential id, or ErrNotFound.
func (p *Postgres) WebAuthnCredential(ctx context.Context, id []byte) (*WebAuthnCredential, error) {
	c, err := scanWebAuthn(p.pool.QueryRow(ctx, `SELECT `+webauthnCols+` FROM mfa_webauthn WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("passkey: %w", err)
	}
	return c, nil
}

// UseWebAuthnCredential advances a passkey's signature counter.
func (p *Postgres) UseWebAuthnCredential(ctx context.Context, id []byte, signCount uint32, at time.Time) (bool, error) {
	n := int64(signCount)
	tag, err := p.pool.Exec(ctx, `UPDATE mfa_webauthn SET sign_count = $1, last_used_at = $2
		WHERE id = $3 AND (sign_count < $1 OR (sign_count = 0 AND $1 = 0))`, n, ms(at), id)
	return tag.RowsAffected() == 1, err
}

// DeleteWebAuthnCredential removes passkey id of userID.
func (p *Postgres) DeleteWebAuthnCredential(ctx context.Context, userID string, id []byte, at time.Time, by string) error {
	if !storable(userID) {
		return fmt.Errorf("passkey of %s: %w", userID, ErrNotFound)
	}
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM mfa_webauthn WHERE user_id = $1 AND id = $2`, userID, id)
		if err := pgAffect(tag, err, "passkey of "+userID); err != nil {
			return err
		}
		return pgAudit(ctx, tx, factorRemovedEvent(userID, "passkey", at, by))
	})
}

// ResetMFA removes every second factor of userID.
func (p *Postgres) ResetMFA(ctx context.Context, userID string, at time.Time, by string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		for _, table := range []string{"mfa_totp", "mfa_recovery_codes", "mfa_webauthn"} {
			if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE user_id = $1`, userID); err != nil {
				return fmt.Errorf("reset factors of %s: %w", userID, err)
			}
		}
		return pgAudit(ctx, tx, factorRemovedEvent(userID, "all", at, by))
	})
}

// Factors summarises the second factors of userID.
func (p *Postgres) Factors(ctx context.Context, userID string) (Factors, error) {
	var f Factors
	if !storable(userID) {
		return f, nil
	}
	err := p.pool.QueryRow(ctx, `SELECT
		EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $1),
		(SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL),
		(SELECT COUNT(*) FROM mfa_webauthn WHERE user_id = $1)`, userID).Scan(&f.TOTP, &f.RecoveryCodes, &f.Passkeys)
	if err != nil {
		return Factors{}, fmt.Errorf("factors of %s: %w", userID, err)
	}
	return f, nil
}

// PutCeremony keeps the state of a WebAuthn ceremony until expires.
func (p *Postgres) PutCeremony(ctx context.Context, id, userID string, data []byte, expires time.Time) error {
	_, err := p.pool.Exec(ctx, `INSERT INTO mfa_ceremonies (id, user_id, data, expires_at) VALUES ($1, $2, $3, $4)`, id, userID, data, ms(expires))
	if err != nil {
		return fmt.Errorf("put ceremony: %w", err)
	}
	return nil
}

// TakeCeremony returns and deletes an unexpired ceremony, once.
func (p *Postgres) TakeCeremony(ctx context.Context, id string, now time.Time) (string, []byte, error) {
	if !storable(id) {
		return "", nil, fmt.Errorf("ceremony: %w", ErrNotFound)
	}
	var userID string
	var data []byte
	var live bool
	err := p.pool.QueryRow(ctx, `DELETE FROM mfa_ceremonies WHERE id = $1 RETURNING user_id, data, expires_at > $2`, id, ms(now)).
		Scan(&userID, &data, &live)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !live) {
		return "", nil, fmt.Errorf("ceremony: %w", ErrNotFound)
	}
	if err != nil {
		return "", nil, fmt.Errorf("take ceremony: %w", err)
	}
	return userID, data, nil
}

// PurgeCeremonies drops ceremonies that expired before now.
func (p *Postgres) PurgeCeremonies(ctx context.Context, now time.Time) error {
	_, err := p.pool.Exec(ctx, `DELETE FROM mfa_ceremonies WHERE expires_at <= $1`, ms(now))
	return err
}

// RaiseAssurance records a step-up of a live session, on the change feed.
func (p *Postgres) RaiseAssurance(ctx context.Context, a *AuthSession, at time.Time, detail string) error {
	return p.tx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE auth_sessions SET amr = $1 WHERE id = $2 AND ended_at IS NULL`, strings.Join(a.AMR, " "), a.ID)
		if err := pgAffect(tag, err, "auth session "+a.ID); err != nil {
			return err
		}
		if err := pgAudit(ctx, tx, stepUpEvent(a, at, detail)); err != nil {
			return err
		}
		return addChanges(ctx, tx, []string{a.ID}, []int64{ms(at)}) // the transaction's last write (see changeFeedLock)
	})
}
