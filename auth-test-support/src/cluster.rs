//! One throwaway PostgreSQL cluster per test process, without durability (`initdb
//! --no-sync`, `fsync = off`), and a fresh database per test, cloned from a template
//! that is migrated once.
use std::{
    path::PathBuf,
    sync::{
        Mutex, Once, OnceLock, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use auth_service::{
    db::{self, Db},
    embedded::{Cluster, ClusterOptions},
};
use tokio::task::JoinHandle;

use crate::Result;

const TEMPLATE: &str = "auth_template";
static SHARED: OnceLock<std::result::Result<Shared, String>> = OnceLock::new();
static TEMPLATE_READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);
/// Every scratch directory this process made, removed when it exits.
static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static CLEAN_UP_AT_EXIT: Once = Once::new();

struct Shared {
    cluster: Cluster,
}

/// Options for test clusters: no durability (speed), room for several servers' pools.
pub fn options() -> ClusterOptions {
    ClusterOptions {
        fsync: false,
        max_connections: 300,
        ..ClusterOptions::default()
    }
}

/// A unique scratch directory under the system temp dir (short: Unix socket paths
/// are limited to 107 bytes), removed when the process exits: a test's own cluster
/// (tens of MiB), nginx's and PgBouncer's files do not pile up run after run.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("auth-{tag}-{}-{n}", std::process::id()));
    CLEAN_UP_AT_EXIT.call_once(clean_up_at_exit);
    SCRATCH
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(dir.clone());
    dir
}

/// Stops `cluster`'s server (fast shutdown, on a blocking thread) and hands it back, so
/// that a test can start it again.
pub async fn stop(mut cluster: Cluster) -> Result<Cluster> {
    tokio::task::spawn_blocking(move || {
        cluster.stop_server().map_err(|e| e.to_string())?;
        Ok::<_, String>(cluster)
    })
    .await?
    .map_err(Into::into)
}

/// Starts a cluster of its own (for tests that stop and start it) under a new scratch
/// directory; returns it and the directory.
pub async fn own(tag: &str) -> Result<(Cluster, PathBuf)> {
    let dir = scratch_dir(tag);
    let cluster = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || Cluster::start(&dir, None, &options())
    })
    .await??;
    Ok((cluster, dir))
}

/// Kills `cluster`'s server at once (`pg_ctl stop -m immediate`: no checkpoint), for a
/// throwaway cluster whose data no one will read again. Test-only, so it is here and not
/// on `Cluster`, which ships in the release binary.
pub fn stop_immediately(cluster: &Cluster) {
    let _ = cluster
        .command("pg_ctl")
        .arg("-D")
        .arg(cluster.pgdata())
        .args(["stop", "-m", "immediate", "-w"])
        .output();
}

/// At exit: stops the shared cluster, and removes every scratch directory. (A test's
/// own cluster is stopped by the test; one left running by a test that failed stops
/// by itself once its data directory is gone: PostgreSQL checks its lock file.)
extern "C" fn clean_up() {
    if let Some(Ok(shared)) = SHARED.get() {
        // `immediate`: the process is exiting and the data is throwaway.
        stop_immediately(&shared.cluster);
    }
    if let Ok(dirs) = SCRATCH.try_lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Registers [`clean_up`] to run at process exit: a test binary ends with
/// `std::process::exit`, which drops no static, and nothing else would stop the
/// server it started or remove the directories it made. rustix has no `atexit` (nor
/// std), hence libc and `unsafe`.
#[allow(unsafe_code)]
fn clean_up_at_exit() {
    // SAFETY: registering a plain `extern "C" fn` has no preconditions; it runs once,
    // at process exit.
    unsafe { libc::atexit(clean_up) };
}

fn shared() -> Result<&'static Shared> {
    let shared = SHARED.get_or_init(|| {
        let dir = scratch_dir("test");
        let cluster = Cluster::start(&dir, None, &options()).map_err(|e| e.to_string())?;
        Ok(Shared { cluster })
    });
    shared
        .as_ref()
        .map_err(|e| format!("test PostgreSQL: {e}").into())
}

