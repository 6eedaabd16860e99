//! Every SQL statement the service runs, in one place, each with a name (for metrics
//! and traces) and the types of its parameters. Parameters are always bound, never
//! spliced.
//!
//! Statements are sent unnamed, with their parameter types (tokio-postgres'
//! `query_typed`): parse, bind and execute in one round trip, and nothing prepared that
//! outlives it. That is what a transaction-pooling PgBouncer (before 1.21) needs, where
//! two statements of one session may run on two different server connections.
use tokio_postgres::types::Type;

/// A statement: its name in metrics and traces, its text, its parameters' types.
#[derive(Debug)]
pub struct Statement {
    pub(crate) name: &'static str,
    pub sql: &'static str,
    pub(crate) params: &'static [Type],
}

/// Renewal, in one round trip: read the token, extend it if it is inside the renewal
/// window, and audit the extension.
///
/// Parameters: $1 token hash, $2 threshold seconds, $3 extension seconds, $4 maximum
/// lifetime seconds (NULL: no cap), $5 caller.
///
/// The invariant: the UPDATE's WHERE is a compare-and-set against the *threshold*
/// (`expires_at <= now() + threshold`), not against the value it writes. Under READ
/// COMMITTED, a concurrent renew that waits on the row lock re-evaluates this WHERE
/// against the row the winner committed, whose expiry is now far outside the window,
/// so it updates nothing: N concurrent renews extend exactly once. Comparing with the
/// new value instead (`expires_at < target`) would let a later caller, whose `now()`
/// is a few milliseconds later, extend again.
///
/// `cur` is this statement's snapshot, so a race loser sees the pre-renewal expiry
/// there; `lost_race` tells the caller to re-read (`READ_BY_ID`) instead of reporting
/// that stale value. `now()` is the database's clock: replicas with skewed clocks agree.
pub(crate) const RENEW: Statement = Statement {
    name: "renew",
    sql: "
WITH cur AS (
    SELECT id, created_at, expires_at, revoked_at,
           -- LEAST ignores NULL, so a NULL cap means no cap.
           LEAST(now() + make_interval(secs => $3::float8),
                 created_at + make_interval(secs => $4::float8)) AS target
    FROM tokens
    WHERE token_hash = $1
),
upd AS (
    UPDATE tokens t
    SET expires_at = cur.target
    FROM cur
    WHERE t.id = cur.id
      AND t.revoked_at IS NULL
      AND t.expires_at > now()
      AND t.expires_at <= now() + make_interval(secs => $2::float8)
      AND cur.target > t.expires_at
    RETURNING t.id, t.expires_at
),
audit AS (
    INSERT INTO token_events (token_id, kind, caller, expires_at_before, expires_at_after)
    SELECT upd.id, 'renew', $5, cur.expires_at, upd.expires_at
    FROM upd JOIN cur ON cur.id = upd.id
)
SELECT cur.id,
       cur.created_at,
       COALESCE(upd.expires_at, cur.expires_at) AS expires_at,
       cur.revoked_at,
       upd.id IS NOT NULL AS renewed,
       COALESCE(upd.id IS NULL
         AND cur.revoked_at IS NULL
         AND cur.expires_at > now()
         AND cur.expires_at <= now() + make_interval(secs => $2::float8)
         AND cur.target > cur.expires_at, false) AS lost_race,
       now() AS db_now
FROM cur LEFT JOIN upd ON upd.id = cur.id",
    params: &[
        Type::BYTEA,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::TEXT,
    ],
};

/// Re-read after a lost renewal race: a new statement, so a new snapshot that sees
/// the winner's committed expiry. $1 token id.
pub(crate) const READ_BY_ID: Statement = Statement {
    name: "read_by_id",
    sql: "
SELECT created_at, expires_at, revoked_at, now() AS db_now
FROM tokens WHERE id = $1",
    params: &[Type::UUID],
};

/// Everything `ValidateToken` and `LookupCurrentToken` return, plus what decides whether
/// the token is live. Always one row: the token's columns are NULL for an unknown hash,
/// and `db_now` is there either way (the cache judges expiry on the database clock).
/// $1 token hash.
pub const LOOKUP: Statement = Statement {
    name: "lookup",
    sql: "
SELECT t.id, t.user_id, t.name, t.scopes, t.created_at, t.expires_at, t.revoked_at, n.db_now
FROM (SELECT now() AS db_now) n
LEFT JOIN tokens t ON t.token_hash = $1",
    params: &[Type::BYTEA],
};

