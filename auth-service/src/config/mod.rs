//! Command-line flags (every one also an environment variable), validated once into
//! typed settings. Startup errors name the flag to change. `serve`'s own flags are in
//! [`serve`].
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    db::Target,
    error::{Error, Result},
    telemetry::LogFormat,
    token::Prefix,
};

mod serve;

pub use crate::transport::{HttpSettings, TlsSettings, TransportSettings};
pub use serve::{ServeArgs, ServeSettings};

/// Where the embedded cluster lives when no database URL is given.
pub const DEFAULT_DATA_DIR: &str = "./.auth-service";

#[derive(Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "gRPC personal access token service"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    /// Log lines on stderr: text, or one flat JSON object per line for log shippers
    /// (the event's fields and its spans' fields side by side).
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (auth.v1.AuthService, Envoy's ext_authz, health, reflection).
    Serve(Box<ServeArgs>),
    /// Create, list, revoke and prune tokens.
    Token(TokenArgs),
    /// Apply pending schema migrations and exit.
    Migrate,
    /// Ask a running server's grpc.health.v1 service whether it is SERVING (exit 0)
    /// or not (exit 1): for Docker HEALTHCHECK and scripts.
    Healthcheck(HealthcheckArgs),
    /// Print a shell completion script on stdout, e.g. `auth-service completions bash >
    /// /etc/bash_completion.d/auth-service`. Needs no database and no configuration.
    Completions(CompletionsArgs),
}

/// What `completions` prints.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// What `healthcheck` asks, and how it reaches the server.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server to ask [default: AUTH_SERVICE_LISTEN (an unspecified address as
    /// 127.0.0.1), else 127.0.0.1:50051].
    #[arg(long, env = "AUTH_SERVICE_HEALTHCHECK_ADDR")]
    pub addr: Option<SocketAddr>,
    /// The service name to check ("" for the server as a whole).
    #[arg(
        long,
        env = "AUTH_SERVICE_HEALTHCHECK_SERVICE",
        default_value = "auth.v1.AuthService"
    )]
    pub service: String,
    /// The server's listen address, when `--addr` is not given.
    #[arg(long, hide = true, env = "AUTH_SERVICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Speak TLS, trusting the CA certificates in this file [default: TLS when
    /// AUTH_SERVICE_TLS_CERT is set, trusting the chain in that file].
    #[arg(long, env = "AUTH_SERVICE_HEALTHCHECK_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The server's certificate (`serve --tls-cert`): its chain is trusted, and its first
    /// DNS name is the name checked, since the check dials an IP address.
    #[arg(long, env = "AUTH_SERVICE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The server's key: presented with its certificate when the server requires client
    /// certificates (`serve --tls-client-ca`).
    #[arg(long, env = "AUTH_SERVICE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Whether the server requires client certificates.
    #[arg(
        long,
        hide = true,
        env = "AUTH_SERVICE_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,
}

impl HealthcheckArgs {
    /// The address to ask: `--addr`, else the listen address with an unspecified IP
    /// (0.0.0.0, ::) replaced by loopback.
    pub fn target(&self) -> SocketAddr {
        if let Some(addr) = self.addr {
            return addr;
        }
        match self.listen {
            Some(mut listen) => {
                if listen.ip().is_unspecified() {
                    listen.set_ip(if listen.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                listen
            }
            None => SocketAddr::from(([127, 0, 0, 1], 50051)),
        }
    }
}

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
    pub database_url: Option<String>,
    /// A file holding the PostgreSQL URL (e.g. a mounted Secret), so that a password
    /// never appears in the environment or on a command line.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DATABASE_URL_FILE",
        value_name = "FILE",
        conflicts_with = "data_dir"
    )]
    pub database_url_file: Option<PathBuf>,
    /// Directory of the embedded PostgreSQL cluster [default: ./.auth-service].
    #[arg(long, global = true, env = "AUTH_SERVICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding initdb, pg_ctl and postgres for the embedded cluster
    /// [default: found on PATH, via pg_config, or under /usr/lib/postgresql].
    #[arg(long, global = true, env = "AUTH_SERVICE_PG_BINDIR")]
    pub pg_bindir: Option<PathBuf>,
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
    pub db_max_connections: usize,
    /// Most cache misses looked up in one statement when they queue (they are batched
    /// only while every shared connection is busy; 1 turns batching off).
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_DB_MAX_BATCH",
        default_value_t = crate::db::batch::MAX_BATCH
    )]
    pub db_max_batch: usize,
    /// This process's name in PostgreSQL (`application_name` of every session it
    /// opens, so that pg_stat_activity counts them per replica): the pod name in
    /// Kubernetes [default: host:pid].
    #[arg(long, global = true, env = "AUTH_SERVICE_REPLICA_NAME")]
    pub replica_name: Option<String>,
    /// How long one database operation (including waiting for a pooled connection)
    /// may take before the call fails with UNAVAILABLE.
    #[arg(long, global = true, env = "AUTH_SERVICE_DB_TIMEOUT", default_value = "5s", value_parser = parse_db_wait)]
    pub db_timeout: Duration,
    /// Prefix of every token this service issues and accepts.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_TOKEN_PREFIX",
        default_value = "pat_"
    )]
    pub token_prefix: String,
}

