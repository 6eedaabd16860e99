//! The subcommands: `serve`, `token create|list|revoke`, `migrate`.
use std::{io::Write, time::SystemTime};

use tokio::net::TcpListener;

use crate::{
    config::{Cli, Command, CreateArgs, Database, DbSettings, Expiry, TokenCommand},
    db::Db,
    embedded::{Cluster, ClusterOptions},
    error::{Error, Result, fmt_time},
    server, token,
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
pub async fn open_database(settings: &DbSettings, role: Role) -> Result<Opened> {
    let (config, cluster) = match &settings.database {
        Database::Url(config) => (config.as_ref().clone(), None),
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
            (cluster.client_config("postgres"), Some(cluster))
        }
    };
    let db = Db::new(config, settings.pool_size, settings.timeout)?;
    let opened = Opened { db, cluster };
    if let Err(e) = opened.db.migrate().await {
        let hint = match &opened.cluster {
            None => " (check --database-url / AUTH_SERVICE_DATABASE_URL and that the server is up)",
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

/// Runs one parsed command line; `shutdown` ends `serve`.
pub async fn execute(cli: Cli, shutdown: impl Future<Output = ()>) -> Result<()> {
    let db_settings = cli.db.settings()?;
    match cli.command {
        Command::Serve(args) => {
            let settings = args.settings(&cli.db)?;
            let listener = TcpListener::bind(settings.listen).await.map_err(|e| {
                Error::Config(format!(
                    "cannot listen on {} (--listen / AUTH_SERVICE_LISTEN): {e}",
                    settings.listen
                ))
            })?;
            let opened = open_database(&db_settings, Role::Server).await?;
            tracing::info!(addr = %settings.listen, "auth-service listening");
            let served = server::run(listener, opened.db.clone(), settings, shutdown).await;
            let closed = opened.close(Role::Server).await;
            served.and(closed)
        }
        Command::Migrate => {
            let opened = open_database(&db_settings, Role::OneShot).await?;
            say("migrations applied");
            opened.close(Role::OneShot).await
        }
        Command::Healthcheck { addr, service } => healthcheck(addr, service).await,
        Command::Token(cmd) => {
            let prefix = cli.db.prefix()?;
            let opened = open_database(&db_settings, Role::OneShot).await?;
            let result = token_command(&opened.db, &prefix, cmd).await;
            opened.close(Role::OneShot).await?;
            result
        }
    }
}

/// A line for the person at the terminal (stderr). Unlike `eprintln!`, it cannot
/// panic when stderr is closed.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn cli_caller() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

async fn token_command(db: &Db, prefix: &token::Prefix, cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create(args) => create(db, prefix, args).await,
        TokenCommand::List { user } => {
            let rows = db.list(user.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "ID\tUSER\tNAME\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tSTATUS\tLAST USED"
            );
            for r in rows {
                let status = match (r.revoked_at, r.expires_at) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= r.db_now => "expired",
                    _ => "active",
                };
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}\t{}…\t{}\t{}\t{}\t{}\t{}",
                    r.id,
                    r.user_id,
                    r.name,
                    r.display_prefix,
                    r.scopes.join(","),
                    fmt_time(r.created_at),
                    r.expires_at.map_or_else(|| "never".into(), fmt_time),
                    status,
                    r.last_used_at.map_or_else(|| "-".into(), fmt_time),
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let at = db.revoke_by_id(&id, &cli_caller()).await?;
            say(&format!("revoked token {id} at {}", fmt_time(at)));
            Ok(())
        }
    }
}

fn check_label(flag: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{flag} must be 1-255 printable characters"
        )));
    }
    Ok(())
}

async fn create(db: &Db, prefix: &token::Prefix, args: CreateArgs) -> Result<()> {
    check_label("--user", &args.user)?;
    check_label("--name", &args.name)?;
    for s in &args.scopes {
        check_label("--scope", s)?;
    }
    let raw = token::generate(prefix)?;
    let digest = token::digest_of(&raw, prefix);
    let lifetime = match args.expires_in {
        Expiry::In(d) => Some(d),
        Expiry::Never => None,
    };
    let created = db
        .create_token(
            &args.user,
            &args.name,
            &digest,
            &args.scopes,
            lifetime,
            &cli_caller(),
        )
        .await?;
    // The one and only time the secret is shown: alone on stdout, so
    // `TOKEN=$(auth-service token create ...)` works; the rest goes to stderr.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{}", raw.expose()).and_then(|()| stdout.flush()) {
        // Nobody received the secret: a live token nobody holds is only a risk.
        db.revoke_by_id(&created.id, &cli_caller()).await?;
        return Err(Error::Config(format!(
            "could not print the new token ({e}); it was revoked, nothing usable was created"
        )));
    }
    let expires = created.expires_at.map_or_else(
        || "never expires".into(),
        |t: SystemTime| format!("expires {}", fmt_time(t)),
    );
    say(&format!(
        "created token {} for user {:?} (name {:?}), {expires}. It is shown only once: store it now.",
        created.id, args.user, args.name
    ));
    Ok(())
}

async fn healthcheck(addr: std::net::SocketAddr, service: String) -> Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let unreachable =
        |e: &dyn std::fmt::Display| Error::Config(format!("unhealthy: cannot ask {addr}: {e}"));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3));
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.clone(),
        })
        .await
        .map_err(|e| unreachable(&e.message()))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    let _ = writeln!(std::io::stdout(), "{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "unhealthy: {addr} reports {} for {service:?}",
            status.as_str_name()
        )))
    }
}