/// `LOOKUP` for many tokens in one statement (see `db::batch`): one row per hash, in
/// no particular order, the hash first, then `LOOKUP`'s columns; the same `now()` for
/// all. $1 token hashes (distinct).
pub(crate) const LOOKUP_BATCH: Statement = Statement {
    name: "lookup_batch",
    sql: "
SELECT h.hash, t.id, t.user_id, t.name, t.scopes, t.created_at, t.expires_at, t.revoked_at,
       now() AS db_now
FROM unnest($1::bytea[]) AS h(hash)
LEFT JOIN tokens t ON t.token_hash = h.hash",
    params: &[Type::BYTEA_ARRAY],
};

/// Self-revocation of a live token, audited in the same statement. When it returns
/// no row, `LOOKUP` says why (unknown, expired, already revoked). $1 hash, $2 caller.
pub(crate) const REVOKE_BY_HASH: Statement = Statement {
    name: "revoke",
    sql: "
WITH upd AS (
    UPDATE tokens SET revoked_at = now()
    WHERE token_hash = $1
      AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
    RETURNING id, revoked_at, expires_at
),
audit AS (
    INSERT INTO token_events (token_id, kind, caller, expires_at_before, expires_at_after)
    SELECT id, 'revoke', $2, expires_at, expires_at FROM upd
)
SELECT id, revoked_at FROM upd",
    params: &[Type::BYTEA, Type::TEXT],
};

/// Administrative revocation by id (`token revoke ID`). $1 id, $2 caller.
pub(crate) const REVOKE_BY_ID: Statement = Statement {
    name: "revoke_by_id",
    sql: "
WITH upd AS (
    UPDATE tokens SET revoked_at = now()
    WHERE id = $1 AND revoked_at IS NULL
    RETURNING id, revoked_at, expires_at
),
audit AS (
    INSERT INTO token_events (token_id, kind, caller, expires_at_before, expires_at_after)
    SELECT id, 'revoke', $2, expires_at, expires_at FROM upd
)
SELECT revoked_at FROM upd",
    params: &[Type::UUID, Type::TEXT],
};

/// Does a token with this id exist (to tell "unknown id" from "already revoked")?
pub(crate) const EXISTS_BY_ID: Statement = Statement {
    name: "exists_by_id",
    sql: "SELECT revoked_at FROM tokens WHERE id = $1",
    params: &[Type::UUID],
};

/// Token creation with its audit row. $1 user, $2 name, $3 hash, $4 display prefix,
/// $5 scopes, $6 lifetime seconds (NULL: never expires), $7 caller.
pub(crate) const CREATE: Statement = Statement {
    name: "create",
    sql: "
WITH ins AS (
    INSERT INTO tokens (user_id, name, token_hash, display_prefix, scopes, expires_at)
    VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6::float8))
    RETURNING id, expires_at
),
audit AS (
    INSERT INTO token_events (token_id, kind, caller, expires_at_after)
    SELECT id, 'create', $7, expires_at FROM ins
)
SELECT id, expires_at FROM ins",
    params: &[
        Type::TEXT,
        Type::TEXT,
        Type::BYTEA,
        Type::TEXT,
        Type::TEXT_ARRAY,
        Type::FLOAT8,
        Type::TEXT,
    ],
};

/// `token list`: never the hash. $1 user or NULL for everyone.
pub(crate) const LIST: Statement = Statement {
    name: "list",
    sql: "
SELECT id, user_id, name, display_prefix, scopes, created_at, expires_at,
       revoked_at, last_used_at, now() AS db_now
FROM tokens
WHERE $1::text IS NULL OR user_id = $1
ORDER BY created_at, id",
    params: &[Type::TEXT],
};

