//! Opening the database a command works on: the external server, or the embedded
//! cluster (started if need be), with migrations applied; and closing it in order.
use crate::{
    config::{Database, DbSettings},
    db::{Db, Target},
    embedded::{Cluster, ClusterOptions},
    error::{Error, Result},
};

/// An open database, and the embedded cluster behind it when there is one.
pub struct Opened {
    pub db: Db,
    pub cluster: Option<Cluster>,
}

/// Who is opening the database: `serve` owns the embedded cluster; a one-shot
/// command borrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    OneShot,
}

impl Opened {
    /// Closes the pool, then stops the embedded cluster if this process owns it. A
    /// one-shot command that started the cluster leaves it running when a `serve`
    /// has claimed the data directory meanwhile (it adopts the cluster), or when
    /// another process is connected to it.
    pub async fn close(self, role: Role) -> Result<()> {
        let cluster = match self.cluster {
            Some(cluster) if cluster.owned() => cluster,
            _ => {
                self.db.close();
                return Ok(());
            }
        };
        // Decided under the cluster lock: no `serve` can adopt the cluster, and no
        // command can start using it, between this check and the stop.
        let (cluster, deciding, serving) = blocking("stopping PostgreSQL", move || {
            let deciding = cluster.lock()?;
            let serving = role == Role::OneShot && cluster.serve_running(&deciding)?;
            Ok((cluster, deciding, serving))
        })
        .await?;
        let shared =
            role == Role::OneShot && (serving || self.db.other_clients().await.unwrap_or(0) > 0);
        self.db.close();
        if shared {
            tracing::info!("leaving the embedded PostgreSQL running: another process uses it");
            return Ok(());
        }
        blocking("stopping PostgreSQL", move || {
            cluster.stop_locked(&deciding)
        })
        .await
    }
}

/// Connects (starting the embedded cluster if configured) and applies migrations.
pub async fn open(settings: &DbSettings, role: Role) -> Result<Opened> {
    let (target, cluster, deciding) = match &settings.database {
        Database::Url(target) => (target.as_ref().clone(), None, None),
        Database::Embedded {
            data_dir,
            pg_bindir,
        } => {
            let (data_dir, pg_bindir) = (data_dir.clone(), pg_bindir.clone());
            let (cluster, deciding) = blocking("starting PostgreSQL", move || {
                let options = ClusterOptions {
                    adopt_running: role == Role::Server,
                    ..ClusterOptions::default()
                };
                Cluster::start_locked(&data_dir, pg_bindir.as_deref(), &options)
            })
            .await?;
            (
                Target::plain(cluster.client_config("postgres")),
                Some(cluster),
                Some(deciding),
            )
        }
    };
    let db = Db::connect_to(target, settings.pool_size, settings.timeout)?;
    let opened = Opened { db, cluster };
    let external = opened.cluster.is_none();
    let migrated = opened
        .db
        .migrate()
        .await
        .map_err(|e| connecting(e, external));
    // Released once connected (the pool keeps the connection): a one-shot command
    // deciding whether to stop the cluster now counts this process as a client.
    drop(deciding);
    if let Err(e) = migrated {
        let _ = opened.close(role).await;
        return Err(e);
    }
    Ok(opened)
}

/// A failure to reach the database at startup, with what to check. An unreachable
/// database is a runtime failure (exit 1: systemd retries); a login it refuses or a
/// database that does not exist is the configuration's (exit 2, see
/// [`Error::connecting`]).
fn connecting(e: Error, external: bool) -> Error {
    match (e, external) {
        (Error::Unavailable(cause), true) => Error::Unavailable(format!(
            "cannot connect (check --database-url / --database-url-file and that the server \
             is up): {cause}"
        )),
        (Error::Unavailable(cause), false) => Error::Unavailable(format!(
            "cannot connect to the embedded PostgreSQL: {cause}"
        )),
        (Error::Config(cause), true) => Error::Config(format!(
            "the database refused the connection (check the user, password and database \
             name in --database-url / --database-url-file): {cause}"
        )),
        (other, _) => other,
    }
}

/// Runs blocking cluster work (programs, file locks) off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("{what}: {e}")))?
}
