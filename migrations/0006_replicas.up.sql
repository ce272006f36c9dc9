-- Several replicas on one database (issue 10).
--
-- The change feed: one row per end, app join, scope change or
-- reauthentication of an authentication session, written in the same
-- transaction as the change itself. Every replica reads the rows after the
-- last id it applied and reloads those sessions it holds in memory, so that
-- an end or a stricter limit at one replica reaches the others. Rows are
-- purged once every replica has long read them.
CREATE TABLE session_changes (
    id  INTEGER PRIMARY KEY AUTOINCREMENT,
    sid TEXT NOT NULL,
    at  INTEGER NOT NULL
);
CREATE INDEX session_changes_at ON session_changes (at);

-- Leases: work that one replica at a time may do (the sweeper). A holder
-- renews its lease before it expires; once expired, anyone may take it.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