/// `token prune`: deletes up to $2 tokens that have been dead for longer than $1
/// seconds by the database clock (expired, or revoked, that long ago), together with
/// their audit rows, in one statement; its row count is the number of tokens deleted.
/// The caller repeats it until a batch comes back short.
///
/// The invariants:
/// - Only dead tokens. A live token has neither a past expiry nor a revocation; a token
///   that never expires (NULL `expires_at`) qualifies only through `revoked_at`.
///   `LEAST` ignores NULLs, so `LEAST(revoked_at, expires_at)` is when the token died
///   (or NULL), and the index of migration V4 finds the batch without a scan.
/// - Concurrent prunes (a CronJob on every replica) neither fail nor count a token
///   twice. `FOR UPDATE SKIP LOCKED` gives each statement rows that no other one holds;
///   a row that another prune deleted after this statement's snapshot was taken is
///   dropped when its lock is taken (READ COMMITTED re-checks the row and finds it
///   gone). A row locked by anything else (a revoke, a renewal) waits for the next run.
/// - The audit rows, which reference the tokens, go in the same statement: the foreign
///   key is checked when the statement ends, after both deletes. `MATERIALIZED`: both
///   deletes see the same ids.
///
/// The trigger of migration V2 notifies every cache of each deleted token.
pub const PRUNE: Statement = Statement {
    name: "prune",
    sql: "
WITH doomed AS MATERIALIZED (
    SELECT id FROM tokens
    WHERE LEAST(revoked_at, expires_at) < now() - make_interval(secs => $1::float8)
    LIMIT $2
    FOR UPDATE SKIP LOCKED
),
events AS (
    DELETE FROM token_events WHERE token_id IN (SELECT id FROM doomed)
)
DELETE FROM tokens WHERE id IN (SELECT id FROM doomed)",
    params: &[Type::FLOAT8, Type::INT8],
};

/// Batched last-used stamp, written off the request path. $1 token ids, sorted by
/// the caller so that replicas lock rows in one order and cannot deadlock.
pub(crate) const TOUCH: Statement = Statement {
    name: "touch",
    sql: "
UPDATE tokens SET last_used_at = now()
WHERE id = ANY($1)",
    params: &[Type::UUID_ARRAY],
};

/// The health probe, and the change listener's ping.
pub(crate) const PING: &str = "SELECT 1";

/// The channel of the change notifications the token trigger sends (migration V2).
pub(crate) const TOKEN_CHANGES: &str = "auth_token_changes";

/// What the cache's listener listens to: the token changes, and `heartbeats`, a channel
/// of this replica's own (see `cache::listener`). `heartbeats` is made by the caller of
/// lowercase letters, digits and underscores only.
pub(crate) fn listen(heartbeats: &str) -> String {
    format!("LISTEN {TOKEN_CHANGES}; LISTEN {heartbeats}")
}

/// One heartbeat on `heartbeats`, carrying its send time. A plain statement (no
/// parameters, nothing prepared), so that it works through a transaction-pooling
/// PgBouncer too; the channel is as for [`listen`].
pub(crate) fn heartbeat(heartbeats: &str, sent_us: u64) -> String {
    format!("SELECT pg_notify('{heartbeats}', '{sent_us}')")
}

/// Migrations run without the per-request statement timeout, then restore it.
pub(crate) const NO_STATEMENT_TIMEOUT: &str = "SET statement_timeout = 0";
pub(crate) const RESET_STATEMENT_TIMEOUT: &str = "RESET statement_timeout";

/// The session's `statement_timeout` in milliseconds, as the server applies it: the
/// startup option's value when the options reached a server session of ours.
pub(crate) const STATEMENT_TIMEOUT_MS: Statement = Statement {
    name: "statement_timeout",
    sql: "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'",
    params: &[],
};

/// The statements this session holds prepared (for the tests).
pub(crate) const PREPARED_HERE: Statement = Statement {
    name: "prepared_here",
    sql: "SELECT count(*) FROM pg_prepared_statements",
    params: &[],
};

/// Other sessions connected to this cluster (a running `serve`), so that a `token`
/// command that started the embedded cluster does not stop it under them.
pub(crate) const OTHER_CLIENTS: Statement = Statement {
    name: "other_clients",
    sql: "
SELECT count(*) FROM pg_stat_activity
WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    params: &[],
};

/// Whether refinery's history table exists where refinery looks for it (unqualified,
/// through the search path). A database that was never migrated has none.
pub(crate) const SCHEMA_HISTORY_EXISTS: Statement = Statement {
    name: "schema_history_exists",
    sql: "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
    params: &[],
};

/// The migrations applied, as refinery recorded them (its checksum is stored as text),
/// for `serve --no-migrate`'s check. Read-only: the runtime role can run it.
pub(crate) const SCHEMA_HISTORY: Statement = Statement {
    name: "schema_history",
    sql: "
SELECT version::int8, name, checksum FROM refinery_schema_history ORDER BY version",
    params: &[],
};

/// Serialises migrations across replicas that start together (an arbitrary constant key).
pub(crate) const MIGRATION_LOCK: &str = "SELECT pg_advisory_lock(7468657461757468)";
pub(crate) const MIGRATION_UNLOCK: &str = "SELECT pg_advisory_unlock(7468657461757468)";

