-- Shared Signals (SSF 1.0): streams of resource servers, and the Security
-- Event Tokens queued on them.
--
-- A stream belongs to one receiver (a client with resource_server: true).
-- delivers_session_revoked says whether its events_delivered holds CAEP's
-- session-revoked, so that an end can select its streams in SQL.
CREATE TABLE ssf_streams (
    id                       TEXT PRIMARY KEY,
    receiver                 TEXT NOT NULL,
    method                   TEXT NOT NULL,
    endpoint_url             TEXT NOT NULL DEFAULT '',
    authorization_header     TEXT NOT NULL DEFAULT '',
    events_requested         TEXT NOT NULL DEFAULT '',
    description              TEXT NOT NULL DEFAULT '',
    delivers_session_revoked INTEGER NOT NULL DEFAULT 0,
    status                   TEXT NOT NULL DEFAULT 'enabled',
    status_reason            TEXT NOT NULL DEFAULT '',
    created_at               INTEGER NOT NULL,
    verified_at              INTEGER
);
CREATE INDEX ssf_streams_receiver ON ssf_streams (receiver);

-- One row per event per stream, written in the same transaction as the end
-- (or the verification request) it announces, and deleted when the
-- receiver acknowledges it (poll, RFC 8936) or answers 2xx (push, RFC
-- 8935). push_uri is the stream's endpoint for push streams, '' for poll.
-- jti is fixed at write time, so that a SET delivered twice is recognised.
CREATE TABLE ssf_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
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
    at              INTEGER NOT NULL,
    push_uri        TEXT NOT NULL DEFAULT '',
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    claimed_by      TEXT,
    claimed_until   INTEGER
);
CREATE INDEX ssf_events_stream ON ssf_events (stream_id, id);
CREATE INDEX ssf_events_push_due ON ssf_events (next_attempt_at) WHERE push_uri != '';
CREATE INDEX ssf_events_age ON ssf_events (at);
