-- Times are Unix milliseconds (INTEGER), by the provider's clock.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    email          TEXT NOT NULL DEFAULT '',
    email_verified INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);

-- Authentication (SSO) sessions. deadline = min(last_active_at + idle_limit_ms,
-- absolute_deadline); the persisted value may lag the in-memory one by the flush
-- slack, but never exceeds it, so the sweeper's index scan never misses an end.
CREATE TABLE auth_sessions (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    auth_time         INTEGER NOT NULL,
    amr               TEXT NOT NULL DEFAULT '',
    last_active_at    INTEGER NOT NULL,
    idle_limit_ms     INTEGER NOT NULL,
    absolute_deadline INTEGER NOT NULL,
    deadline          INTEGER NOT NULL,
    ended_at          INTEGER,
    end_reason        TEXT,
    ended_by          TEXT
);
CREATE INDEX auth_sessions_live_deadline ON auth_sessions (deadline) WHERE ended_at IS NULL;
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

-- Application sessions: one live row per (auth session, client). Every token
-- belongs to exactly one; ending the row revokes its refresh and access tokens.
-- deadline is set only for rows that can end on their own (exempt clients and
-- clients with app_idle_timeout).
CREATE TABLE app_sessions (
    id              TEXT PRIMARY KEY,
    auth_session_id TEXT NOT NULL REFERENCES auth_sessions (id),
    client_id       TEXT NOT NULL,
    scopes          TEXT NOT NULL DEFAULT '',
    idle_exempt     INTEGER NOT NULL DEFAULT 0,
    joined_at       INTEGER NOT NULL,
    last_active_at  INTEGER NOT NULL,
    deadline        INTEGER,
    ended_at        INTEGER,
    end_reason      TEXT
);
CREATE INDEX app_sessions_live_deadline ON app_sessions (deadline) WHERE ended_at IS NULL AND deadline IS NOT NULL;
CREATE UNIQUE INDEX app_sessions_live_pair ON app_sessions (auth_session_id, client_id) WHERE ended_at IS NULL;
CREATE INDEX app_sessions_auth_session ON app_sessions (auth_session_id);

-- Refresh token chains: one per code exchange, each rotated on every use.
-- Tokens themselves are never stored: a refresh token is the MAC of
-- (app session, chain, generation), and only the current generation of each
-- chain is kept (flushed with activity). Ending the application session
-- ends every chain.
CREATE TABLE refresh_chains (
    id             TEXT PRIMARY KEY,
    app_session_id TEXT NOT NULL REFERENCES app_sessions (id),
    gen            INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX refresh_chains_app ON refresh_chains (app_session_id);

-- Access tokens revoked one by one (RFC 7009). Tokens of ended application
-- sessions need no row: the session's end revokes them.
CREATE TABLE revoked_tokens (
    token_id   TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

-- Authorization requests between /authorize and the code exchange.
CREATE TABLE auth_requests (
    id         TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    code_hash  TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX auth_requests_expiry ON auth_requests (expires_at);

-- Signing keys. The newest is used to sign; older ones stay in the JWKS until
-- retire_at.
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    private_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER
);

-- Named secrets generated on first start (cookie keys, token MAC keys).
CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- Back-channel logout outbox, written in the same transaction as the end it
-- announces. jti is fixed at write time so a repeated delivery is recognisable.
CREATE TABLE logout_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    jti             TEXT NOT NULL UNIQUE,
    client_id       TEXT NOT NULL,
    uri             TEXT NOT NULL,
    sid             TEXT NOT NULL,
    subject         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    delivered_at    INTEGER,
    abandoned_at    INTEGER
);
CREATE INDEX logout_outbox_due ON logout_outbox (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE TABLE audit_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    user_id   TEXT NOT NULL DEFAULT '',
    sid       TEXT NOT NULL DEFAULT '',
    client_id TEXT NOT NULL DEFAULT '',
    reason    TEXT NOT NULL DEFAULT '',
    initiator TEXT NOT NULL DEFAULT '',
    detail    TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_sid ON audit_events (sid, at);
CREATE INDEX audit_events_user ON audit_events (user_id, at);
