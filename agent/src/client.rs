//! The gRPC side: the channel to the server, and one method per `auth.v1` call the
//! agent makes, each with the bearer token and its own timeout.
use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use auth_api::v1::{
    LookupCurrentTokenRequest, RenewCurrentTokenRequest, RevokeCurrentTokenRequest,
    auth_service_client::AuthServiceClient,
};
use auth_tls::pem;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::{TlsConnector, rustls::ClientConfig};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint, Uri},
};

use crate::{error::AgentError, server_url::ServerUrl, timefmt, token::Token};

/// How long to wait for a TCP (and later TLS) connection before calling it a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, sent even while idle. The agent makes one call every few days,
/// and a connection that idle is often dead without anyone knowing (a NAT or load balancer
/// dropped it, a laptop slept): pings find out and close it, so that the next renewal
/// dials afresh instead of being written into a dead socket and hanging until its timeout.
/// A minute is far above what servers treat as abusive (hyper enforces no minimum).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive idle time: the kernel's own check, which also covers the connection
/// while HTTP/2 is still being set up.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The files of an https connection: the CA to trust (default: the system's roots), and
/// the client certificate and key for servers that require one (mTLS). All are read
/// again on every new connection, so rotated certificates are picked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust (`--ca-file`); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (`--client-cert`), for servers that require one.
    pub client_cert: Option<PathBuf>,
    /// Its private key (`--client-key`).
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// `self`, with what it leaves unset taken from `saved`.
    pub fn or(&self, saved: &TlsFiles) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone().or_else(|| saved.ca_file.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| saved.client_cert.clone()),
            client_key: self.client_key.clone().or_else(|| saved.client_key.clone()),
        }
    }

    /// The rustls client settings, from the files as they are now.
    fn client_config(&self) -> Result<ClientConfig, String> {
        let roots = match &self.ca_file {
            Some(path) => pem::read_roots(path).map_err(|e| format!("--ca-file: {e}"))?,
            None => auth_tls::roots::system_roots().map_err(|e| e.to_string())?,
        };
        let builder = ClientConfig::builder_with_provider(auth_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let key = pem::read_key(key).map_err(|e| format!("--client-key: {e}"))?;
                let chain = pem::read_certs(cert).map_err(|e| format!("--client-cert: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("--client-cert and --client-key: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The transport settings of the channel to the server. The defaults are the
/// constants above; tests shorten them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval (see [`HTTP2_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered (see [`HTTP2_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time (see [`TCP_KEEPALIVE`]).
    pub tcp_keepalive: Duration,
    /// For https servers.
    pub tls: TlsFiles,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
            keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            tcp_keepalive: TCP_KEEPALIVE,
            tls: TlsFiles::default(),
        }
    }
}

/// A channel to `server` that connects on first use, and reconnects after a failure, so
/// that a server that is down at start does not stop the agent from starting.
///
/// For `https://` the TLS is ours, not tonic's: the connector reads the CA and client
/// certificate files again for every new connection, so a rotated client certificate
/// is used from the next reconnect on without a restart.
pub fn connect_lazy(server: &ServerUrl, transport: &Transport) -> Result<Channel, AgentError> {
    let authority = server.authority();
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|err| AgentError::FixConfig(format!("invalid server URL {server}: {err}")))?
        .connect_timeout(transport.connect_timeout)
        .http2_keep_alive_interval(transport.keepalive_interval)
        .keep_alive_timeout(transport.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(transport.tcp_keepalive));
    if !server.is_https() {
        return Ok(endpoint.connect_lazy());
    }
    let host = server.host().to_owned();
    let name = ServerName::try_from(host.clone())
        .map_err(|err| AgentError::FixConfig(format!("invalid server name in {server}: {err}")))?;
    // A CA file that is not there is a configuration error now, not a retry loop later.
    if let Some(ca) = &transport.tls.ca_file
        && !ca.is_file()
    {
        return Err(AgentError::FixConfig(format!(
            "--ca-file {} (AUTH_AGENT_CA_FILE): no such file",
            ca.display()
        )));
    }
    let (tls, keepalive) = (transport.tls.clone(), transport.tcp_keepalive);
    let port = server.port();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, name, host) = (tls.clone(), name.clone(), host.clone());
        async move {
            let config = tls.client_config().map_err(std::io::Error::other)?;
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = socket2::SockRef::from(&tcp)
                .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(keepalive));
            let _ = tcp.set_nodelay(true);
            let stream = TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// What `RenewCurrentToken` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewOutcome {
    /// The expiry after the call; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
    /// True only when this call extended the expiry.
    pub renewed: bool,
    /// The earliest time a renewal would extend the token again; `None` when none can.
    pub next_renewal_at: Option<SystemTime>,
}

