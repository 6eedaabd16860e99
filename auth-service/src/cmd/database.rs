//! Opening the database a command works on: the external server, or the embedded
//! cluster (started if need be), with its schema brought up to date or checked; and
//! closing it in order.
use crate::{
    config::{Database, DbSettings},
    db::{self, Db, Migration, Target},
    embedded::{Cluster, ClusterOptions},
    error::{Error, Result},
};

/// An open database, and the embedded cluster behind it when there is one.
pub(crate) struct Opened {
    pub(crate) db: Db,
    pub(crate) cluster: Option<Cluster>,
}

/// Who is opening the database: `serve` owns the embedded cluster; a one-shot
/// command borrows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Server,
    OneShot,
}

impl Opened {
    /// Closes the pool, then stops the embedded cluster if this process owns it. A
    /// one-shot command that started the cluster leaves it running when a `serve`
    /// has claimed the data directory meanwhile (it adopts the cluster), or when
    /// another process is connected to it.
    pub(crate) async fn close(self, role: Role) -> Result<()> {
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

/// What opening does about the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// Apply the migrations the database lacks (`migrate`, `serve`, the `token`
    /// commands). A schema that is exactly current is only read, so that a role without
    /// DDL rights (the runtime role of the prune CronJob) can run the `token` commands.
    Migrate,
    /// Change nothing; fail, naming `auth-service migrate`, unless every migration this
    /// binary carries is applied (`serve --no-migrate`). Migrations of a newer release
    /// are accepted, with a warning, so that a rollback can start.
    Check,
}

/// How the connections of a command are laid out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layout {
    /// Sessions the command opens outside the pools (serve: the health probe, the
    /// LISTEN and heartbeat connections), out of `--db-max-connections`.
    pub(crate) outside_pools: usize,
    /// A direct connection in session semantics (`--database-listen-url`), when the
    /// main URL goes through a transaction-pooling PgBouncer: migrations run over it
    /// (they take a session-level lock), and pooled sessions carry no startup options.
    pub(crate) session: Option<Target>,
}

/// Connects (starting the embedded cluster if configured), and applies or checks the
/// migrations.
pub(crate) async fn open(
    settings: &DbSettings,
    role: Role,
    schema: Schema,
    layout: Layout,
) -> Result<Opened> {
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
    let mut target = target;
    target.config.application_name(&settings.replica_name);
    let pools = settings
        .max_connections
        .saturating_sub(layout.outside_pools);
    let db = match &layout.session {
        None => Db::connect_to(target.clone(), pools, settings.timeout)?,
        Some(_) => Db::through_pooler(target.clone(), pools, settings.timeout)?,
    };
    // PgBouncer refuses the startup option that carries statement_timeout, or, with
    // ignore_startup_parameters = options, accepts it and drops it: either way the URL
    // goes through a pooler, whatever the flags say. Sessions then go without startup
    // options, and nothing is prepared: a session is not ours from one statement to the
    // next, and a statement prepared on one may be missing, or another client's, on the
    // next.
    let pooler = match db.pool().get().await {
        Err(deadpool_postgres::PoolError::Backend(e)) if refuses_startup_options(&e) => {
            Some("refuses startup options (PgBouncer)")
        }
        Ok(client) if layout.session.is_none() => {
            drop(client);
            match db.session_options_applied().await {
                Ok(false) => Some("drops startup options"),
                _ => None,
            }
        }
        _ => None,
    };
    let db = match pooler {
        Some(how) => {
            tracing::warn!(
                "the database URL goes through a pooler that {how}: sessions carry no \
                 statement_timeout (set it on the role: ALTER ROLE ... SET \
                 statement_timeout), and statements are not prepared"
            );
            db.close();
            Db::through_pooler(target, pools, settings.timeout)?
        }
        None => db,
    };
    let db = db.max_batch(settings.max_batch);
    let opened = Opened { db, cluster };
    let prepared = match layout.session {
        // One session for the migrations, outside the budget's pools: it is closed
        // before the server opens its LISTEN connection.
        Some(mut session) => {
            session.config.application_name(&settings.replica_name);
            let direct = Db::connect_to(session, crate::config::MIN_POOLED, settings.timeout)?;
            let prepared = prepare(&direct, schema, true).await;
            direct.close();
            prepared
        }
        None => prepare(&opened.db, schema, opened.cluster.is_none()).await,
    };
    // Released once connected (the pool keeps the connection): a one-shot command
    // deciding whether to stop the cluster now counts this process as a client.
    drop(deciding);
    if let Err(e) = prepared {
        let _ = opened.close(role).await;
        return Err(e);
    }
    Ok(opened)
}

