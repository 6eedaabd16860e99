//! The flags of `auth-service serve`: addresses, renewal rules, the cache, TLS and the
//! transport's limits, validated into [`ServeSettings`].
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::Args;

use super::{
    DbArgs, MIN_POOLED,
    duration::{HumanDuration, human, parse_bounded, parse_lifetime, parse_timer},
};
use crate::{
    authz::forward::Access,
    cache::{self, CacheSettings},
    error::{Error, Result},
    notify::{NotifySettings, webhook::Secret},
    renewal::{self, RenewalPolicy},
    token::Prefix,
    transport::{self, HttpSettings, TlsSettings, TransportSettings},
};

/// `--listen`'s default, which `healthcheck` also asks when given no address.
pub(crate) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

// A default that a settings type of a lower module also needs (`RenewalPolicy::default`,
// `CacheSettings::default`) is that module's constant, shown here by `default_value_t`;
// every other default is stated in its attribute alone, and `ServeSettings` is only ever
// built from these flags (`ServeArgs::settings`), so it restates none of them.

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "AUTH_SERVICE_LISTEN", default_value_t = DEFAULT_LISTEN)]
    pub(crate) listen: SocketAddr,
    /// A renew extends a token only when less than this much life remains.
    #[arg(
        long,
        env = "AUTH_SERVICE_RENEW_THRESHOLD",
        default_value_t = HumanDuration(renewal::DEFAULT_THRESHOLD),
        value_parser = human(parse_lifetime)
    )]
    pub(crate) renew_threshold: HumanDuration,
    /// A renew sets the expiry to now plus this.
    #[arg(
        long,
        env = "AUTH_SERVICE_RENEW_EXTENSION",
        default_value_t = HumanDuration(renewal::DEFAULT_EXTENSION),
        value_parser = human(parse_lifetime)
    )]
    pub(crate) renew_extension: HumanDuration,
    /// Absolute cap: renewal never moves a token's expiry past created_at plus this
    /// (like Vault's max TTL). Off by default.
    #[arg(long, env = "AUTH_SERVICE_MAX_TOKEN_LIFETIME", value_parser = parse_lifetime)]
    pub(crate) max_token_lifetime: Option<Duration>,
    /// How often the database is probed for the health service.
    #[arg(long, env = "AUTH_SERVICE_DB_CHECK_INTERVAL", default_value = "5s", value_parser = parse_timer)]
    pub(crate) db_check_interval: Duration,
    /// Address of the HTTP side port: /metrics (Prometheus), /healthz, /readyz, and
    /// /authz/forward-auth for nginx, Traefik and Caddy [default: off].
    #[arg(long, env = "AUTH_SERVICE_HTTP_LISTEN")]
    pub(crate) http_listen: Option<SocketAddr>,
    /// Most token lookups kept in memory per replica; 0 turns the cache off.
    #[arg(long, env = "AUTH_SERVICE_CACHE_CAPACITY", default_value_t = cache::DEFAULT_CAPACITY)]
    pub(crate) cache_capacity: u64,
    /// Most bytes the cached lookups take (estimated per entry: the entry, its strings,
    /// the key and the cache's slot). An eighth is kept for unknown, revoked and expired
    /// answers, so that a spray of made-up tokens cannot push out live ones.
    #[arg(long, env = "AUTH_SERVICE_CACHE_MAX_BYTES", default_value_t = cache::DEFAULT_MAX_BYTES)]
    pub(crate) cache_max_bytes: u64,
    /// Longest a cached lookup is kept. Changes reach every replica's cache at once
    /// through database notifications; this is only a safety net.
    #[arg(
        long,
        env = "AUTH_SERVICE_CACHE_TTL",
        default_value_t = HumanDuration(cache::DEFAULT_TTL),
        value_parser = human(parse_lifetime)
    )]
    pub(crate) cache_ttl: HumanDuration,
    /// The cache's staleness bound: an entry is served only while every token change
    /// committed more than this long ago is known to have been heard (the replica sends
    /// itself a heartbeat NOTIFY every 2/5 of it). Beyond it, lookups go to the database
    /// until the listener catches up. From 10ms to 10s.
    #[arg(
        long,
        env = "AUTH_SERVICE_CACHE_MAX_STALENESS",
        default_value_t = HumanDuration(cache::DEFAULT_MAX_STALENESS),
        value_parser = human(parse_staleness)
    )]
    pub(crate) cache_max_staleness: HumanDuration,
    /// Where the cache's LISTEN connection goes, when --database-url goes through a
    /// transaction-pooling PgBouncer (which cannot carry LISTEN): the primary itself, in
    /// session semantics, e.g. a CloudNativePG cluster's `-rw` Service. Migrations run
    /// over it too. With it, pooled sessions carry no startup options (set
    /// statement_timeout on the role instead) [default: --database-url].
    #[arg(
        long,
        env = "AUTH_SERVICE_DATABASE_LISTEN_URL",
        hide_env_values = true,
        conflicts_with = "database_listen_url_file"
    )]
    pub(crate) database_listen_url: Option<String>,
    /// A file holding --database-listen-url (a mounted Secret).
    #[arg(
        long,
        env = "AUTH_SERVICE_DATABASE_LISTEN_URL_FILE",
        value_name = "FILE"
    )]
    pub(crate) database_listen_url_file: Option<PathBuf>,

    /// PEM certificate chain for TLS on the gRPC port (with --tls-key). Re-read on
    /// SIGHUP and when the file changes.
    #[arg(
        long,
        env = "AUTH_SERVICE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "AUTH_SERVICE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_key: Option<PathBuf>,
    /// PEM CA certificates: require and verify client certificates (mTLS).
    #[arg(
        long,
        env = "AUTH_SERVICE_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Callers allowed to use ValidateToken and WatchTokenInvalidations (and the proxy
    /// adapters): a URI SAN (a SPIFFE ID such as
    /// spiffe://cluster.local/ns/mesh/sa/billing) or DNS SAN of their verified client
    /// certificate. Repeatable; needs --tls-client-ca [default: anyone].
    #[arg(
        long,
        env = "AUTH_SERVICE_VALIDATE_ALLOW",
        value_name = "ID",
        value_delimiter = ','
    )]
    pub(crate) validate_allow: Vec<String>,
    /// Networks whose proxies may use /authz/forward-auth on the HTTP port, which sees
    /// no client certificates (e.g. Traefik's pod network, 10.42.0.0/16). With this or
    /// --validate-allow set, only loopback and these networks may ask; with neither,
    /// anyone who reaches the port.
    #[arg(
        long,
        env = "AUTH_SERVICE_FORWARD_AUTH_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub(crate) forward_auth_allow: Vec<ipnet::IpNet>,

    /// Most concurrent connections on the gRPC port (further ones are closed at once);
    /// also kept below the process's open-file limit.
    #[arg(long, env = "AUTH_SERVICE_MAX_CONNECTIONS", default_value_t = 4096)]
    pub(crate) max_connections: usize,
    /// Most concurrent connections on the HTTP port (--http-listen); further ones are
    /// closed at once. Also kept within a quarter of the process's open-file limit, so
    /// that connections to this port can never take the gRPC port's descriptors.
    #[arg(
        long,
        env = "AUTH_SERVICE_HTTP_MAX_CONNECTIONS",
        default_value_t = 1024
    )]
    pub(crate) http_max_connections: usize,
    /// A connection to the HTTP port must send a complete request head within this, when
    /// it opens and again between requests on a kept-alive connection, or it is closed
    /// (a slow client, or an idle one).
    #[arg(
        long,
        env = "AUTH_SERVICE_HTTP_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = parse_timer
    )]
    pub(crate) http_header_timeout: Duration,
    /// Most concurrent calls (HTTP/2 streams) per connection.
    #[arg(
        long,
        env = "AUTH_SERVICE_MAX_CONCURRENT_STREAMS",
        default_value_t = 100
    )]
    pub(crate) max_concurrent_streams: u32,
    /// Longest a call may take from its first byte to its answer, on the gRPC port and
    /// on the HTTP port (answered 503 there) [default: the database timeout plus 5s].
    #[arg(long, env = "AUTH_SERVICE_REQUEST_TIMEOUT", value_parser = parse_timer)]
    pub(crate) request_timeout: Option<Duration>,
    /// A new connection must finish its TLS handshake and send the HTTP/2 preface
    /// within this, or it is closed.
    #[arg(long, env = "AUTH_SERVICE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_timer)]
    pub(crate) handshake_timeout: Duration,
    /// HTTP/2 PING interval on every connection; a peer that does not answer within
    /// --keepalive-timeout is disconnected.
    #[arg(long, env = "AUTH_SERVICE_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_timer)]
    pub(crate) keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    #[arg(long, env = "AUTH_SERVICE_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_timer)]
    pub(crate) keepalive_timeout: Duration,
    #[command(flatten)]
    pub(crate) otel: auth_telemetry::otel::OtelArgs,
    /// At this age (±10 %), a connection gets a GOAWAY: its calls finish, and the
    /// client reconnects, so that a long-lived channel spreads over the replicas an
    /// autoscaler adds (grpc-go's MaxConnectionAge). 0 turns it off.
    #[arg(long, env = "AUTH_SERVICE_MAX_CONNECTION_AGE", default_value = "5m", value_parser = parse_age)]
    pub(crate) max_connection_age: Duration,
    /// How long calls may go on after that GOAWAY before the connection is cut.
    #[arg(long, env = "AUTH_SERVICE_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = parse_timer)]
    pub(crate) max_connection_age_grace: Duration,
    /// After SIGTERM, how long in-flight calls may take to finish before they are
    /// cancelled and the process exits.
    #[arg(long, env = "AUTH_SERVICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_timer)]
    pub(crate) shutdown_grace: Duration,
    /// Credential failures per minute from one peer address on RenewCurrentToken,
    /// LookupCurrentToken and RevokeCurrentToken before its further calls are refused
    /// with RESOURCE_EXHAUSTED until the minute is over. ValidateToken is never limited.
    #[arg(long, env = "AUTH_SERVICE_AUTH_FAILURE_LIMIT", default_value_t = 60)]
    pub(crate) auth_failure_limit: u32,
    /// Most database operations (renew, revoke) in flight for one token per process;
    /// more are refused at once with UNAVAILABLE and a retry delay.
    #[arg(long, env = "AUTH_SERVICE_DB_MAX_PER_TOKEN", default_value_t = 4)]
    pub(crate) db_max_per_token: usize,
    /// Most calls waiting for a pooled database connection; more are refused at once
    /// with UNAVAILABLE and a retry delay [default: 4 x --db-max-connections].
    #[arg(long, env = "AUTH_SERVICE_DB_MAX_WAITING")]
    pub(crate) db_max_waiting: Option<usize>,
    /// Do not apply migrations (a separate `auth-service migrate` does, with a role that
    /// may change the schema); only check at startup that the schema is current.
    #[arg(long, env = "AUTH_SERVICE_NO_MIGRATE")]
    pub(crate) no_migrate: bool,

    /// POST a signed JSON notice to this URL when a token is about to expire (once per
    /// token and threshold, across every replica). Treated as a secret: logs show only
    /// its scheme and host [default: off, nothing is scanned].
    #[arg(
        long,
        env = "AUTH_SERVICE_NOTIFY_WEBHOOK",
        value_name = "URL",
        hide_env_values = true,
        value_parser = parse_webhook
    )]
    pub(crate) notify_webhook: Option<http::Uri>,
    /// When to notify: how long before expiry, a comma-separated list; a token crossing
    /// several at once is notified for the nearest only.
    #[arg(
        long,
        env = "AUTH_SERVICE_NOTIFY_BEFORE",
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "7d,1d",
        value_parser = parse_lifetime,
        requires = "notify_webhook"
    )]
    pub(crate) notify_before: Vec<Duration>,
    /// How often due tokens are looked for.
    #[arg(
        long,
        env = "AUTH_SERVICE_NOTIFY_INTERVAL",
        default_value = "1m",
        value_parser = parse_timer,
        requires = "notify_webhook"
    )]
    pub(crate) notify_interval: Duration,
    /// A file holding the key that signs each notice: `X-Auth-Signature: sha256=<hex
    /// HMAC-SHA256 of the body>`, as GitHub signs its webhooks [default: unsigned].
    #[arg(
        long,
        env = "AUTH_SERVICE_NOTIFY_SECRET_FILE",
        value_name = "FILE",
        requires = "notify_webhook"
    )]
    pub(crate) notify_secret_file: Option<PathBuf>,
}

