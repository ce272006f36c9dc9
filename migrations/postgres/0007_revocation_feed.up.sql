-- PostgreSQL twin of ../0007_revocation_feed.up.sql: access-token
-- revocations reach every replica (issue 10). A revocation is written to
-- revoked_tokens and, in the same transaction, as a row of the change feed
-- that names the token id instead of a session (sid ''), under the feed's
-- lock and with its NOTIFY like every other change row.
ALTER TABLE session_changes ADD COLUMN token_id TEXT;