/// `token` and the flags all its subcommands take.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What the command prints on stdout: text for people, or JSON for scripts.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_OUTPUT",
        value_enum,
        default_value_t = Output::Text
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The shape of a token command's result on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// What people read: the token alone (`create`), a tab-separated table (`list`).
    Text,
    /// One JSON document: an object (`create`, `revoke`, `prune`) or an array (`list`).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (the only time it is shown) as the only line on stdout.
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long, env = "AUTH_SERVICE_LIST_USER")]
        user: Option<String>,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        /// The token id (a UUID, as `token list` shows it).
        #[arg(value_parser = parse_token_id)]
        id: uuid::Uuid,
    },
    /// Delete tokens that expired or were revoked longer ago than --older-than (by the
    /// database clock), with their audit rows, and print how many. Live tokens and
    /// tokens that never expire (unless revoked) are kept. Safe to run on every replica
    /// at once.
    Prune {
        /// How long a token must have been expired or revoked, e.g. 90d.
        #[arg(long, env = "AUTH_SERVICE_PRUNE_OLDER_THAN", value_parser = parse_lifetime)]
        older_than: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The user the token belongs to.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_USER")]
    pub user: String,
    /// A name that says what the token is for.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_NAME", default_value = "default")]
    pub name: String,
    /// Lifetime, e.g. 90d, 12h, or `never`.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_EXPIRES_IN", default_value = "90d", value_parser = parse_expiry)]
    pub expires_in: Expiry,
    /// A scope to grant; repeat for several.
    #[arg(
        long = "scope",
        env = "AUTH_SERVICE_TOKEN_SCOPES",
        value_delimiter = ','
    )]
    pub scopes: Vec<String>,
}

/// A token lifetime: a duration, or never expiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    In(Duration),
    Never,
}

/// Longest `--db-timeout` and `--db-check-interval`. PostgreSQL's `statement_timeout`
/// (which carries `--db-timeout`) stops at about 24.8 days, and a call that waits more
/// than an hour for its database is an outage, not a slow call.
pub const MAX_DB_WAIT: Duration = Duration::from_secs(3600);
/// Longest token lifetime, renewal threshold or extension: far inside what timestamps
/// can represent, so that no expiry arithmetic can overflow (`never` exists for tokens
/// that should not expire).
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86400);

/// Parses `3d`, `90d`, `1s`, `1h30m`, from longer than zero up to `max`.
pub fn parse_bounded(s: &str, max: Duration) -> std::result::Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: use a duration such as 30s, 12h, 7d or 90d"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > max {
        return Err(format!(
            "too long: at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A database wait (`--db-timeout`, `--db-check-interval`).
pub fn parse_db_wait(s: &str) -> std::result::Result<Duration, String> {
    parse_bounded(s, MAX_DB_WAIT)
}

/// A token lifetime or renewal period.
pub fn parse_lifetime(s: &str) -> std::result::Result<Duration, String> {
    parse_bounded(s, MAX_LIFETIME)
}

pub fn parse_expiry(s: &str) -> std::result::Result<Expiry, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        Ok(Expiry::Never)
    } else {
        parse_lifetime(s).map(Expiry::In)
    }
}

/// A token id as `token revoke` takes it.
pub fn parse_token_id(s: &str) -> std::result::Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim()).map_err(|_| {
        "not a token id: ids are UUIDs such as 3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6c, as `auth-service token list` shows them".to_string()
    })
}

