-- PostgreSQL twin of ../0008_mfa.up.sql: second factors (issue 11).

CREATE TABLE mfa_totp (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret     BYTEA NOT NULL,
    sealed     BOOLEAN NOT NULL,
    last_step  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

CREATE TABLE mfa_webauthn (
    id           BYTEA PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL DEFAULT '',
    data         BYTEA NOT NULL,
    sign_count   BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX mfa_webauthn_user ON mfa_webauthn (user_id);

CREATE TABLE mfa_ceremonies (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL DEFAULT '',
    data       BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX mfa_ceremonies_expiry ON mfa_ceremonies (expires_at);
