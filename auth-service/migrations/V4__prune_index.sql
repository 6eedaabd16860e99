-- `token prune` finds long-dead tokens (revoked, or expired, longer ago than a cutoff)
-- by this index instead of scanning the table: at 10 million tokens the scan took
-- seconds per batch. LEAST ignores NULLs: the earlier of the two, or NULL (not dead)
-- for a live token that never expires.
CREATE INDEX tokens_dead_since_idx ON tokens (LEAST(revoked_at, expires_at));
