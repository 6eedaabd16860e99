//! The flags every command takes, before or after it: which PostgreSQL (a URL, or the
//! embedded cluster under a data directory), the connection budget, the database timeout
//! and the token prefix, validated into [`DbSettings`].
use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::duration::parse_timer;
use crate::{
    db::Target,
    error::{Error, Result},
    token::Prefix,
};

/// Where the embedded cluster lives when no database URL is given.
pub(crate) const DEFAULT_DATA_DIR: &str = "./.auth-service";

/// Database selection and tuning, accepted before or after any subcommand.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL (production mode, shared by replicas), e.g.
    /// postgres://auth@db.internal/auth. Without it, an embedded cluster under
    /// --data-dir is used.
    // The value is never shown in --help: it may hold a password.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DATABASE_URL",
        hide_env_values = true,
        conflicts_with_all = ["data_dir", "database_url_file"]
    )]
    pub(crate) database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Secret), so that a password
    /// never appears in the environment or on a command line.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "data_dir"
    )]
    pub(crate) database_url_file: Option<PathBuf>,
    /// Directory of the embedded PostgreSQL cluster [default: ./.auth-service].
    #[arg(long, global = true, env = "AUTH_SERVICE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Directory holding initdb, pg_ctl and postgres for the embedded cluster
    /// [default: found on PATH, via pg_config, or under /usr/lib/postgresql].
    #[arg(long, global = true, env = "AUTH_SERVICE_PG_BINDIR")]
    pub(crate) pg_bindir: Option<PathBuf>,
    /// Most PostgreSQL sessions this process opens, of every kind: the request pool,
    /// the connections shared by lookups, the health probe, and (serve, with the cache
    /// on) the LISTEN and heartbeat connections. Size the database with: replicas x
    /// this, plus headroom, at most max_connections. At the cap, work queues, then is
    /// refused with UNAVAILABLE and a retry delay.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DB_MAX_CONNECTIONS",
        default_value_t = 12
    )]
    pub(crate) db_max_connections: usize,
    /// Most cache misses looked up in one statement when they queue (they are batched
    /// only while every shared connection is busy; 1 turns batching off).
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DB_MAX_BATCH",
        default_value_t = crate::db::batch::MAX_BATCH
    )]
    pub(crate) db_max_batch: usize,
    /// This process's name in PostgreSQL (`application_name` of every session it
    /// opens, so that pg_stat_activity counts them per replica): the pod name in
    /// Kubernetes [default: host:pid].
    #[arg(long, global = true, env = "AUTH_SERVICE_REPLICA_NAME")]
    pub(crate) replica_name: Option<String>,
    /// How long one database operation (including waiting for a pooled connection)
    /// may take before the call fails with UNAVAILABLE.
    #[arg(long, global = true, env = "AUTH_SERVICE_DB_TIMEOUT", default_value = "5s", value_parser = parse_timer)]
    pub(crate) db_timeout: Duration,
    /// Prefix of every token this service issues and accepts.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_TOKEN_PREFIX",
        default_value = auth_api::token::DEFAULT_PREFIX
    )]
    pub(crate) token_prefix: String,
}

/// Which PostgreSQL to use.
#[derive(Clone)]
pub(crate) enum Database {
    /// An external server (the URL may hold a password: never printed).
    Url(Box<Target>),
    /// The private embedded cluster.
    Embedded {
        data_dir: PathBuf,
        pg_bindir: Option<PathBuf>,
    },
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Url(target) => write!(f, "Url({target:?})"),
            Database::Embedded { data_dir, .. } => write!(f, "Embedded({})", data_dir.display()),
        }
    }
}

/// Validated database settings.
#[derive(Debug, Clone)]
pub(crate) struct DbSettings {
    pub(crate) database: Database,
    /// `--db-max-connections`: every session the process opens.
    pub(crate) max_connections: usize,
    /// `--db-max-batch`.
    pub(crate) max_batch: usize,
    /// `application_name` of every session.
    pub(crate) replica_name: String,
    pub(crate) timeout: Duration,
}

