//! Tokens made and altered directly in the database, and what tests read back. The
//! test-only SQL lives here, never in the service (one statement of it sets any token's
//! expiry).
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use auth_service::{
    db::Db,
    token::{self, Prefix},
};
use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{Result, cluster};

/// Makes names and salts unique within this test process (with its pid, across them).
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

fn unique() -> String {
    format!(
        "{}_{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A time as the database stores it.
pub type Time = DateTime<Utc>;

/// Moves a token's expiry to now + $2 seconds (negative: into the past). $1 id.
const SET_EXPIRY: &str =
    "UPDATE tokens SET expires_at = now() + make_interval(secs => $2::float8) WHERE id = $1";
/// Moves a token's creation time $2 seconds into the past. $1 id.
const SET_CREATED_AGO: &str =
    "UPDATE tokens SET created_at = now() - make_interval(secs => $2::float8) WHERE id = $1";
/// Marks a token revoked $2 seconds ago. $1 id.
const SET_REVOKED_AGO: &str =
    "UPDATE tokens SET revoked_at = now() - make_interval(secs => $2::float8) WHERE id = $1";
/// Every token's id.
const TOKEN_IDS: &str = "SELECT id FROM tokens ORDER BY id";
/// How many audit rows there are, of every token.
const EVENT_COUNT: &str = "SELECT count(*) FROM token_events";
/// $1 tokens of user `bulk` that expired $2 seconds ago, each with its `create` audit
/// row; $3 makes their hashes differ from any other call's.
const INSERT_DEAD: &str = "
WITH ins AS (
    INSERT INTO tokens (user_id, name, token_hash, display_prefix, expires_at)
    SELECT 'bulk', 'dead', sha256(convert_to($3 || ':' || g, 'UTF8')), 'pat_dead',
           now() - make_interval(secs => $2::float8)
    FROM generate_series(1, $1::int) g
    RETURNING id, expires_at
)
INSERT INTO token_events (token_id, kind, caller, expires_at_after)
SELECT id, 'create', 'test', expires_at FROM ins";
/// Records a migration as applied, as refinery does, without running anything: a schema
/// a newer release migrated. $1 version, $2 name.
const RECORD_MIGRATION: &str = "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
     VALUES ($1, $2, now()::text, '0')";
/// Holds off every writer of the audit table (inside a transaction the caller opened):
/// a statement that deletes from it waits at its start.
const LOCK_EVENTS: &str = "LOCK TABLE token_events IN EXCLUSIVE MODE";
/// A login role with the rights a runtime role has (DML on the tables, no DDL), and a
/// schema where nobody else may create tables either. $name is substituted: DDL takes no
/// parameters.
const RUNTIME_ROLE: &str = "
CREATE ROLE $name LOGIN;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO $name;";
/// A token's audit trail with the expiry before and after each event. $1 id.
const EVENT_EXPIRIES: &str = "SELECT kind, expires_at_before, expires_at_after FROM token_events WHERE token_id = $1 ORDER BY id";
/// A token's stored expiry and the database clock. $1 id.
const EXPIRY: &str = "SELECT expires_at, now() FROM tokens WHERE id = $1";
/// A token's audit trail, oldest first. $1 id.
const EVENTS: &str = "SELECT kind, caller FROM token_events WHERE token_id = $1 ORDER BY id";
/// A token's last-used stamp. $1 id.
const LAST_USED: &str = "SELECT last_used_at FROM tokens WHERE id = $1";
/// Every value stored anywhere in the token tables, rendered as text.
const ALL_STORED_TEXT: &str =
    "SELECT t::text FROM tokens t UNION ALL SELECT e::text FROM token_events e";
/// Takes a token's row lock (inside a transaction the caller opened). $1 id.
const LOCK_ROW: &str = "SELECT 1 FROM tokens WHERE id = $1 FOR UPDATE";
/// How many sessions of this database are waiting on a lock.
const LOCK_WAITERS: &str = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()";

/// A token's expiry notices: threshold, attempts, sent, given up, delivery id. $1 id.
const NOTICES: &str = "SELECT threshold_secs, attempts, sent_at IS NOT NULL, failed_at IS NOT NULL, delivery_id FROM token_notices WHERE token_id = $1 ORDER BY claimed_at";
/// A claim a dead replica left behind: claimed `$3` seconds ago, never finished.
/// $1 id, $2 threshold seconds.
const STALE_CLAIM: &str = "INSERT INTO token_notices (token_id, threshold_secs, expires_at, claimed_at, attempts) SELECT id, $2, expires_at, now() - make_interval(secs => $3), 1 FROM tokens WHERE id = $1 RETURNING delivery_id";

/// Creates a token directly (as `token create` does), user `user`, name `test`, scope
/// `read`; returns (id, raw token).
pub async fn create_token(
    db: &Db,
    user: &str,
    lifetime: Option<Duration>,
) -> Result<(Uuid, String)> {
    create_token_with_prefix(db, user, lifetime, &Prefix::default()).await
}

/// [`create_token`] for a service configured with another `--token-prefix`.
pub async fn create_token_with_prefix(
    db: &Db,
    user: &str,
    lifetime: Option<Duration>,
    prefix: &Prefix,
) -> Result<(Uuid, String)> {
    let raw = token::generate(prefix)?;
    let created = db
        .create_token(
            user,
            "test",
            &token::digest_of(&raw, prefix),
            &["read".to_string()],
            lifetime,
            "test",
        )
        .await?;
    Ok((created.id, raw.expose().to_string()))
}

/// Stores a token the test generated beforehand (to ask about it before it exists).
pub async fn store_token(db: &Db, user: &str, raw: &token::RawToken) -> Result<Uuid> {
    let created = db
        .create_token(
            user,
            "test",
            &token::digest_of(raw, &Prefix::default()),
            &["read".to_string()],
            Some(Duration::from_secs(86400)),
            "test",
        )
        .await?;
    Ok(created.id)
}

/// A token of `alice`'s whose expiry is `secs` from now by the database clock
/// (negative: already expired). Returns (id, raw token); panics on a database error.
pub async fn token_expiring_in(db: &Db, secs: f64) -> (Uuid, String) {
    let (id, raw) = create_token(db, "alice", Some(Duration::from_secs(90 * 86400)))
        .await
        .unwrap();
    set_expires_in(db, id, secs).await.unwrap();
    (id, raw)
}

/// Moves a token's expiry to now + `secs` (negative: into the past).
pub async fn set_expires_in(db: &Db, id: Uuid, secs: f64) -> Result<()> {
    db.pool()
        .get()
        .await?
        .execute(SET_EXPIRY, &[&id, &secs])
        .await?;
    Ok(())
}

/// Moves a token's creation time `secs` into the past (for the lifetime cap).
pub async fn set_created_ago(db: &Db, id: Uuid, secs: f64) -> Result<()> {
    db.pool()
        .get()
        .await?
        .execute(SET_CREATED_AGO, &[&id, &secs])
        .await?;
    Ok(())
}

/// Marks a token revoked `secs` ago (negative: in the future, which no real revocation is).
pub async fn set_revoked_ago(db: &Db, id: Uuid, secs: f64) -> Result<()> {
    db.pool()
        .get()
        .await?
        .execute(SET_REVOKED_AGO, &[&id, &secs])
        .await?;
    Ok(())
}

/// Stores `n` tokens that expired `ago` seconds ago (user `bulk`), with their audit rows.
pub async fn insert_dead_tokens(db: &Db, n: i32, ago: f64) -> Result<()> {
    let salt = unique();
    db.pool()
        .get()
        .await?
        .execute(INSERT_DEAD, &[&n, &ago, &salt])
        .await?;
    Ok(())
}

/// A login role on `config`'s database that may read and write the tables but create
/// nothing (what a production runtime role is); returns `config` as that role.
pub async fn runtime_role(config: &tokio_postgres::Config) -> Result<tokio_postgres::Config> {
    let name = format!("runtime_{}", unique());
    let (admin, task) = cluster::connect(config).await?;
    admin
        .batch_execute(&RUNTIME_ROLE.replace("$name", &name))
        .await?;
    drop(admin);
    let _ = task.await;
    let mut runtime = config.clone();
    runtime.user(&name);
    Ok(runtime)
}

/// Records migration `version` as applied (a later release's, which this binary lacks).
pub async fn record_migration(db: &Db, version: i32, name: &str) -> Result<()> {
    db.pool()
        .get()
        .await?
        .execute(RECORD_MIGRATION, &[&version, &name])
        .await?;
    Ok(())
}

/// The ids of every token stored, sorted.
pub async fn token_ids(db: &Db) -> Result<Vec<Uuid>> {
    let rows = db.pool().get().await?.query(TOKEN_IDS, &[]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// How many audit rows are stored, of every token.
pub async fn event_count(db: &Db) -> Result<i64> {
    let row = db.pool().get().await?.query_one(EVENT_COUNT, &[]).await?;
    Ok(row.try_get(0)?)
}

/// Expiry before and after each audit event: (kind, before, after).
pub type EventExpiry = (String, Option<Time>, Option<Time>);

/// A token's audit trail with the expiries each event recorded, oldest first.
pub async fn event_expiries(db: &Db, id: Uuid) -> Result<Vec<EventExpiry>> {
    let rows = db.pool().get().await?.query(EVENT_EXPIRIES, &[&id]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// A token's stored expiry and the database's clock.
pub async fn stored_expiry(db: &Db, id: Uuid) -> Result<(Option<Time>, Time)> {
    let row = db.pool().get().await?.query_one(EXPIRY, &[&id]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A token's audit trail as (kind, caller), oldest first.
pub async fn events(db: &Db, id: Uuid) -> Result<Vec<(String, String)>> {
    let rows = db.pool().get().await?.query(EVENTS, &[&id]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The kinds of a token's audit events, oldest first.
pub async fn event_kinds(db: &Db, id: Uuid) -> Result<Vec<String>> {
    Ok(events(db, id)
        .await?
        .into_iter()
        .map(|(kind, _)| kind)
        .collect())
}

/// A token's `last_used_at`.
pub async fn last_used(db: &Db, id: Uuid) -> Result<Option<Time>> {
    let row = db.pool().get().await?.query_one(LAST_USED, &[&id]).await?;
    Ok(row.try_get(0)?)
}

/// Every row of the token tables rendered as text (to search for leaked secrets).
pub async fn all_stored_text(db: &Db) -> Result<String> {
    let rows = db.pool().get().await?.query(ALL_STORED_TEXT, &[]).await?;
    let lines = rows
        .iter()
        .map(|r| r.try_get::<_, String>(0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(lines.join("\n"))
}

/// How many sessions of the database behind `db` wait on a lock.
pub async fn lock_waiters(db: &Db) -> Result<i64> {
    let row = db.pool().get().await?.query_one(LOCK_WAITERS, &[]).await?;
    Ok(row.try_get(0)?)
}

/// A transaction holding one token's row lock, so that concurrent renews pile up
/// behind it and then race (the lost-race path, made deterministic).
pub struct RowLock {
    client: tokio_postgres::Client,
    task: JoinHandle<()>,
}

impl RowLock {
    pub async fn take(config: &tokio_postgres::Config, id: Uuid) -> Result<RowLock> {
        let (client, task) = cluster::connect(config).await?;
        client.simple_query("BEGIN").await?;
        client.query(LOCK_ROW, &[&id]).await?;
        Ok(RowLock { client, task })
    }

    /// Commits (changing nothing) and lets the waiters go.
    pub async fn release(self) -> Result<()> {
        self.client.simple_query("COMMIT").await?;
        drop(self.client);
        let _ = self.task.await;
        Ok(())
    }
}

/// A transaction that keeps every writer out of the audit table, so that statements
/// that delete from it (two `token prune`s) pile up behind it and start together.
pub struct AuditLock {
    client: tokio_postgres::Client,
    task: JoinHandle<()>,
}

impl AuditLock {
    pub async fn take(config: &tokio_postgres::Config) -> Result<AuditLock> {
        let (client, task) = cluster::connect(config).await?;
        client.simple_query("BEGIN").await?;
        client.simple_query(LOCK_EVENTS).await?;
        Ok(AuditLock { client, task })
    }

    /// Commits (changing nothing) and lets the waiters go.
    pub async fn release(self) -> Result<()> {
        self.client.simple_query("COMMIT").await?;
        drop(self.client);
        let _ = self.task.await;
        Ok(())
    }
}

/// |a - b| in seconds.
pub fn gap(a: Time, b: Time) -> f64 {
    (a - b).abs().as_seconds_f64()
}

/// One row of `token_notices`, as the notifier left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeRow {
    pub threshold_secs: i64,
    pub attempts: i32,
    pub sent: bool,
    pub failed: bool,
    pub delivery_id: Uuid,
}

/// A token's expiry notices, oldest claim first.
pub async fn notices(db: &Db, id: Uuid) -> Result<Vec<NoticeRow>> {
    let rows = db.pool().get().await?.query(NOTICES, &[&id]).await?;
    rows.iter()
        .map(|r| {
            Ok(NoticeRow {
                threshold_secs: r.try_get(0)?,
                attempts: r.try_get(1)?,
                sent: r.try_get(2)?,
                failed: r.try_get(3)?,
                delivery_id: r.try_get(4)?,
            })
        })
        .collect()
}

/// Leaves a claim for the token's current expiry as a replica that died would: claimed
/// `ago` seconds ago, one attempt made, never finished. Returns its delivery id.
pub async fn stale_claim(db: &Db, id: Uuid, threshold_secs: i64, ago: f64) -> Result<Uuid> {
    let row = db
        .pool()
        .get()
        .await?
        .query_one(STALE_CLAIM, &[&id, &threshold_secs, &ago])
        .await?;
    Ok(row.try_get(0)?)
}
