//! The connection pool, migrations, and a time limit on every database operation.
//!
//! All SQL lives in `sql`; `tokens` turns rows into domain values. Where to connect:
//! `conninfo` reads a connection string, `tls` is libpq's TLS policy, `target` connects
//! with both.
use std::{fmt, sync::Arc, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::TryStreamExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, histogram::Histogram},
};
use tokio_postgres::{NoTls, Row, types::ToSql};

use crate::error::{Error, Result};

pub(crate) mod batch;
pub(crate) mod conninfo;
pub(crate) mod notices;
mod shared;
pub mod sql;
pub(crate) mod target;
pub(crate) mod tls;
pub(crate) mod tokens;

pub(crate) use sql::Statement;
pub use target::Target;
pub(crate) use tokens::{Lookup, Renewal, TokenListing};

mod embedded_migrations {
    refinery::embed_migrations!("migrations");
}

/// Applies pending migrations over one connection. Replicas starting together take
/// turns (an advisory lock), so each migration runs once.
pub async fn migrate_client(client: &mut tokio_postgres::Client) -> Result<()> {
    // A migration, or the wait for another replica's, may take longer than the
    // per-request statement_timeout of pooled connections.
    client.simple_query(sql::NO_STATEMENT_TIMEOUT).await?;
    client.simple_query(sql::MIGRATION_LOCK).await?;
    let report = embedded_migrations::migrations::runner()
        .run_async(client)
        .await;
    client.simple_query(sql::MIGRATION_UNLOCK).await?;
    client.simple_query(sql::RESET_STATEMENT_TIMEOUT).await?;
    // refinery's own text stops at "db error": PostgreSQL's reason (e.g. "permission
    // denied for schema public") is in its causes.
    let report = report.map_err(|e| {
        Error::Internal(format!(
            "schema migration failed: {}",
            crate::error::chain(&e)
        ))
    })?;
    for m in report.applied_migrations() {
        tracing::info!(version = m.version(), name = m.name(), "applied migration");
    }
    Ok(())
}

/// A schema migration, as far as `serve --no-migrate` compares them: the database's
/// history against the migrations this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub(crate) version: i64,
    pub(crate) name: String,
    /// refinery's checksum of the name, version and SQL, in decimal.
    pub(crate) checksum: String,
}

impl fmt::Display for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "V{}__{}", self.version, self.name)
    }
}

/// The migrations this binary carries (and `migrate` applies), oldest first.
pub(crate) fn known_migrations() -> Vec<Migration> {
    let mut known: Vec<Migration> = embedded_migrations::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| Migration {
            version: i64::from(m.version()),
            name: m.name().to_owned(),
            checksum: m.checksum().to_string(),
        })
        .collect();
    known.sort_by_key(|m| m.version);
    known
}

/// `statement`, the label of [`StatementSeconds`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabel {
    pub(crate) statement: &'static str,
}

/// Buckets of the statement latency: from 100 µs (a lookup by the unique index) to
/// 10 s (past the default `--db-timeout`).
const STATEMENT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0,
];

fn statement_histogram() -> Histogram {
    Histogram::new(STATEMENT_BUCKETS)
}

/// How long each statement took, by name, from sending it to its last row (the
/// `metrics` module registers it as `auth_db_statement_duration_seconds`).
pub(crate) type StatementSeconds = Family<StatementLabel, Histogram, fn() -> Histogram>;

/// How `connections` sessions are split: a quarter (1 to 4) are shared by the pipelined
/// lookups, the rest are the exclusive pool. Measured: four connections with many
/// queries in flight each answer more lookups than sixteen with one each.
pub fn split(connections: usize) -> (usize, usize) {
    let shared = (connections / 4).clamp(1, 4);
    (connections.saturating_sub(shared).max(1), shared)
}

/// The split a handle was built with: (exclusive, shared).
fn split_of(db: &Db) -> (usize, usize) {
    (db.pool.status().max_size, db.readers.slots())
}

/// A statement called with as many parameters as it declares types.
fn arity(statement: &Statement, params: &[&(dyn ToSql + Sync)]) -> Result<()> {
    if params.len() == statement.params.len() {
        return Ok(());
    }
    Err(Error::Internal(format!(
        "{}: {} parameters for {} types",
        statement.name,
        params.len(),
        statement.params.len()
    )))
}

/// Whether a prepared statement failed because the session no longer has it as it was
/// prepared: gone (26000), or its cached plan's result type no longer matches the
/// table (0A000, "cached plan must not change result type").
fn stale_statement(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::FEATURE_NOT_SUPPORTED
    })
}

