-- PostgreSQL twin of ../0003_outbox_claims.up.sql: the same columns and
-- indexes. Workers claim due rows with SELECT ... FOR UPDATE SKIP LOCKED.
ALTER TABLE logout_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE logout_outbox ADD COLUMN claimed_until BIGINT;

-- At most one pending row per (client, sid); older duplicates are
-- superseded by the newest pending row of their pair (kept, finished, and
-- said so).
UPDATE logout_outbox SET abandoned_at = created_at, last_error = 'superseded by a later logout of the same session'
 WHERE delivered_at IS NULL AND abandoned_at IS NULL
   AND EXISTS (SELECT 1 FROM logout_outbox n WHERE n.client_id = logout_outbox.client_id AND n.sid = logout_outbox.sid
               AND n.delivered_at IS NULL AND n.abandoned_at IS NULL AND n.id > logout_outbox.id);
CREATE UNIQUE INDEX logout_outbox_pending_pair ON logout_outbox (client_id, sid) WHERE delivered_at IS NULL AND abandoned_at IS NULL;

-- Finished rows are kept for backchannel.retention, then purged in the
-- order they finished (the audit keeps the record).
CREATE INDEX logout_outbox_finished ON logout_outbox (COALESCE(delivered_at, abandoned_at))
 WHERE delivered_at IS NOT NULL OR abandoned_at IS NOT NULL;

-- Revocations are purged once the token they name has expired anyway.
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
