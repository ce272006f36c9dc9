-- Sign-in failure counts, shared by every process on the database so that
-- guesses spread over replicas are slowed the same. One row per key: a
-- keyed hash of a username, a client address (an IPv6 /64) or a device
-- cookie, never the raw value. Rows are purged once their lock is over and
-- their last attempt is older than login.lockout_max.
CREATE TABLE login_failures (
    key          TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL,
    locked_until INTEGER NOT NULL
) WITHOUT ROWID;
