-- PostgreSQL twin of ../0002_meta.up.sql (the same SQL).
-- Small facts the provider keeps about itself, such as the idle policy it
-- last tightened stored deadlines to (so that a restart with an unchanged
-- configuration skips that scan).
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