/// `--max-connection-age`: a duration, or 0 for never.
fn parse_age(s: &str) -> std::result::Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    parse_timer(s)
}

/// `--cache-max-staleness`: 10ms to 10s. Below, heartbeats would cost more than they
/// save; above, revocations could take longer than any caller would accept.
fn parse_staleness(s: &str) -> std::result::Result<Duration, String> {
    let d = parse_bounded(s, Duration::from_secs(10))?;
    if d < Duration::from_millis(10) {
        return Err("too short: at least 10ms".into());
    }
    Ok(d)
}

/// `--notify-webhook`: an absolute http:// or https:// URL.
fn parse_webhook(s: &str) -> std::result::Result<http::Uri, String> {
    let uri: http::Uri = s
        .trim()
        .parse()
        .map_err(|_| "not a URL: give an http:// or https:// URL".to_string())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err("give an absolute http:// or https:// URL".into()),
    }
}

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub policy: RenewalPolicy,
    pub prefix: Prefix,
    pub db_check_interval: Duration,
    pub cache: CacheSettings,
    /// `--db-max-connections`: every session the server opens.
    pub db_max_connections: usize,
    /// Where the cache's LISTEN connection goes (`--database-listen-url`); `None`: the
    /// pool's database.
    pub database_listen: Option<crate::db::Target>,
    pub transport: TransportSettings,
    /// The HTTP port's limits.
    pub http: HttpSettings,
    /// Callers allowed to validate; empty: anyone.
    pub validate_allow: Vec<String>,
    /// Who may use forward-auth on the HTTP port.
    pub forward_auth: Access,
    pub shutdown_grace: Duration,
    pub auth_failure_limit: u32,
    pub db_max_per_token: usize,
    pub db_max_waiting: usize,
    /// Bounds on the callers waiting for a coalesced renewal or revocation.
    pub coalesce: crate::service::CoalesceLimits,
    /// The trace exporter, when traces are on: flushed at shutdown.
    pub traces: Option<auth_telemetry::otel::Traces>,
    /// Check the schema at startup instead of migrating it.
    pub no_migrate: bool,
    /// Expiry notifications; `None`: off.
    pub notify: Option<NotifySettings>,
}

