//! The harness the tests share (the service's and the agent's): one throwaway
//! PostgreSQL cluster per test process, a fresh database per test cloned from a
//! migrated template, and the real server started through `server::run` on port 0.
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use auth_api::v1::auth_service_client::AuthServiceClient;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::{
    config::{RenewalPolicy, ServeSettings},
    db::{self, Db, sql},
    embedded::{Cluster, ClusterOptions},
    error::{Error, Result},
    server,
    token::{self, Prefix},
};

const TEMPLATE: &str = "auth_template";
static SHARED: OnceLock<std::result::Result<Shared, String>> = OnceLock::new();
static TEMPLATE_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Shared {
    cluster: Cluster,
    dir: PathBuf,
}

/// Options for test clusters: no fsync (speed), room for several servers' pools.
pub fn test_cluster_options() -> ClusterOptions {
    ClusterOptions {
        fsync: false,
        max_connections: 300,
        ..ClusterOptions::default()
    }
}

/// A unique scratch directory under the system temp dir (short: Unix socket paths
/// are limited to 107 bytes).
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("auth-{tag}-{}-{n}", std::process::id()))
}

extern "C" fn stop_shared_cluster() {
    if let Some(Ok(shared)) = SHARED.get() {
        // `immediate`: the process is exiting and the data is throwaway.
        shared.cluster.stop_immediately();
        let _ = std::fs::remove_dir_all(&shared.dir);
    }
}

fn shared() -> Result<&'static Shared> {
    let shared = SHARED.get_or_init(|| {
        let dir = scratch_dir("test");
        let cluster =
            Cluster::start(&dir, None, &test_cluster_options()).map_err(|e| e.to_string())?;
        // SAFETY: registering a plain `extern "C" fn` has no preconditions; it runs
        // once at process exit to stop the cluster and delete its directory.
        unsafe { libc::atexit(stop_shared_cluster) };
        Ok(Shared { cluster, dir })
    });
    shared
        .as_ref()
        .map_err(|e| Error::Config(format!("test PostgreSQL: {e}")))
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<(tokio_postgres::Client, JoinHandle<()>)> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    Ok((
        client,
        tokio::spawn(async move {
            let _ = connection.await;
        }),
    ))
}

/// A connection config for a brand-new, migrated database of the shared cluster.
pub async fn fresh_database() -> Result<tokio_postgres::Config> {
    let shared = shared()?;
    TEMPLATE_READY
        .get_or_try_init(|| async {
            let (admin, admin_task) = connect(&shared.cluster.client_config("postgres")).await?;
            admin
                .simple_query(&format!("CREATE DATABASE {TEMPLATE}"))
                .await?;
            drop(admin);
            let _ = admin_task.await;
            let (mut client, task) = connect(&shared.cluster.client_config(TEMPLATE)).await?;
            db::migrate_client(&mut client).await?;
            // Every connection to the template must be gone before it can be cloned.
            drop(client);
            let _ = task.await;
            Ok::<(), Error>(())
        })
        .await?;
    let name = format!(
        "test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, task) = connect(&shared.cluster.client_config("postgres")).await?;
    admin
        .simple_query(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
        .await?;
    drop(admin);
    let _ = task.await;
    Ok(shared.cluster.client_config(&name))
}

/// A pooled handle on a fresh test database.
pub async fn test_db() -> Result<Db> {
    Db::new(fresh_database().await?, 32, Duration::from_secs(5))
}

/// Serve settings for tests: default renewal policy and prefix, a fast health probe.
pub fn test_settings(policy: RenewalPolicy) -> ServeSettings {
    ServeSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        policy,
        prefix: Prefix::default(),
        db_check_interval: Duration::from_millis(200),
    }
}

/// The real server, started through `server::run` on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl TestServer {
    pub async fn start(db: Db, settings: ServeSettings) -> Result<TestServer> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| Error::Config(format!("bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Config(format!("local_addr: {e}")))?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::run(listener, db.clone(), settings, async {
            let _ = rx.await;
        }));
        Ok(TestServer {
            addr,
            db,
            stop: Some(tx),
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Result<AuthServiceClient<Channel>> {
        AuthServiceClient::connect(self.url())
            .await
            .map_err(|e| Error::Config(format!("connect: {e}")))
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::Internal(format!("server task: {e}")))?
    }
}

