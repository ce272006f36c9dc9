-- PostgreSQL twin of ../0004_login_throttle.up.sql: sign-in failure counts
-- shared by every replica, one row per keyed hash of a username, a client
-- address or a device cookie (never the raw value).
CREATE TABLE login_failures (
    key          TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL,
    last_at      BIGINT NOT NULL,
    locked_until BIGINT NOT NULL
);
