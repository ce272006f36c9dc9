-- PostgreSQL twin of ../0001_initial.up.sql: the same tables, columns and
-- indexes. Times stay Unix milliseconds (BIGINT) by the provider's clock, as
-- in SQLite, so both backends share their row scanners; flags are BOOLEAN,
-- keys and secrets BYTEA, generated ids IDENTITY.

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    email          TEXT NOT NULL DEFAULT '',
    email_verified BOOLEAN NOT NULL DEFAULT false,
    created_at     BIGINT NOT NULL
);

-- deadline = min(last_active_at + idle_limit_ms, absolute_deadline); the
-- sweeper reads only the partial index of live sessions.
CREATE TABLE auth_sessions (
    id                TEXT PRIMARY KEY,
    user_id           TEXT NOT NULL,
    auth_time         BIGINT NOT NULL,
    amr               TEXT NOT NULL DEFAULT '',
    last_active_at    BIGINT NOT NULL,
    idle_limit_ms     BIGINT NOT NULL,
    absolute_deadline BIGINT NOT NULL,
    deadline          BIGINT NOT NULL,
    ended_at          BIGINT,
    end_reason        TEXT,
    ended_by          TEXT
);
CREATE INDEX auth_sessions_live_deadline ON auth_sessions (deadline) WHERE ended_at IS NULL;
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

CREATE TABLE app_sessions (
    id              TEXT PRIMARY KEY,
    auth_session_id TEXT NOT NULL REFERENCES auth_sessions (id),
    client_id       TEXT NOT NULL,
    scopes          TEXT NOT NULL DEFAULT '',
    idle_exempt     BOOLEAN NOT NULL DEFAULT false,
    joined_at       BIGINT NOT NULL,
    last_active_at  BIGINT NOT NULL,
    deadline        BIGINT,
    ended_at        BIGINT,
    end_reason      TEXT
);
CREATE INDEX app_sessions_live_deadline ON app_sessions (deadline) WHERE ended_at IS NULL AND deadline IS NOT NULL;
CREATE UNIQUE INDEX app_sessions_live_pair ON app_sessions (auth_session_id, client_id) WHERE ended_at IS NULL;
CREATE INDEX app_sessions_auth_session ON app_sessions (auth_session_id);

CREATE TABLE refresh_chains (
    id             TEXT PRIMARY KEY,
    app_session_id TEXT NOT NULL REFERENCES app_sessions (id),
    gen            BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX refresh_chains_app ON refresh_chains (app_session_id);

CREATE TABLE revoked_tokens (
    token_id   TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

CREATE TABLE auth_requests (
    id         TEXT PRIMARY KEY,
    data       TEXT NOT NULL,
    code_hash  TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX auth_requests_expiry ON auth_requests (expires_at);

-- seq orders keys created in the same millisecond (SQLite uses its rowid).
CREATE TABLE signing_keys (
    id          TEXT PRIMARY KEY,
    algorithm   TEXT NOT NULL,
    private_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    retire_at   BIGINT,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY
);

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE logout_outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    jti             TEXT NOT NULL UNIQUE,
    client_id       TEXT NOT NULL,
    uri             TEXT NOT NULL,
    sid             TEXT NOT NULL,
    subject         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    delivered_at    BIGINT,
    abandoned_at    BIGINT
);
CREATE INDEX logout_outbox_due ON logout_outbox (next_attempt_at) WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE TABLE audit_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        BIGINT NOT NULL,
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