impl ServeSettings {
    /// The sessions a server opens outside its pools: the health probe, and with the
    /// cache on, the LISTEN and heartbeat connections.
    pub(crate) fn connections_outside_pools(&self) -> usize {
        1 + if self.cache.capacity > 0 { 2 } else { 0 }
    }

    /// What `--db-max-connections` leaves the pools.
    pub fn pooled_connections(&self) -> usize {
        self.db_max_connections
            .saturating_sub(self.connections_outside_pools())
    }
}

impl ServeArgs {
    /// What traces to export, if any (`--otlp-endpoint`); a bad sampler names its flag.
    pub fn otel(&self) -> Result<Option<auth_telemetry::otel::OtelSettings>> {
        self.otel.settings("auth-service").map_err(Error::Config)
    }

    /// `--database-listen-url`, from the flag or its file.
    fn database_listen(&self) -> Result<Option<crate::db::Target>> {
        let (url, from) = match (&self.database_listen_url, &self.database_listen_url_file) {
            (Some(url), _) => (url.clone(), "--database-listen-url"),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    Error::Config(format!(
                        "--database-listen-url-file: cannot read {}: {e}",
                        file.display()
                    ))
                })?;
                (
                    text.trim().to_owned(),
                    "the URL in --database-listen-url-file",
                )
            }
            (None, None) => return Ok(None),
        };
        crate::db::Target::parse(&url).map(Some).map_err(|e| {
            Error::Config(format!(
                "{from} is not a PostgreSQL URL ({e}); expected e.g. \
                 postgres://user:password@primary:5432/dbname?sslmode=verify-full"
            ))
        })
    }

    /// The notifier's settings, with the secret read from its file.
    fn notify_settings(&self) -> Result<Option<NotifySettings>> {
        let Some(webhook) = &self.notify_webhook else {
            return Ok(None);
        };
        let secret = match &self.notify_secret_file {
            None => None,
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| {
                    Error::Config(format!(
                        "--notify-secret-file {}: cannot read it: {e}",
                        path.display()
                    ))
                })?;
                // A trailing newline is the editor's, not the key's.
                let key = text.trim_ascii_end().to_vec();
                if key.is_empty() {
                    return Err(Error::Config(format!(
                        "--notify-secret-file {}: the file is empty",
                        path.display()
                    )));
                }
                Some(Secret::new(key))
            }
        };
        let mut before = self.notify_before.clone();
        before.sort();
        before.dedup();
        if webhook.scheme_str() == Some("http")
            && !matches!(webhook.host(), Some("localhost" | "127.0.0.1" | "[::1]"))
        {
            tracing::warn!(
                webhook = %crate::notify::webhook::describe(webhook),
                "--notify-webhook is plain http: notices cross the network unencrypted"
            );
        }
        Ok(Some(NotifySettings {
            secret,
            ..NotifySettings::new(webhook.clone(), before, self.notify_interval)
        }))
    }

    pub fn settings(&self, db: &DbArgs) -> Result<ServeSettings> {
        if self.renew_threshold >= self.renew_extension {
            return Err(Error::Config(format!(
                "--renew-threshold ({}) must be shorter than --renew-extension ({})",
                humantime::format_duration(self.renew_threshold.get()),
                humantime::format_duration(self.renew_extension.get())
            )));
        }
        if !self.validate_allow.is_empty() && self.tls_client_ca.is_none() {
            return Err(Error::Config(
                "--validate-allow / AUTH_SERVICE_VALIDATE_ALLOW needs --tls-client-ca: callers \
                 are identified by their verified client certificates"
                    .into(),
            ));
        }
        if let Some(empty) = self.validate_allow.iter().find(|id| id.trim().is_empty()) {
            return Err(Error::Config(format!(
                "--validate-allow {empty:?}: give a SPIFFE ID or a DNS name"
            )));
        }
        for (flag, value) in [
            ("--max-connections", self.max_connections),
            ("--http-max-connections", self.http_max_connections),
            (
                "--max-concurrent-streams",
                self.max_concurrent_streams as usize,
            ),
            ("--db-max-per-token", self.db_max_per_token),
        ] {
            if value == 0 {
                return Err(Error::Config(format!("{flag} must be at least 1")));
            }
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        };
        let settings = ServeSettings {
            listen: self.listen,
            http_listen: self.http_listen,
            cache: CacheSettings {
                capacity: self.cache_capacity,
                max_bytes: self.cache_max_bytes,
                ttl: self.cache_ttl.get(),
                max_staleness: self.cache_max_staleness.get(),
                ..CacheSettings::default()
            },
            db_max_connections: db.db_max_connections,
            database_listen: self.database_listen()?,
            policy: RenewalPolicy {
                threshold: self.renew_threshold.get(),
                extension: self.renew_extension.get(),
                max_lifetime: self.max_token_lifetime,
            },
            prefix: db.prefix()?,
            db_check_interval: self.db_check_interval,
            transport: TransportSettings {
                tls,
                tls_poll: transport::TLS_POLL,
                max_connections: self.max_connections,
                max_concurrent_streams: self.max_concurrent_streams,
                request_timeout: self
                    .request_timeout
                    .unwrap_or(db.db_timeout + Duration::from_secs(5)),
                handshake_timeout: self.handshake_timeout,
                keepalive_interval: self.keepalive_interval,
                keepalive_timeout: self.keepalive_timeout,
                max_connection_age: (!self.max_connection_age.is_zero())
                    .then_some(self.max_connection_age),
                max_connection_age_grace: self.max_connection_age_grace,
            },
            http: HttpSettings {
                max_connections: self.http_max_connections,
                header_timeout: self.http_header_timeout,
            },
            validate_allow: self
                .validate_allow
                .iter()
                .map(|id| id.trim().to_owned())
                .collect(),
            forward_auth: Access {
                restricted: !self.validate_allow.is_empty() || !self.forward_auth_allow.is_empty(),
                networks: self.forward_auth_allow.clone(),
            },
            shutdown_grace: self.shutdown_grace,
            auth_failure_limit: self.auth_failure_limit,
            db_max_per_token: self.db_max_per_token,
            db_max_waiting: self.db_max_waiting.unwrap_or(4 * db.db_max_connections),
            coalesce: Default::default(),
            traces: None,
            no_migrate: self.no_migrate,
            notify: self.notify_settings()?,
        };
        let needed = settings.connections_outside_pools() + MIN_POOLED;
        if db.db_max_connections < needed {
            return Err(Error::Config(format!(
                "--db-max-connections {} is too small for serve: it needs at least {needed} \
                 (the health probe{}, and {} pooled)",
                db.db_max_connections,
                if settings.cache.capacity > 0 {
                    ", the cache's LISTEN and heartbeat connections"
                } else {
                    ""
                },
                MIN_POOLED
            )));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Command, parse};

    #[test]
    fn defaults() {
        let cli = parse(&["serve"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        let s = serve.settings(&cli.db).unwrap();
        // The defaults that lower modules state (and clap shows) are those the flags
        // give.
        assert_eq!(s.policy, RenewalPolicy::default());
        assert_eq!(s.cache, CacheSettings::default());
        assert_eq!(s.prefix, Prefix::default());
        assert_eq!(s.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(
            s.http,
            HttpSettings {
                max_connections: 1024,
                header_timeout: Duration::from_secs(10)
            }
        );
        assert_eq!(s.transport.request_timeout, Duration::from_secs(10));
        assert_eq!(s.db_max_waiting, 48);
        assert!(s.notify.is_none());
        match cli.db.settings().unwrap().database {
            crate::config::Database::Embedded { data_dir, .. } => {
                assert_eq!(data_dir, PathBuf::from(crate::config::db::DEFAULT_DATA_DIR))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_are_read_in_human_form() {
        let cli = parse(&["serve", "--renew-threshold", "3d", "--cache-ttl", "90s"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        let s = serve.settings(&cli.db).unwrap();
        assert_eq!(s.policy.threshold, Duration::from_secs(3 * 86400));
        assert_eq!(s.cache.ttl, Duration::from_secs(90));
        assert!(parse(&["serve", "--renew-threshold", "banana"]).is_err());
        assert!(parse(&["serve", "--cache-max-staleness", "5ms"]).is_err());
    }

    #[test]
    fn notify_defaults_come_from_the_flags() {
        let cli = parse(&["serve", "--notify-webhook", "https://hooks.example/x"]).unwrap();
        let Command::Serve(serve) = &cli.command else {
            panic!("not serve")
        };
        let notify = serve.settings(&cli.db).unwrap().notify.unwrap();
        assert_eq!(
            notify.before,
            [Duration::from_secs(86400), Duration::from_secs(7 * 86400)]
        );
        assert_eq!(notify.interval, Duration::from_secs(60));
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
