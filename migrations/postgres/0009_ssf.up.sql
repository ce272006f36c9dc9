-- PostgreSQL twin of ../0010_ssf.up.sql: Shared Signals (SSF 1.0) streams
-- of resource servers, and the Security Event Tokens queued on them.
CREATE TABLE ssf_streams (
    id                       TEXT PRIMARY KEY,
    receiver                 TEXT NOT NULL,
    method                   TEXT NOT NULL,
    endpoint_url             TEXT NOT NULL DEFAULT '',
    authorization_header     TEXT NOT NULL DEFAULT '',
    events_requested         TEXT NOT NULL DEFAULT '',
    description              TEXT NOT NULL DEFAULT '',
    delivers_session_revoked BOOLEAN NOT NULL DEFAULT false,
    status                   TEXT NOT NULL DEFAULT 'enabled',
    status_reason            TEXT NOT NULL DEFAULT '',
    created_at               BIGINT NOT NULL,
    verified_at              BIGINT
);
CREATE INDEX ssf_streams_receiver ON ssf_streams (receiver);

-- One row per event per stream, written in the same transaction as the end
-- (or verification request) it announces, deleted when acknowledged (poll)
-- or accepted (push). Claims work as the logout outbox's, with FOR UPDATE
-- SKIP LOCKED.
CREATE TABLE ssf_events (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       TEXT NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    receiver        TEXT NOT NULL,
    jti             TEXT NOT NULL UNIQUE,
    txn             TEXT NOT NULL DEFAULT '',
    event           TEXT NOT NULL,
    sid             TEXT NOT NULL DEFAULT '',
    subject         TEXT NOT NULL DEFAULT '',
    client_id       TEXT NOT NULL DEFAULT '',
    reason          TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL DEFAULT '',
    at              BIGINT NOT NULL,
    push_uri        TEXT NOT NULL DEFAULT '',
    next_attempt_at BIGINT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    claimed_by      TEXT,
    claimed_until   BIGINT
);
CREATE INDEX ssf_events_stream ON ssf_events (stream_id, id);
CREATE INDEX ssf_events_push_due ON ssf_events (next_attempt_at) WHERE push_uri <> '';
CREATE INDEX ssf_events_age ON ssf_events (at);
