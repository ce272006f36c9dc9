-- Access-token revocations reach every replica (issue 10).
--
-- A revocation (RFC 7009) is written to revoked_tokens and, in the same
-- transaction, as a row of the change feed that names the token id instead
-- of a session (sid ''). Every replica applies the feed and refuses the
-- token from memory, so introspection reads nothing per call.
ALTER TABLE session_changes ADD COLUMN token_id TEXT;