/// Creates a token directly (as `token create` does) and returns (id, raw token).
pub async fn create_token(
    db: &Db,
    user: &str,
    lifetime: Option<Duration>,
) -> Result<(String, String)> {
    let prefix = Prefix::default();
    let raw = token::generate(&prefix)?;
    let created = db
        .create_token(
            user,
            "test",
            &token::digest_of(&raw, &prefix),
            &["read".to_string()],
            lifetime,
            "test",
        )
        .await?;
    Ok((created.id, raw.expose().to_string()))
}

/// Moves a token's expiry to now + `secs` (negative: into the past).
pub async fn set_expires_in(db: &Db, id: &str, secs: f64) -> Result<()> {
    db.run(async |c| Ok(c.execute(sql::TEST_SET_EXPIRY, &[&id, &secs]).await?))
        .await?;
    Ok(())
}

/// Moves a token's creation time `secs` into the past (for the lifetime cap).
pub async fn set_created_ago(db: &Db, id: &str, secs: f64) -> Result<()> {
    db.run(async |c| Ok(c.execute(sql::TEST_SET_CREATED_AGO, &[&id, &secs]).await?))
        .await?;
    Ok(())
}

/// Expiry before and after each audit event: (kind, before, after).
pub type EventExpiry = (String, Option<SystemTime>, Option<SystemTime>);

/// A token's audit trail with the expiries each event recorded, oldest first.
pub async fn event_expiries(db: &Db, id: &str) -> Result<Vec<EventExpiry>> {
    let rows = db
        .run(async |c| Ok(c.query(sql::TEST_EVENT_EXPIRIES, &[&id]).await?))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// A token's stored expiry and the database's clock.
pub async fn stored_expiry(db: &Db, id: &str) -> Result<(Option<SystemTime>, SystemTime)> {
    let row = db
        .run(async |c| Ok(c.query_one(sql::TEST_EXPIRY, &[&id]).await?))
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A token's audit trail as (kind, caller), oldest first.
pub async fn events(db: &Db, id: &str) -> Result<Vec<(String, String)>> {
    let rows = db
        .run(async |c| Ok(c.query(sql::TEST_EVENTS, &[&id]).await?))
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// A token's `last_used_at`.
pub async fn last_used(db: &Db, id: &str) -> Result<Option<SystemTime>> {
    let row = db
        .run(async |c| Ok(c.query_one(sql::TEST_LAST_USED, &[&id]).await?))
        .await?;
    Ok(row.try_get(0)?)
}

/// Every row of the token tables rendered as text (to search for leaked secrets).
pub async fn all_stored_text(db: &Db) -> Result<String> {
    let rows = db
        .run(async |c| Ok(c.query(sql::TEST_ALL_STORED_TEXT, &[]).await?))
        .await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<_, String>(0)?))
        .collect::<Result<Vec<_>>>()
        .map(|v| v.join("\n"))
}

/// A transaction holding one token's row lock, so that concurrent renews pile up
/// behind it and then race (the lost-race path, made deterministic).
pub struct RowLock {
    client: tokio_postgres::Client,
    task: JoinHandle<()>,
}

impl RowLock {
    pub async fn take(config: &tokio_postgres::Config, id: &str) -> Result<RowLock> {
        let (client, task) = connect(config).await?;
        client.simple_query("BEGIN").await?;
        client.query(sql::TEST_LOCK_ROW, &[&id]).await?;
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

/// How many sessions of the database behind `db` wait on a lock.
pub async fn lock_waiters(db: &Db) -> Result<i64> {
    let row = db
        .run(async |c| Ok(c.query_one(sql::TEST_LOCK_WAITERS, &[]).await?))
        .await?;
    Ok(row.try_get(0)?)
}

/// A libpq key-value connection string for `config` (for `--database-url`).
pub fn conninfo(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        None => String::new(),
    };
    format!(
        "host={host} port={} user={} dbname={}",
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}
