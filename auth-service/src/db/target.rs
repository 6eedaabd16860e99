//! Which PostgreSQL to talk to, and how: a parsed connection string (the settings
//! tokio-postgres understands, and the TLS policy of [`super::tls`]), and connecting
//! with it outside the pools.
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    conninfo,
    tls::{Mode, Policy},
};

/// The TLS connector of a target (cheap to clone).
#[derive(Clone)]
pub(crate) enum Tls {
    None,
    Rustls(MakeRustlsConnect),
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tls::None => "None",
            Tls::Rustls(_) => "Rustls",
        })
    }
}

/// A database to connect to: the settings tokio-postgres understands, and the TLS to
/// use. Its `Debug` never shows the password.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub(crate) tls: Tls,
    pub(crate) mode: Mode,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Target(hosts={:?}, db={:?}, sslmode={:?}, password=<redacted>)",
            self.config.get_hosts(),
            self.config.get_dbname(),
            self.mode
        )
    }
}

impl Target {
    /// A target without TLS (the embedded cluster's Unix socket, tests).
    pub fn plain(config: tokio_postgres::Config) -> Target {
        Target {
            config,
            tls: Tls::None,
            mode: Mode::Disable,
        }
    }

    /// Parses a URL (`postgres://...?sslmode=verify-full&sslrootcert=/ca.crt`) or a
    /// key=value string (`host=... sslmode=verify-full sslrootcert=/ca.crt`).
    pub fn parse(url: &str) -> Result<Target, String> {
        let (rest, params) = conninfo::take_tls_params(url)?;
        let policy = Policy::new(params.mode.as_deref(), params.root_cert.as_deref())?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| e.to_string())?;
        config.ssl_mode(policy.ssl_mode());
        let tls = match policy.client_config()? {
            None => Tls::None,
            Some(client) => Tls::Rustls(MakeRustlsConnect::new(client)),
        };
        Ok(Target {
            config,
            tls,
            mode: policy.mode,
        })
    }

    /// Connects once, outside any pool; the connection is driven on a task.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        match &self.tls {
            Tls::None => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, tokio::spawn(connection)))
            }
            Tls::Rustls(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, tokio::spawn(connection)))
            }
        }
    }

    /// Connects once, outside any pool, for a LISTEN: the connection is driven on a task
    /// of the current runtime that hands every notification to `on_notification` as it
    /// is read, before the next message, so that nothing queues between the socket and
    /// whoever acts on it. The task ends with why the connection ended.
    pub(crate) async fn connect_listening<F>(
        &self,
        config: &tokio_postgres::Config,
        on_notification: F,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<String>), tokio_postgres::Error>
    where
        F: FnMut(&tokio_postgres::Notification) + Send + 'static,
    {
        fn drive<S, T, F>(
            mut connection: tokio_postgres::Connection<S, T>,
            mut on_notification: F,
        ) -> tokio::task::JoinHandle<String>
        where
            S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
            T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
            F: FnMut(&tokio_postgres::Notification) + Send + 'static,
        {
            tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                            on_notification(&n);
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return crate::error::chain(&e),
                        None => return String::from("the server closed the connection"),
                    }
                }
            })
        }
        match &self.tls {
            Tls::None => {
                let (client, connection) = config.connect(NoTls).await?;
                Ok((client, drive(connection, on_notification)))
            }
            Tls::Rustls(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, drive(connection, on_notification)))
            }
        }
    }

    /// Asks the server to cancel what the connection of `token` is running.
    pub(crate) async fn cancel(&self, token: tokio_postgres::CancelToken) {
        let _ = match &self.tls {
            Tls::None => token.cancel_query(NoTls).await,
            Tls::Rustls(tls) => token.cancel_query(tls.clone()).await,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_urls_keep_every_host_and_ask_for_a_writable_server() {
        use tokio_postgres::config::{Host, TargetSessionAttrs};
        for url in [
            "postgres://auth@db1.internal:5432,db2.internal:5433/auth?target_session_attrs=read-write&connect_timeout=2&sslmode=verify-full",
            "host=db1.internal,db2.internal port=5432,5433 user=auth dbname=auth target_session_attrs=read-write connect_timeout=2 sslmode=verify-full",
        ] {
            let target = Target::parse(url).unwrap();
            let hosts = ["db1.internal", "db2.internal"].map(|h| Host::Tcp(h.into()));
            assert_eq!(target.config.get_hosts(), hosts, "{url}");
            assert_eq!(target.config.get_ports(), [5432, 5433], "{url}");
            assert_eq!(
                target.config.get_target_session_attrs(),
                TargetSessionAttrs::ReadWrite,
                "{url}"
            );
            assert_eq!(
                target.config.get_connect_timeout(),
                Some(&std::time::Duration::from_secs(2)),
                "{url}"
            );
            assert_eq!(target.mode, Mode::VerifyFull, "{url}");
        }
    }

    #[test]
    fn the_tls_parameters_set_the_mode_and_leave_the_rest_to_tokio_postgres() {
        assert_eq!(Target::parse("postgres://h/db").unwrap().mode, Mode::Prefer);
        let target = Target::parse("postgres://h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(target.mode, Mode::Disable);
        assert_eq!(target.config.get_application_name(), Some("x"));
        assert_eq!(
            Target::parse("host=h sslmode=verify-full").unwrap().mode,
            Mode::VerifyFull
        );
        let err = Target::parse("postgres://h/db?sslmode=maybe").unwrap_err();
        assert!(err.contains("sslmode=maybe"), "{err}");
        let missing = Target::parse("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.crt")
            .unwrap_err();
        assert!(missing.contains("/nonexistent/ca.crt"), "{missing}");
    }
}