/// Which PostgreSQL to use.
#[derive(Clone)]
pub enum Database {
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
pub struct DbSettings {
    pub database: Database,
    /// `--db-max-connections`: every session the process opens.
    pub max_connections: usize,
    /// `--db-max-batch`.
    pub max_batch: usize,
    /// `application_name` of every session.
    pub replica_name: String,
    pub timeout: Duration,
}

/// The fewest pooled connections: one for writes, one shared by lookups.
pub const MIN_POOLED: usize = 2;

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
    pub fn settings(&self) -> Result<DbSettings> {
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

    pub fn prefix(&self) -> Result<Prefix> {
        Prefix::new(&self.token_prefix)
            .map_err(|e| Error::Config(format!("--token-prefix / AUTH_SERVICE_TOKEN_PREFIX: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::renewal::RenewalPolicy;

    /// The command line without its environment variables: what a developer's shell
    /// exports must not change what these tests see.
    fn without_env(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.env(None::<&str>))
            .mut_subcommands(without_env)
    }

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = without_env(Cli::command())
            .try_get_matches_from(std::iter::once("auth-service").chain(args.iter().copied()))?;
        Cli::from_arg_matches(&matches)
    }

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
    fn defaults() {
        let cli = parse(&["serve"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        let s = serve.settings(&cli.db).unwrap();
        assert_eq!(s.policy, RenewalPolicy::default());
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(s.prefix.as_str(), "pat_");
        // The HTTP port's defaults are written once (transport's constants) and clap
        // shows those.
        assert_eq!(s.http, HttpSettings::default());
        match cli.db.settings().unwrap().database {
            Database::Embedded { data_dir, .. } => {
                assert_eq!(data_dir, PathBuf::from(DEFAULT_DATA_DIR))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_in_human_form() {
        assert_eq!(
            parse_lifetime("3d").unwrap(),
            Duration::from_secs(3 * 86400)
        );
        assert_eq!(parse_db_wait("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("soon").is_err());
        assert_eq!(parse_expiry("never").unwrap(), Expiry::Never);
        assert!(parse(&["serve", "--renew-threshold", "banana"]).is_err());
    }

    #[test]
    fn threshold_must_be_below_extension() {
        let cli = parse(&[
            "serve",
            "--renew-threshold",
            "90d",
            "--renew-extension",
            "30d",
        ])
        .unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        let err = serve.settings(&cli.db).unwrap_err().to_string();
        assert!(err.contains("--renew-threshold"), "{err}");
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

    #[test]
    fn durations_are_bounded_and_the_error_names_the_flag() {
        for (args, flag) in [
            (
                vec!["--db-timeout", "300000000000y", "migrate"],
                "--db-timeout",
            ),
            (vec!["--db-timeout", "25d", "migrate"], "--db-timeout"),
            (
                vec!["serve", "--db-check-interval", "2h"],
                "--db-check-interval",
            ),
            (
                vec!["serve", "--renew-extension", "300000000000y"],
                "--renew-extension",
            ),
            (
                vec!["serve", "--renew-threshold", "101years"],
                "--renew-threshold",
            ),
            (
                vec!["serve", "--max-token-lifetime", "300000000000y"],
                "--max-token-lifetime",
            ),
            (
                vec![
                    "token",
                    "create",
                    "--user",
                    "a",
                    "--expires-in",
                    "300000000000y",
                ],
                "--expires-in",
            ),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(
                err.contains(flag) && err.contains("at most"),
                "{args:?}: {err}"
            );
        }
        assert!(parse(&["--db-timeout", "1h", "migrate"]).is_ok());
        assert!(parse(&["token", "create", "--user", "a", "--expires-in", "36500d"]).is_ok());
    }

    #[test]
    fn revoke_takes_a_uuid() {
        let err = parse(&["token", "revoke", "not-a-uuid"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("token list"), "{err}");
        assert!(parse(&["token", "revoke", "3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6c"]).is_ok());
    }

    #[test]
    fn output_and_log_format_go_before_or_after_the_subcommand() {
        let cli = parse(&["--log-format", "json", "token", "--output", "json", "list"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Token(token) = &cli.command else {
            panic!("not token")
        };
        assert_eq!(token.output, Output::Json);
        let cli = parse(&["token", "prune", "--older-than", "90d", "--output", "json"]).unwrap();
        let Command::Token(token) = &cli.command else {
            panic!("not token")
        };
        assert_eq!(token.output, Output::Json);
        assert!(matches!(
            token.command,
            TokenCommand::Prune { older_than } if older_than == Duration::from_secs(90 * 86400)
        ));
        let cli = parse(&["serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(parse(&["token", "list", "--output", "yaml"]).is_err());
        assert!(parse(&["--log-format", "xml", "migrate"]).is_err());
    }

    #[test]
    fn prune_needs_a_bounded_horizon() {
        assert!(
            parse(&["token", "prune"]).is_err(),
            "no default: say how old"
        );
        for bad in ["0s", "soon", "36501d"] {
            assert!(
                parse(&["token", "prune", "--older-than", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn no_migrate_reaches_the_serve_settings() {
        let cli = parse(&["serve", "--no-migrate"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        assert!(serve.settings(&cli.db).unwrap().no_migrate);
        let cli = parse(&["serve"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        assert!(!serve.settings(&cli.db).unwrap().no_migrate);
    }
}
