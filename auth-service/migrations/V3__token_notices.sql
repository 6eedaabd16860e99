-- Expiry notices (`serve --notify-webhook`): one row per token, threshold and expiry
-- value, inserted by the replica that claims it. The primary key is what makes a
-- notice go out once however many replicas look for due tokens: a second claim of the
-- same (token, threshold, expiry) inserts nothing. A renewal changes `expires_at`, so a
-- token that comes back inside a threshold later gets a new row, and a new notice.
CREATE TABLE token_notices (
    token_id       uuid NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    threshold_secs bigint NOT NULL CHECK (threshold_secs > 0),
    expires_at     timestamptz NOT NULL,
    -- Sent as X-Auth-Delivery, the same on every retry, so a receiver can deduplicate.
    delivery_id    uuid NOT NULL DEFAULT gen_random_uuid(),
    -- When a replica took it on; a claim left unfinished past the lease (its replica
    -- died) is taken over by another.
    claimed_at     timestamptz NOT NULL DEFAULT now(),
    attempts       integer NOT NULL DEFAULT 0,
    sent_at        timestamptz,
    -- Set when the retries ran out: the notice is not tried again.
    failed_at      timestamptz,
    PRIMARY KEY (token_id, threshold_secs, expires_at)
);

-- Unfinished claims, for the takeover scan.
CREATE INDEX token_notices_pending_idx ON token_notices (claimed_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;

-- The due-token scan: live tokens by expiry.
CREATE INDEX tokens_expires_at_live_idx ON tokens (expires_at) WHERE revoked_at IS NULL;

-- A sent notice is an audit event.
ALTER TABLE token_events DROP CONSTRAINT token_events_kind_check;
ALTER TABLE token_events ADD CONSTRAINT token_events_kind_check
    CHECK (kind IN ('create', 'renew', 'revoke', 'notify'));
