-- Second factors (issue 11). Secrets are sealed with keys.secret_key
-- (AES-256-GCM, bound to the user and the purpose) when it is set; sealed
-- says which, so that rows written before the key was set still open.

-- One TOTP factor per person (RFC 6238: SHA-1, 6 digits, 30 s). last_step
-- is the time step of the last code accepted: a code of that step or an
-- earlier one is refused, so a code works once, at every replica.
CREATE TABLE mfa_totp (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret     BLOB NOT NULL,
    sealed     INTEGER NOT NULL,
    last_step  INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Recovery codes, given once at TOTP enrollment: only keyed hashes are
-- kept, and each works once.
CREATE TABLE mfa_recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
) WITHOUT ROWID;

-- WebAuthn credentials (passkeys). sign_count is the authenticator's
-- counter as last seen; data is the rest of the credential (JSON) as the
-- WebAuthn library needs it.
CREATE TABLE mfa_webauthn (
    id           BLOB PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    data         BLOB NOT NULL,
    sign_count   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX mfa_webauthn_user ON mfa_webauthn (user_id);

-- Challenges of WebAuthn ceremonies between their two requests, kept where
-- every replica sees them, and taken (deleted) by the request that answers
-- them, so that an assertion can be answered once.
CREATE TABLE mfa_ceremonies (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL DEFAULT '',
    data       BLOB NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mfa_ceremonies_expiry ON mfa_ceremonies (expires_at);
