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
    /// one-shot command that started the cluster leaves it running when another
    /// process (a `serve` that started meanwhile) is connected to it.
    pub async fn close(self, role: Role) -> Result<()> {
        let shared = match &self.cluster {
            Some(c) if c.owned() && role == Role::OneShot => {
                self.db.other_clients().await.unwrap_or(0) > 0
            }
            _ => false,
        };
        self.db.close();
        match self.cluster {
            Some(mut cluster) if shared => {
                tracing::info!("leaving the embedded PostgreSQL running: another process uses it");
                cluster.disown();
                Ok(())
            }
            Some(cluster) => tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .map_err(|e| Error::Internal(format!("stopping PostgreSQL: {e}")))?,
            None => Ok(()),
        }
    }
}

/// Connects (starting the embedded cluster if configured) and applies migrations.
pub async fn open(settings: &DbSettings, role: Role) -> Result<Opened> {
    let (target, cluster) = match &settings.database {
        Database::Url(target) => (target.as_ref().clone(), None),
        Database::Embedded {
            data_dir,
            pg_bindir,
        } => {
            let (data_dir, pg_bindir) = (data_dir.clone(), pg_bindir.clone());
            let cluster = tokio::task::spawn_blocking(move || {
                let options = ClusterOptions {
                    adopt_running: role == Role::Server,
                    ..ClusterOptions::default()
                };
                Cluster::start(&data_dir, pg_bindir.as_deref(), &options)
            })
            .await
            .map_err(|e| Error::Internal(format!("starting PostgreSQL: {e}")))??;
            (
                Target::plain(cluster.client_config("postgres")),
                Some(cluster),
            )
        }
    };
    let db = Db::connect_to(target, settings.pool_size, settings.timeout)?;
    let opened = Opened { db, cluster };
    if let Err(e) = opened.db.migrate().await {
        let hint = match &opened.cluster {
            None => " (check --database-url / --database-url-file and that the server is up)",
            Some(_) => "",
        };
        let _ = opened.close(role).await;
        return Err(match e {
            Error::Unavailable(cause) => {
                Error::Config(format!("cannot reach the database{hint}: {cause}"))
            }
            other => other,
        });
    }
    Ok(opened)
}
