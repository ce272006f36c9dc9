-- PostgreSQL twin of ../0006_replicas.up.sql: the change feed and leases
-- of several replicas on one database (issue 10).
--
-- The change feed: one row per end, app join, scope change or
-- reauthentication of an authentication session, written in the same
-- transaction as the change itself (with a NOTIFY on channel
-- idleguard_session_changes, delivered at commit). Every replica reads the
-- rows after the last id it applied and reloads those sessions it holds in
-- memory.
--
-- Ids are taken at insert, not at commit: a transaction that took a lower id
-- may commit after one that took a higher id, and a reader that has moved
-- past the higher id would miss it. Readers therefore see only rows below
-- the oldest id still being written (session.Postgres.SessionChanges), and
-- writers serialize on the feed's lock (see session.Postgres).
CREATE TABLE session_changes (
    id  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sid TEXT NOT NULL,
    at  BIGINT NOT NULL
);
CREATE INDEX session_changes_at ON session_changes (at);

-- Leases: work that one replica at a time may do (the sweeper). A holder
-- renews its lease before it expires; once expired, anyone may take it.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