/// PgBouncer's answer to a startup option it does not pass on: `FATAL: unsupported
/// startup parameter: options`, SQLSTATE 08P01 (protocol violation). The code alone is
/// not enough (any protocol violation has it); the message is PgBouncer's own, checked
/// by the PgBouncer tests against the real thing.
fn refuses_startup_options(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::PROTOCOL_VIOLATION
            && db.message().contains("unsupported startup parameter")
    })
}

/// Brings the schema up to date (`Schema::Migrate`) or checks it (`Schema::Check`).
/// `external`: the database is `--database-url`'s, not the embedded cluster.
async fn prepare(db: &Db, schema: Schema, external: bool) -> Result<()> {
    let applied = db
        .applied_migrations()
        .await
        .map_err(|e| connecting(e, external))?;
    let state = compare(&db::known_migrations(), applied.as_deref());
    match (&state, schema) {
        // Nothing to do, and nothing to change: no DDL rights needed.
        (SchemaState::Current { newer }, _) if newer.is_empty() => Ok(()),
        // refinery decides, as it always has: it applies what is pending, and refuses a
        // database with migrations it does not carry or that differ from its own.
        (_, Schema::Migrate) => db.migrate().await.map_err(|e| connecting(e, external)),
        // A release migrated the database ahead of this one (a rollout that runs the
        // migration Job first, or a rollback): this one was built for the schema before,
        // and migrations are kept compatible with the release before them.
        (SchemaState::Current { newer }, Schema::Check) => {
            tracing::warn!(
                newer = %newer.iter().map(Migration::to_string).collect::<Vec<_>>().join(", "),
                "the database has migrations this auth-service does not carry: a newer \
                 release migrated it; serving on it"
            );
            Ok(())
        }
        (_, Schema::Check) => require_current(&state),
    }
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

/// How the database's schema compares with the migrations this binary carries.
#[derive(Debug, PartialEq, Eq)]
enum SchemaState {
    /// Every migration of ours is applied; `newer` ones too, when a later release
    /// migrated the database (a rolling upgrade, a rollback).
    Current { newer: Vec<Migration> },
    /// Never migrated (`latest` is `None` and no history exists), or migrations of ours
    /// are missing.
    Behind {
        latest: Option<Migration>,
        pending: Vec<Migration>,
    },
    /// The database recorded another migration under one of our versions: it was
    /// migrated by a build whose migrations differ.
    Diverged {
        recorded: Migration,
        ours: Migration,
    },
}

/// Compares what the database recorded (`None`: it never was migrated) with `known`.
fn compare(known: &[Migration], applied: Option<&[Migration]>) -> SchemaState {
    let applied = applied.unwrap_or_default();
    let mut pending = Vec::new();
    for ours in known {
        match applied.iter().find(|a| a.version == ours.version) {
            None => pending.push(ours.clone()),
            Some(recorded) if recorded.checksum != ours.checksum => {
                return SchemaState::Diverged {
                    recorded: recorded.clone(),
                    ours: ours.clone(),
                };
            }
            Some(_) => {}
        }
    }
    if !pending.is_empty() {
        return SchemaState::Behind {
            latest: applied.iter().max_by_key(|a| a.version).cloned(),
            pending,
        };
    }
    SchemaState::Current {
        newer: applied
            .iter()
            .filter(|a| !known.iter().any(|k| k.version == a.version))
            .cloned()
            .collect(),
    }
}

/// `serve --no-migrate`'s verdict: `Ok` when the schema is current, else the error
/// that names the fix.
fn require_current(state: &SchemaState) -> Result<()> {
    const FLAG: &str = "--no-migrate / AUTH_SERVICE_NO_MIGRATE";
    const FIX: &str = "run `auth-service migrate` against this database first (as a role \
                       that may change the schema), or start serve without --no-migrate";
    let names = |ms: &[Migration]| {
        ms.iter()
            .map(Migration::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match state {
        SchemaState::Current { .. } => Ok(()),
        SchemaState::Behind { latest: None, .. } => Err(Error::Config(format!(
            "{FLAG}: the database has no auth-service schema yet (no migration was ever \
             applied): {FIX}"
        ))),
        SchemaState::Behind {
            latest: Some(latest),
            pending,
        } => Err(Error::Config(format!(
            "{FLAG}: the database schema is at {latest}, and this auth-service needs {} \
             (not applied: {}): {FIX}",
            pending
                .last()
                .map_or_else(String::new, Migration::to_string),
            names(pending)
        ))),
        SchemaState::Diverged { recorded, ours } => Err(Error::Config(format!(
            "{FLAG}: the database recorded {recorded} with another checksum than this \
             auth-service's {ours}: it was migrated by a build whose migrations differ; \
             migrate it with this release's `auth-service migrate`, or run the release \
             that migrated it"
        ))),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(version: i64, checksum: &str) -> Migration {
        Migration {
            version,
            name: format!("m{version}"),
            checksum: checksum.into(),
        }
    }

    #[test]
    fn the_binarys_migrations_are_listed_in_order() {
        let known = db::known_migrations();
        assert!(known.len() >= 2, "{known:?}");
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(known[0].to_string(), "V1__tokens");
    }

    #[test]
    fn a_database_with_every_migration_is_current() {
        let known = [m(1, "a"), m(2, "b")];
        assert_eq!(
            compare(&known, Some(&known)),
            SchemaState::Current { newer: vec![] }
        );
        assert!(require_current(&compare(&known, Some(&known))).is_ok());
    }

    #[test]
    fn newer_migrations_from_a_later_release_are_accepted() {
        let known = [m(1, "a")];
        let state = compare(&known, Some(&[m(1, "a"), m(2, "b")]));
        assert_eq!(
            state,
            SchemaState::Current {
                newer: vec![m(2, "b")]
            }
        );
        assert!(require_current(&state).is_ok());
    }

    #[test]
    fn a_database_never_migrated_names_the_command() {
        let known = [m(1, "a"), m(2, "b")];
        for applied in [None, Some(&[][..])] {
            let state = compare(&known, applied);
            assert!(
                matches!(state, SchemaState::Behind { latest: None, .. }),
                "{state:?}"
            );
            let err = require_current(&state).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            assert!(text.contains("no auth-service schema"), "{text}");
            assert!(text.contains("`auth-service migrate`"), "{text}");
        }
    }

    #[test]
    fn a_missing_migration_is_named_with_the_version_applied() {
        let known = [m(1, "a"), m(2, "b"), m(3, "c")];
        let state = compare(&known, Some(&[m(1, "a")]));
        let text = require_current(&state).unwrap_err().to_string();
        assert!(text.contains("at V1__m1"), "{text}");
        assert!(text.contains("needs V3__m3"), "{text}");
        assert!(text.contains("not applied: V2__m2, V3__m3"), "{text}");
        assert!(text.contains("`auth-service migrate`"), "{text}");
    }

    #[test]
    fn another_builds_migration_under_our_version_diverges() {
        let known = [m(1, "a"), m(2, "b")];
        let state = compare(&known, Some(&[m(1, "a"), m(2, "other")]));
        assert!(matches!(state, SchemaState::Diverged { .. }), "{state:?}");
        let err = require_current(&state).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("V2__m2"), "{err}");
    }
}