/// A pooled database handle whose every operation fails with `UNAVAILABLE` after
/// `timeout`, so a hung database cannot hang callers.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    readers: Arc<shared::Shared>,
    timeout: Duration,
    target: Target,
    /// Woken when a call finds the database unavailable, so that health can look at
    /// once instead of at its next probe.
    trouble: Arc<tokio::sync::Notify>,
    statement_seconds: StatementSeconds,
    /// Whether sessions carry startup options (not through a pooler).
    session_options: bool,
    /// The queue of cold lookups (see [`batch`]).
    batcher: Arc<batch::Batcher>,
    /// Tokens looked up, one per distinct hash per statement.
    lookups: prometheus_client::metrics::counter::Counter,
}

impl Db {
    /// Builds the pools over a plain connection (the embedded cluster, tests), with at
    /// most `connections` sessions between them; no connection is made until first use.
    pub fn new(
        config: tokio_postgres::Config,
        connections: usize,
        timeout: Duration,
    ) -> Result<Db> {
        Db::connect_to(Target::plain(config), connections, timeout)
    }

    /// Builds the pools for `target`, with its TLS and at most `connections` sessions
    /// between them (see [`split`]); no connection is made until first use. Each
    /// session asks the server to abandon a statement after `timeout`.
    pub fn connect_to(target: Target, connections: usize, timeout: Duration) -> Result<Db> {
        Db::build(target, connections, timeout, true)
    }

    /// [`Db::connect_to`] for a URL that goes through a transaction-pooling PgBouncer:
    /// no startup options (PgBouncer refuses them), so `statement_timeout` must be set on
    /// the role; the client's own timeout and cancel still apply.
    pub fn through_pooler(target: Target, connections: usize, timeout: Duration) -> Result<Db> {
        Db::build(target, connections, timeout, false)
    }

