-- PostgreSQL twin of ../0005_code_redemption.up.sql: an exchanged
-- authorization code is remembered (not deleted) until its request expires,
-- so that a replay is recognised (RFC 6749 section 4.1.2).
ALTER TABLE auth_requests ADD COLUMN redeemed_at BIGINT;