/// A direct connection (outside any pool), its driver running on a task.
pub async fn connect(
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
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
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

/// A connection config for a brand-new database of the shared cluster with no schema at
/// all: what `auth-service migrate` has never run on.
pub async fn empty_database() -> Result<tokio_postgres::Config> {
    let shared = shared()?;
    let name = format!(
        "empty_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let (admin, task) = connect(&shared.cluster.client_config("postgres")).await?;
    admin
        .simple_query(&format!("CREATE DATABASE {name}"))
        .await?;
    drop(admin);
    let _ = task.await;
    Ok(shared.cluster.client_config(&name))
}

/// A client program (`psql`, ...) of the installation that runs the shared cluster, as
/// its user: not whatever the PATH happens to hold.
pub fn client_program(name: &str) -> Result<std::process::Command> {
    Ok(shared()?.cluster.command(name))
}

/// A pooled handle on a fresh test database.
pub async fn test_db() -> Result<Db> {
    Ok(Db::new(
        fresh_database().await?,
        32,
        Duration::from_secs(5),
    )?)
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

/// The Unix socket a config's (Unix-socket) host names: what a [`crate::proxy::Front`]
/// relays to.
pub fn socket(config: &tokio_postgres::Config) -> PathBuf {
    let dir = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Unix(path)) => path.clone(),
        _ => PathBuf::from("/tmp"),
    };
    dir.join(format!(
        ".s.PGSQL.{}",
        config.get_ports().first().copied().unwrap_or(5432)
    ))
}

/// `config` with its host replaced by a TCP address (a front's).
pub fn via(config: &tokio_postgres::Config, addr: std::net::SocketAddr) -> tokio_postgres::Config {
    let mut via = tokio_postgres::Config::new();
    via.host(addr.ip().to_string())
        .port(addr.port())
        .user(config.get_user().unwrap_or("postgres"))
        .dbname(config.get_dbname().unwrap_or("postgres"));
    via
}

/// A cluster of the test's own that is stopped (at once) and deleted when dropped, even
/// when the test fails half-way.
pub struct Guarded {
    cluster: Cluster,
    dir: PathBuf,
}

impl Guarded {
    pub async fn start(tag: &str) -> Result<Guarded> {
        let (cluster, dir) = own(tag).await?;
        Ok(Guarded { cluster, dir })
    }

    /// Guards a cluster the caller started under the scratch directory `dir`.
    pub fn adopt(cluster: Cluster, dir: PathBuf) -> Guarded {
        Guarded { cluster, dir }
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl std::ops::Deref for Guarded {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        stop_immediately(&self.cluster);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    /// Run by [`scratch_directories_are_removed_at_exit`], in a process of its own.
    #[test]
    #[ignore = "run by scratch_directories_are_removed_at_exit"]
    fn makes_a_scratch_directory() {
        let dir = super::scratch_dir("exit");
        std::fs::create_dir_all(dir.join("pgdata")).unwrap();
        std::fs::write(dir.join("pgdata").join("PG_VERSION"), b"15\n").unwrap();
        println!("\nSCRATCH={}", dir.display());
    }

    #[test]
    fn scratch_directories_are_removed_at_exit() {
        let out = crate::process::clean(std::env::current_exe().unwrap())
            .args(["cluster::tests::makes_a_scratch_directory", "--exact"])
            .args(["--ignored", "--nocapture"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let dir = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SCRATCH="))
            .unwrap_or_else(|| panic!("no directory in: {stdout}"));
        assert!(dir.contains("auth-exit-"), "{dir}");
        assert!(
            !std::path::Path::new(dir).exists(),
            "{dir} outlived the process that made it"
        );
    }
}
