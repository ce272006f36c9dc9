-- An exchanged authorization code is remembered (not deleted) until its
-- request expires, so that a replay is recognised and the tokens issued from
-- it can be revoked (RFC 6749 section 4.1.2).
ALTER TABLE auth_requests ADD COLUMN redeemed_at INTEGER;