    fn build(
        target: Target,
        connections: usize,
        timeout: Duration,
        session_options: bool,
    ) -> Result<Db> {
        let mut config = target.config.clone();
        if session_options {
            // The server abandons a statement we stopped waiting for (a lock wait, a
            // slow disk) instead of keeping the connection busy behind it.
            let options = format!(
                "{} -c statement_timeout={}",
                config.get_options().unwrap_or(""),
                timeout.as_millis().max(1)
            );
            config.options(options.trim_start());
        }
        let pool = |size: usize| {
            // `Fast` checks only that the connection is still open; a connection the
            // server closed (a restart) is dropped and replaced.
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &target.tls {
                target::Tls::None => Manager::from_config(config.clone(), NoTls, manager_config),
                target::Tls::Rustls(tls) => {
                    Manager::from_config(config.clone(), tls.clone(), manager_config)
                }
            };
            Pool::builder(manager)
                .max_size(size)
                .wait_timeout(Some(timeout))
                .create_timeout(Some(timeout))
                .recycle_timeout(Some(timeout))
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| Error::Internal(format!("building the connection pool: {e}")))
        };
        let (exclusive, shared) = split(connections);
        Ok(Db {
            pool: pool(exclusive)?,
            readers: Arc::new(shared::Shared::new(pool(shared)?, shared)),
            timeout,
            target,
            trouble: Arc::default(),
            statement_seconds: Family::new_with_constructor(statement_histogram),
            session_options,
            // Two statements in flight per shared connection: one being answered, one
            // already sent (tokio-postgres pipelines them); the rest queue and batch.
            batcher: Arc::new(batch::Batcher::new(2 * shared, batch::MAX_BATCH)),
            lookups: Default::default(),
        })
    }

    /// A separate one-connection handle on the same database, for the health probe:
    /// a request pool exhausted by load must not make the probe fail. (Its shared
    /// readers are never used, so never connected.)
    pub(crate) fn dedicated(&self) -> Result<Db> {
        Db::build(self.target.clone(), 2, self.timeout, self.session_options)
    }

    /// The sessions this handle holds open now (both pools).
    pub(crate) fn open_connections(&self) -> usize {
        self.pool.status().size + self.readers.open()
    }

    /// The same handle with at most `n` lookups per batched statement (1: no batching).
    pub(crate) fn max_batch(mut self, n: usize) -> Db {
        let (_, shared) = split_of(&self);
        self.batcher = Arc::new(batch::Batcher::new(2 * shared, n));
        self
    }

    /// Tokens looked up so far (a batch counts each of its distinct tokens), for the
    /// metrics registry.
    pub(crate) fn lookups(&self) -> &prometheus_client::metrics::counter::Counter {
        &self.lookups
    }

    /// The statement latency histograms, for the metrics registry.
    pub fn statement_seconds(&self) -> &StatementSeconds {
        &self.statement_seconds
    }

    /// Runs `statement` on `client` (unnamed, typed: see [`sql`]) and returns its rows,
    /// timing it.
    pub(crate) async fn query(
        &self,
        client: &tokio_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        Ok(self.rows(client, statement, params).await?.0)
    }

    /// [`Db::query`] for a statement that returns exactly one row.
    pub(crate) async fn query_one(
        &self,
        client: &tokio_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row> {
        self.query_opt(client, statement, params)
            .await?
            .ok_or_else(|| Error::Internal(format!("{}: no row", statement.name)))
    }

    /// [`Db::query`] for a statement that returns at most one row.
    pub(crate) async fn query_opt(
        &self,
        client: &tokio_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>> {
        let mut rows = self.query(client, statement, params).await?;
        if rows.len() > 1 {
            return Err(Error::Internal(format!(
                "{}: more than one row",
                statement.name
            )));
        }
        Ok(rows.pop())
    }

    /// Runs `statement` for its effect: the number of rows it changed.
    pub(crate) async fn execute(
        &self,
        client: &tokio_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64> {
        Ok(self.rows(client, statement, params).await?.1)
    }

    async fn rows(
        &self,
        client: &tokio_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(Vec<Row>, u64)> {
        arity(statement, params)?;
        let run = async {
            let typed = params.iter().copied().zip(statement.params.iter().cloned());
            let stream = client.query_typed_raw(statement.sql, typed).await?;
            futures_util::pin_mut!(stream);
            let mut rows = Vec::new();
            while let Some(row) = stream.try_next().await? {
                rows.push(row);
            }
            Ok((rows, stream.rows_affected().unwrap_or(0)))
        };
        Ok(self.timed(statement, run).await?)
    }

    /// The rows of a read-only `statement` on a shared reader connection.
    ///
    /// On a direct session the statement is prepared once per connection (named, kept
    /// in the connection's statement cache) and from then on only bound and executed:
    /// the server parses and plans it once instead of at every call, which at the
    /// cold path's rates was most of the database's work per lookup (docs/benchmarks.md).
    /// Through a pooler, where the next statement may run on another server connection,
    /// it goes unnamed like every other statement.
    pub(crate) async fn read_rows(
        &self,
        client: &deadpool_postgres::Client,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        if !self.session_options {
            return self.query(client, statement, params).await;
        }
        arity(statement, params)?;
        let prepared = self
            .timed(statement, async {
                let named = client
                    .prepare_typed_cached(statement.sql, statement.params)
                    .await?;
                client.query(&named, params).await
            })
            .await;
        match prepared {
            Err(e) if stale_statement(&e) => {
                // The session lost the statement (a DEALLOCATE or DISCARD behind our
                // back) or its plan no longer fits the schema (a newer replica's
                // migration changed a column): forget what this connection prepared,
                // and run this one unnamed; the next read prepares afresh.
                tracing::info!(
                    statement = statement.name,
                    "a prepared statement went stale ({e}); preparing again"
                );
                client.statement_cache.clear();
                self.query(client, statement, params).await
            }
            other => Ok(other?),
        }
    }

    /// Runs a statement's execution `run` in its span, and times it.
    async fn timed<T>(
        &self,
        statement: &Statement,
        run: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> std::result::Result<T, tokio_postgres::Error> {
        let started = std::time::Instant::now();
        // The statement's name only: never its parameters.
        let result =
            tracing::Instrument::instrument(run, crate::trace::db_statement(statement.name)).await;
        if result.is_ok() {
            self.statement_seconds
                .get_or_create(&StatementLabel {
                    statement: statement.name,
                })
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// What health waits on: woken whenever a call finds the database unavailable.
    pub(crate) fn trouble(&self) -> Arc<tokio::sync::Notify> {
        self.trouble.clone()
    }

    /// Says that a call found the database unavailable.
    fn noticed<T>(&self, result: Result<T>) -> Result<T> {
        if matches!(result, Err(Error::Unavailable(_))) {
            self.trouble.notify_one();
        }
        result
    }

    /// The connection settings (without the per-request `statement_timeout`), for
    /// connections outside the pool such as the change listener.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.target.config
    }

    /// The database and its TLS, for connections outside the pool.
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// What a call that ran out of `--db-timeout` reports.
    fn timed_out(&self) -> Error {
        Error::Unavailable(format!(
            "no answer from the database within {:?}",
            self.timeout
        ))
    }

    /// Runs `op` with a pooled client, bounded by the operation timeout (waiting
    /// for a connection included).
    pub(crate) async fn run<T, F>(&self, op: F) -> Result<T>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T>,
    {
        let result = self.run_exclusive(op).await;
        self.noticed(result)
    }

    async fn run_exclusive<T, F>(&self, op: F) -> Result<T>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || self.timed_out();
        let client = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| timed_out())??;
        match tokio::time::timeout_at(deadline, op(&client)).await {
            Ok(result) => result,
            Err(_) => {
                // Ask the server to abandon the statement we stopped waiting for, so
                // that a call reported UNAVAILABLE does not then complete behind the
                // caller's back (statement_timeout is the backstop).
                let cancel = client.cancel_token();
                let _ = tokio::time::timeout(self.timeout, self.target.cancel(cancel)).await;
                // Closed, not returned to the pool: a connection that stopped answering
                // (its server's machine vanished in a failover, and nothing closed the
                // connection) still looks open, and would be handed to call after call
                // until the kernel gives up on it, many minutes later.
                drop(deadpool_postgres::Object::take(client));
                Err(timed_out())
            }
        }
    }

    /// Runs a read-only `op` on a connection shared with other readers (see
    /// [`shared`]), bounded by the operation timeout. The statement is not cancelled on
    /// timeout (the connection carries other callers' queries); `statement_timeout`
    /// ends it on the server. The connection is abandoned instead
    /// ([`shared::Shared::abandon`]), as a pooled one is closed.
    pub(crate) async fn read<T, F>(&self, op: F) -> Result<T>
    where
        F: AsyncFnOnce(&deadpool_postgres::Client) -> Result<T>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || self.timed_out();
        let read = async {
            let client = tokio::time::timeout_at(deadline, self.readers.get())
                .await
                .map_err(|_| timed_out())??;
            match tokio::time::timeout_at(deadline, op(&client)).await {
                Ok(result) => result,
                Err(_) => {
                    self.readers.abandon(client);
                    Err(timed_out())
                }
            }
        };
        self.noticed(read.await)
    }

    /// Whether the startup options of this handle's sessions took effect: a direct
    /// session applies the `statement_timeout` it carries, while a pooler that drops
    /// startup options instead of refusing them (PgBouncer with
    /// `ignore_startup_parameters = options`) leaves the role's or the server's. A
    /// handle built without startup options answers false.
    pub async fn session_options_applied(&self) -> Result<bool> {
        if !self.session_options {
            return Ok(false);
        }
        let setting: String = self
            .run(async |c| {
                Ok(self
                    .query_one(c, &sql::STATEMENT_TIMEOUT_MS, &[])
                    .await?
                    .try_get(0)?)
            })
            .await?;
        Ok(setting == self.timeout.as_millis().max(1).to_string())
    }

    /// How many statements the next shared reader connection holds prepared (for the
    /// tests: whether lookups are prepared once per connection, or go unnamed).
    pub async fn prepared_on_a_reader(&self) -> Result<i64> {
        self.read(async |c| {
            Ok(self
                .query_one(c, &sql::PREPARED_HERE, &[])
                .await?
                .try_get(0)?)
        })
        .await
    }

    /// How many other sessions are connected to the database server.
    pub(crate) async fn other_clients(&self) -> Result<i64> {
        self.run(async |c| {
            Ok(self
                .query_one(c, &sql::OTHER_CLIENTS, &[])
                .await?
                .try_get(0)?)
        })
        .await
    }

    /// One trivial query: is the database reachable and answering?
    pub(crate) async fn ping(&self) -> Result<()> {
        self.run(async |c| {
            c.simple_query(sql::PING).await?;
            Ok(())
        })
        .await
    }

    /// Applies pending migrations with a pooled connection.
    pub async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(Error::connecting)?;
        migrate_client(&mut client).await
    }

    /// The migrations applied to this database, oldest first; `None` when it was never
    /// migrated (no history table). Needs only read access.
    pub async fn applied_migrations(&self) -> Result<Option<Vec<Migration>>> {
        let client = self.pool.get().await.map_err(Error::connecting)?;
        let exists: bool = self
            .query_one(&client, &sql::SCHEMA_HISTORY_EXISTS, &[])
            .await?
            .try_get(0)?;
        if !exists {
            return Ok(None);
        }
        let rows = self.query(&client, &sql::SCHEMA_HISTORY, &[]).await?;
        let applied = rows
            .iter()
            .map(|r| {
                Ok(Migration {
                    version: r.try_get(0)?,
                    name: r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
                    checksum: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(applied))
    }

    /// Closes the pools: later calls fail, idle connections are dropped.
    pub fn close(&self) {
        self.readers.close();
        self.pool.close();
    }
}