/// The fewest pooled connections: one for writes, one shared by lookups.
pub(crate) const MIN_POOLED: usize = 2;

/// `host:pid`: what tells replicas apart in pg_stat_activity when nothing names them.
fn default_replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// The URL may carry a password: never printed.
impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("database_url_file", &self.database_url_file)
            .field("data_dir", &self.data_dir)
            .field("pg_bindir", &self.pg_bindir)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_max_batch", &self.db_max_batch)
            .field("replica_name", &self.replica_name)
            .field("db_timeout", &self.db_timeout)
            .field("token_prefix", &self.token_prefix)
            .finish()
    }
}

impl DbArgs {
    pub(crate) fn settings(&self) -> Result<DbSettings> {
        let url = match (&self.database_url, &self.database_url_file) {
            (Some(url), _) => Some((url.clone(), "--database-url / AUTH_SERVICE_DATABASE_URL")),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    Error::Config(format!(
                        "--database-url-file / AUTH_SERVICE_DATABASE_URL_FILE: cannot read {}: {e}",
                        file.display()
                    ))
                })?;
                // A Secret mounted from `kubectl create secret --from-file`, or a file an
                // editor wrote, ends in a newline.
                Some((text.trim().to_owned(), "the URL in --database-url-file"))
            }
            (None, None) => None,
        };
        let database = match url {
            Some((url, from)) => Database::Url(Box::new(Target::parse(&url).map_err(|e| {
                Error::Config(format!(
                    "{from} is not a PostgreSQL URL ({e}); expected e.g. \
                     postgres://user:password@host:5432/dbname?sslmode=verify-full"
                ))
            })?)),
            None => Database::Embedded {
                data_dir: self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                pg_bindir: self.pg_bindir.clone(),
            },
        };
        if self.db_max_connections < MIN_POOLED {
            return Err(Error::Config(format!(
                "--db-max-connections must be at least {MIN_POOLED}"
            )));
        }
        if self.db_max_batch == 0 {
            return Err(Error::Config(
                "--db-max-batch must be at least 1 (1 turns batching off)".into(),
            ));
        }
        Ok(DbSettings {
            database,
            max_connections: self.db_max_connections,
            max_batch: self.db_max_batch,
            replica_name: match &self.replica_name {
                Some(name) if !name.trim().is_empty() => name.trim().to_owned(),
                _ => default_replica_name(),
            },
            timeout: self.db_timeout,
        })
    }

    pub(crate) fn prefix(&self) -> Result<Prefix> {
        Prefix::new(&self.token_prefix)
            .map_err(|e| Error::Config(format!("--token-prefix / AUTH_SERVICE_TOKEN_PREFIX: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn db_flags_go_before_or_after_the_subcommand() {
        let before = parse(&["--data-dir", "/x", "token", "list"]).unwrap();
        let after = parse(&["token", "list", "--data-dir", "/x"]).unwrap();
        assert_eq!(before.db.data_dir, after.db.data_dir);
        let url = parse(&["migrate", "--database-url", "postgres://a@b/c"]).unwrap();
        assert!(matches!(
            url.db.settings().unwrap().database,
            Database::Url(_)
        ));
    }

    #[test]
    fn debug_never_shows_the_database_password() {
        let cli = parse(&["migrate", "--database-url", "postgres://u:hunter2@h/d"]).unwrap();
        assert!(!format!("{cli:?}").contains("hunter2"));
        let settings = cli.db.settings().unwrap();
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn url_and_data_dir_conflict() {
        assert!(
            parse(&[
                "--database-url",
                "postgres://a@b/c",
                "--data-dir",
                "/x",
                "migrate"
            ])
            .is_err()
        );
    }

    #[test]
    fn bad_url_names_the_flag_and_hides_nothing_secret() {
        let cli = parse(&[
            "migrate",
            "--database-url",
            "postgres://u:hunter2@h:notaport/d",
        ])
        .unwrap();
        let err = cli.db.settings().unwrap_err().to_string();
        assert!(err.contains("--database-url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
