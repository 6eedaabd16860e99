//! Which PostgreSQL to talk to, and how: the connection settings, and TLS with libpq's
//! semantics for `sslmode` and `sslrootcert`, as every PostgreSQL tool has them.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, and rejects a URL
//! with `verify-full`. So the TLS parameters are taken out of the URL first, and the
//! rustls client is built to match:
//!
//! | `sslmode` | encrypted | certificate checked | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `prefer` (the default) | if the server offers it | no (yes with `sslrootcert`) | no |
//! | `require` | yes | no (yes with `sslrootcert`, as libpq does) | no |
//! | `verify-ca` | yes | against `sslrootcert` | no |
//! | `verify-full` | yes | against `sslrootcert` | yes |
//!
//! Without `sslrootcert`, `verify-ca` and `verify-full` trust the system's roots.
use std::path::PathBuf;

use auth_tls::verify::{Check, Roots, ServerVerifier};
use tokio_postgres::{NoTls, config::SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::ClientConfig;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode, String> {
        Ok(match value {
            "disable" => Mode::Disable,
            // libpq's allow tries plaintext first; encrypting when offered is stricter.
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// The TLS connector of a target (cheap to clone).
#[derive(Clone)]
pub enum Tls {
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
    pub tls: Tls,
    pub mode: Mode,
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
        let (rest, params) = take_tls_params(url)?;
        let mode = match params.mode.as_deref() {
            Some(mode) => Mode::parse(mode)?,
            None => Mode::Prefer,
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| e.to_string())?;
        // libpq: with a root certificate, require verifies the chain like verify-ca.
        let mode = match (mode, &params.root_cert) {
            (Mode::Require, Some(_)) => Mode::VerifyCa,
            (mode, _) => mode,
        };
        config.ssl_mode(match mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        });
        let tls = match mode {
            Mode::Disable => Tls::None,
            mode => Tls::Rustls(MakeRustlsConnect::new(client_config(
                mode,
                params.root_cert.as_ref(),
            )?)),
        };
        Ok(Target { config, tls, mode })
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
    pub async fn connect_listening<F>(
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
    pub async fn cancel(&self, token: tokio_postgres::CancelToken) {
        let _ = match &self.tls {
            Tls::None => token.cancel_query(NoTls).await,
            Tls::Rustls(tls) => token.cancel_query(tls.clone()).await,
        };
    }
}

/// The TLS parameters taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a URL or key=value string.
fn take_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            params.mode = Some(value);
            true
        }
        "sslrootcert" => {
            params.root_cert = Some(PathBuf::from(value));
            true
        }
        _ => false,
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), params));
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                !take(key, percent_decode(value))
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, params));
    }
    // key=value: values may be single-quoted, with \' and \\ escapes.
    let mut kept = Vec::new();
    let mut chars = url.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("`{key}` has no value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            raw.push('\'');
            loop {
                match chars.next() {
                    Some('\\') => {
                        let c = chars.next().ok_or("unterminated quoted value")?;
                        raw.push('\\');
                        raw.push(c);
                        value.push(c);
                    }
                    Some('\'') => {
                        raw.push('\'');
                        break;
                    }
                    Some(c) => {
                        raw.push(c);
                        value.push(c);
                    }
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                raw.push(c);
                value.push(c);
            }
        }
        if !take(&key, value) {
            kept.push(format!("{key}={raw}"));
        }
    }
    Ok((kept.join(" "), params))
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn client_config(mode: Mode, root_cert: Option<&PathBuf>) -> Result<ClientConfig, String> {
    let provider = auth_tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let roots = || -> Result<Roots, String> {
        match root_cert {
            Some(path) => Roots::file(path).map_err(|e| format!("sslrootcert: {e}")),
            None => Roots::system().map_err(|e| e.to_string()),
        }
    };
    let check = match mode {
        Mode::Disable | Mode::Prefer | Mode::Require => match root_cert {
            Some(_) => Check::Chain(roots()?),
            None => Check::Any,
        },
        Mode::VerifyCa => Check::Chain(roots()?),
        Mode::VerifyFull => Check::ChainAndName(roots()?),
    };
    let verifier =
        ServerVerifier::new(check, &provider).map_err(|e| format!("sslrootcert: {e}"))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tls_parameters_come_out_of_urls_and_key_value_strings() {
        let (rest, p) = take_tls_params(
            "postgres://u:p%40ss@db.internal:5432/auth?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=x",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db.internal:5432/auth?application_name=x"
        );
        assert_eq!(p.mode.as_deref(), Some("verify-full"));
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.crt")));
        let (rest, p) = take_tls_params(
            "host=db user=auth sslmode=verify-ca sslrootcert='/a b/ca.crt' dbname=auth",
        )
        .unwrap();
        assert_eq!(rest, "host=db user=auth dbname=auth");
        assert_eq!(p.mode.as_deref(), Some("verify-ca"));
        assert_eq!(p.root_cert, Some(PathBuf::from("/a b/ca.crt")));
        assert_eq!(
            take_tls_params("postgres://h/db").unwrap(),
            ("postgres://h/db".to_owned(), TlsParams::default())
        );
    }

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
    fn modes_follow_libpq() {
        assert_eq!(Target::parse("postgres://h/db").unwrap().mode, Mode::Prefer);
        assert_eq!(
            Target::parse("postgres://h/db?sslmode=disable")
                .unwrap()
                .mode,
            Mode::Disable
        );
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