/// What `LookupCurrentToken` answered: who the token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's stable id (safe to log).
    pub token_id: String,
    /// The user the token belongs to.
    pub user_id: String,
    /// The token's human-readable name.
    pub name: String,
    /// The scopes granted to the token.
    pub scopes: Vec<String>,
    /// The expiry; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
}

/// The `auth.v1.AuthService` calls the agent makes. Errors are raw statuses (a timeout is
/// `DEADLINE_EXCEEDED`); [`AgentError::from_status`] says what they mean.
#[derive(Debug, Clone)]
pub struct Client {
    inner: AuthServiceClient<Channel>,
}

impl Client {
    /// A client over `channel` (cheap to clone; calls share the connection).
    pub fn new(channel: Channel) -> Self {
        Client {
            inner: AuthServiceClient::new(channel),
        }
    }

    /// `RenewCurrentToken`: extends the token in place when it is due.
    pub async fn renew(
        &mut self,
        token: &Token,
        timeout: Duration,
    ) -> Result<RenewOutcome, Status> {
        let request = authorized(RenewCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.renew_current_token(request))
            .await?
            .into_inner();
        Ok(RenewOutcome {
            expires_at: time(response.expires_at)?,
            renewed: response.renewed,
            next_renewal_at: time(response.next_renewal_at)?,
        })
    }

    /// `LookupCurrentToken`: who am I.
    pub async fn lookup(&mut self, token: &Token, timeout: Duration) -> Result<Identity, Status> {
        let request = authorized(LookupCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.lookup_current_token(request))
            .await?
            .into_inner();
        Ok(Identity {
            token_id: response.token_id,
            user_id: response.user_id,
            name: response.name,
            scopes: response.scopes,
            expires_at: time(response.expires_at)?,
        })
    }

    /// `RevokeCurrentToken`: log out. Returns when the server says it was revoked.
    pub async fn revoke(
        &mut self,
        token: &Token,
        timeout: Duration,
    ) -> Result<Option<SystemTime>, Status> {
        let request = authorized(RevokeCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.revoke_current_token(request))
            .await?
            .into_inner();
        time(response.revoked_at)
    }
}

fn authorized<T>(message: T, token: &Token, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.bearer());
    // Tells the server the deadline (`grpc-timeout`) so it can give up when we have.
    request.set_timeout(timeout);
    request
}

/// Enforces the timeout on our side too (`grpc-timeout` only binds a server that honours
/// it), and reports every expiry the same way: tonic's own enforcement of the header
/// surfaces as `CANCELLED: Timeout expired`, which reads like someone cancelled the call.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = tokio::time::Instant::now();
    let expired =
        || Status::deadline_exceeded(format!("no answer within {}", timefmt::approx(timeout)));
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(expired()),
        Ok(Err(status)) if status.code() == Code::Cancelled && started.elapsed() >= timeout => {
            Err(expired())
        }
        Ok(result) => result,
    }
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    timestamp
        .map(|ts| {
            auth_api::time::from_timestamp(&ts)
                .map(SystemTime::from)
                .ok_or_else(|| Status::internal("the server sent an invalid timestamp"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_ca_file_is_a_configuration_error_at_once() {
        let url: ServerUrl = "https://auth.example.com".parse().unwrap();
        let transport = Transport {
            tls: TlsFiles {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..TlsFiles::default()
            },
            ..Transport::default()
        };
        let err = connect_lazy(&url, &transport).unwrap_err();
        assert!(matches!(err, AgentError::FixConfig(_)));
        assert!(err.to_string().contains("--ca-file"), "{err}");
        assert!(connect_lazy(&url, &Transport::default()).is_ok());
    }

    #[test]
    fn flags_win_over_what_login_saved() {
        let flags = TlsFiles {
            ca_file: Some("/flag/ca".into()),
            ..TlsFiles::default()
        };
        let saved = TlsFiles {
            ca_file: Some("/saved/ca".into()),
            client_cert: Some("/saved/cert".into()),
            client_key: Some("/saved/key".into()),
        };
        let merged = flags.or(&saved);
        assert_eq!(merged.ca_file, Some("/flag/ca".into()));
        assert_eq!(merged.client_cert, Some("/saved/cert".into()));
        assert!(TlsFiles::default().is_empty() && !merged.is_empty());
    }

    #[test]
    fn invalid_timestamps_are_an_error_not_a_panic() {
        let bad = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(time(Some(bad)).unwrap_err().code(), Code::Internal);
        assert_eq!(time(None).unwrap(), None);
    }
}
