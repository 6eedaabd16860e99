//! The flags of `auth-service healthcheck`: which server to ask, and how to reach it
//! (the server's own listen address and TLS files, read from the same variables).
use std::{net::SocketAddr, path::PathBuf};

use clap::Args;

/// What `healthcheck` asks, and how it reaches the server.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The server to ask [default: AUTH_SERVICE_LISTEN (an unspecified address as
    /// 127.0.0.1), else 127.0.0.1:50051].
    // The fallback is `serve --listen`'s default, `serve::DEFAULT_LISTEN`: the test below
    // keeps this help true.
    #[arg(long, env = "AUTH_SERVICE_HEALTHCHECK_ADDR")]
    pub(crate) addr: Option<SocketAddr>,
    /// The service name to check ("" for the server as a whole).
    #[arg(
        long,
        env = "AUTH_SERVICE_HEALTHCHECK_SERVICE",
        default_value = "auth.v1.AuthService"
    )]
    pub(crate) service: String,
    /// The server's listen address, when `--addr` is not given.
    #[arg(long, hide = true, env = "AUTH_SERVICE_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Speak TLS, trusting the CA certificates in this file [default: TLS when
    /// AUTH_SERVICE_TLS_CERT is set, trusting the chain in that file].
    #[arg(long, env = "AUTH_SERVICE_HEALTHCHECK_CA_FILE", value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// The server's certificate (`serve --tls-cert`): its chain is trusted, and its first
    /// DNS name is the name checked, since the check dials an IP address.
    #[arg(long, env = "AUTH_SERVICE_TLS_CERT", value_name = "FILE")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The server's key: presented with its certificate when the server requires client
    /// certificates (`serve --tls-client-ca`).
    #[arg(long, env = "AUTH_SERVICE_TLS_KEY", value_name = "FILE")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Whether the server requires client certificates.
    #[arg(
        long,
        hide = true,
        env = "AUTH_SERVICE_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub(crate) tls_client_ca: Option<PathBuf>,
}

impl HealthcheckArgs {
    /// The address to ask: `--addr`, else the listen address with an unspecified IP
    /// (0.0.0.0, ::) replaced by loopback.
    pub(crate) fn target(&self) -> SocketAddr {
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
            None => super::serve::DEFAULT_LISTEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_address_it_asks_serve_on_its_default_or_its_listen_address() {
        let args = |addr: Option<&str>, listen: Option<&str>| HealthcheckArgs {
            addr: addr.map(|a| a.parse().unwrap()),
            service: String::new(),
            listen: listen.map(|a| a.parse().unwrap()),
            ca_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        };
        assert_eq!(args(None, None).target().to_string(), "127.0.0.1:50051");
        assert_eq!(
            args(None, Some("0.0.0.0:7000")).target().to_string(),
            "127.0.0.1:7000"
        );
        assert_eq!(
            args(None, Some("[::]:7000")).target().to_string(),
            "[::1]:7000"
        );
        assert_eq!(
            args(Some("10.0.0.1:1"), Some("0.0.0.0:7000"))
                .target()
                .to_string(),
            "10.0.0.1:1"
        );
    }
}