/// Claims the expiry notices that are due, in one statement (one transaction).
///
/// A live token is due when its expiry is within one of the thresholds; it is due for
/// the *nearest* one (the smallest threshold not below the time left), so a token that
/// crosses several at once (created with 20 h left, thresholds 7d and 1d) gets only the
/// 1d notice, and the 7d one is never owed. The token rows are locked `SKIP LOCKED`, so
/// replicas scanning together split the work instead of queueing on each other, and
/// the INSERT's primary key settles any overlap: a notice already claimed, by anyone,
/// is not claimed again. `FOR NO KEY UPDATE` is the weakest lock that excludes another
/// scan; it does not fire the change trigger.
///
/// $1 thresholds in seconds (bigint[]), $2 the largest of them, $3 most rows per scan.
/// Returns each claimed notice with what its body needs.
pub const CLAIM_DUE_NOTICES: Statement = Statement {
    name: "claim_notices",
    sql: "
WITH due AS (
    SELECT t.id, t.user_id, t.name, t.expires_at, th.secs AS threshold_secs
    FROM tokens t
    CROSS JOIN LATERAL (
        SELECT min(s) AS secs FROM unnest($1::bigint[]) s
        WHERE t.expires_at <= now() + make_interval(secs => s::float8)
    ) th
    WHERE t.revoked_at IS NULL
      AND t.expires_at > now()
      AND t.expires_at <= now() + make_interval(secs => $2::bigint::float8)
      AND NOT EXISTS (
          SELECT 1 FROM token_notices n
          WHERE n.token_id = t.id AND n.threshold_secs = th.secs AND n.expires_at = t.expires_at
      )
    ORDER BY t.expires_at
    LIMIT $3
    FOR NO KEY UPDATE OF t SKIP LOCKED
),
claimed AS (
    INSERT INTO token_notices (token_id, threshold_secs, expires_at)
    SELECT id, threshold_secs, expires_at FROM due
    ON CONFLICT DO NOTHING
    RETURNING token_id, threshold_secs, expires_at, delivery_id, attempts
)
SELECT c.token_id, d.user_id, d.name, c.expires_at, c.threshold_secs, c.delivery_id, c.attempts
FROM claimed c JOIN due d ON d.id = c.token_id",
    params: &[Type::INT8_ARRAY, Type::INT8, Type::INT8],
};

/// Takes over notices whose replica died between claiming and finishing: unsent, not
/// given up, claimed longer ago than the lease, and still owed (the token is live and
/// its expiry unchanged). Replicas racing for one row serialise on its lock, and the
/// loser's re-checked `claimed_at` no longer matches.
///
/// $1 lease in seconds. Returns the same columns as `CLAIM_DUE_NOTICES`.
pub(crate) const RECLAIM_STALE_NOTICES: Statement = Statement {
    name: "reclaim_notices",
    sql: "
UPDATE token_notices n
SET claimed_at = now()
FROM tokens t
WHERE n.token_id = t.id
  AND n.sent_at IS NULL
  AND n.failed_at IS NULL
  AND n.claimed_at < now() - make_interval(secs => $1::float8)
  AND t.revoked_at IS NULL
  AND t.expires_at = n.expires_at
  AND t.expires_at > now()
RETURNING n.token_id, t.user_id, t.name, n.expires_at, n.threshold_secs, n.delivery_id, n.attempts",
    params: &[Type::FLOAT8],
};

/// A notice was delivered: mark it and audit it, in one statement.
/// $1 token id, $2 threshold seconds, $3 expiry, $4 attempts made, $5 caller (the
/// webhook's host).
pub(crate) const NOTICE_SENT: Statement = Statement {
    name: "notice_sent",
    sql: "
WITH upd AS (
    UPDATE token_notices SET sent_at = now(), attempts = $4
    WHERE token_id = $1 AND threshold_secs = $2 AND expires_at = $3 AND sent_at IS NULL
    RETURNING token_id, expires_at
)
INSERT INTO token_events (token_id, kind, caller, expires_at_before, expires_at_after)
SELECT token_id, 'notify', $5, expires_at, expires_at FROM upd",
    params: &[
        Type::UUID,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::TEXT,
    ],
};

/// A notice's retries ran out: it is not tried again. $1 token id, $2 threshold
/// seconds, $3 expiry, $4 attempts made.
pub(crate) const NOTICE_FAILED: Statement = Statement {
    name: "notice_failed",
    sql: "
UPDATE token_notices SET failed_at = now(), attempts = $4
WHERE token_id = $1 AND threshold_secs = $2 AND expires_at = $3 AND sent_at IS NULL",
    params: &[Type::UUID, Type::INT8, Type::TIMESTAMPTZ, Type::INT4],
};
