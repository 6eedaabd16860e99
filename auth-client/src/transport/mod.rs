//! The connection to the service: one logical channel over every address the server's
//! name resolves to, each address a tonic channel with our own connector (TCP
//! keepalive, no delay, TLS from [`tls`]).
//!
//! - **Balancing.** A DNS name is resolved at once and again every
//!   [`RESOLVE_EVERY`]; every address gets a connection, and each call goes to the less
//!   busy of two picked at random (tower's power-of-two-choices, on in-flight calls).
//!   Replicas that appear are used from the next resolution, replicas that go are
//!   dropped. An IP address is one connection. tonic's own balanced channel
//!   (`Channel::balance_channel`) is not used because it dials with tonic's connector,
//!   whose TLS is built once from PEM bytes: ours reads the files on every connection.
//! - **Lazy.** Nothing is dialled until the first call, and a failed connection is
//!   dialled again on the next one, so a service that is down at start does not stop
//!   its callers from starting.
//! - **Keepalive.** HTTP/2 PINGs even while idle, so that a connection that died
//!   silently (a NAT or load balancer dropped it, a laptop slept) is closed and the next
//!   call dials afresh instead of hanging until its deadline.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tonic::{
    body::Body,
    transport::{Channel, Endpoint, Uri},
};
use tower::{
    BoxError, ServiceExt,
    balance::p2c::Balance,
    buffer::Buffer,
    discover::Change,
    load::{CompleteOnResponse, PendingRequestsDiscover},
    util::BoxCloneSyncService,
};

pub mod tls;
pub mod url;

pub use tls::TlsFiles;
pub use url::{InvalidUrl, ServerUrl};

/// How long to wait for a TCP (and TLS) connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, sent even while idle (see the module documentation).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive idle time: the kernel's own check, which also covers the connection
/// while HTTP/2 is still being set up.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// How often a DNS name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// Calls queued for the balancer before callers wait.
const BUFFER: usize = 1024;

/// The channel every call goes through: one tonic channel, or the balancer over one
/// per address. Cheap to clone; clones share the connections.
pub type GrpcChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, ChannelError>;

/// A transport failure of the channel: the error of tonic's channel or of the
/// balancer, whose causes ([`std::error::Error::source`]) tonic reads to choose a
/// status code, and [`crate::retry::never_sent`] to find a call that was never sent.
///
/// A named type rather than a bare `BoxError`: the futures of generated clients over a
/// service whose error is a boxed trait object cannot be proven `Send` by rustc.
#[derive(Debug)]
pub struct ChannelError(BoxError);

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// The transport settings of the channel to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered.
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time.
    pub tcp_keepalive: Duration,
    /// For `https://` servers.
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

/// A setting that cannot work, found before anything is dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The server URL.
    #[error(transparent)]
    InvalidUrl(#[from] InvalidUrl),
    /// The host of an `https://` URL cannot be a TLS server name.
    #[error("invalid server name {0:?} for TLS")]
    InvalidServerName(String),
    /// The CA file does not exist.
    #[error("CA file {}: no such file", .0.display())]
    MissingCaFile(std::path::PathBuf),
    /// A thread or task of the client could not be started.
    #[error("cannot start the client: {0}")]
    Io(String),
}

/// A channel to `server`, connecting on first use (see the module documentation).
/// Needs a tokio runtime: the balancer's and connections' tasks are spawned on it.
pub fn connect_lazy(server: &ServerUrl, transport: &Transport) -> Result<GrpcChannel, ConfigError> {
    // The connector does TLS itself: tonic's own connector refuses an https:// URI
    // without tonic's TLS, and only the authority is sent (`:authority`).
    let uri: Uri = format!("http://{}", server.authority())
        .parse()
        .map_err(|_| InvalidUrl {
            url: server.to_string(),
            why: "not a URL",
        })?;
    let endpoint = Endpoint::from(uri)
        .connect_timeout(transport.connect_timeout)
        .http2_keep_alive_interval(transport.keepalive_interval)
        .keep_alive_timeout(transport.keepalive_timeout)
        .keep_alive_while_idle(true);
    let tls = match server.is_https() {
        false => None,
        true => {
            let name = ServerName::try_from(server.host().to_owned())
                .map_err(|_| ConfigError::InvalidServerName(server.host().to_owned()))?;
            // A CA file that is not there is a configuration error now, not a retry
            // loop later.
            if let Some(ca) = &transport.tls.ca_file
                && !ca.is_file()
            {
                return Err(ConfigError::MissingCaFile(ca.clone()));
            }
            Some((transport.tls.clone(), name))
        }
    };
    let dial = Dial {
        endpoint,
        tls,
        tcp_keepalive: transport.tcp_keepalive,
    };
    if let Ok(ip) = server.host().parse::<IpAddr>() {
        return Ok(boxed(dial.channel(SocketAddr::new(ip, server.port()))));
    }
    Ok(balanced(dial, server.host().to_owned(), server.port()))
}

/// A tonic channel as a [`GrpcChannel`] (for a channel made elsewhere, such as an
/// in-memory one in tests).
pub fn boxed(channel: Channel) -> GrpcChannel {
    BoxCloneSyncService::new(channel.map_err(|e| ChannelError(BoxError::from(e))))
}

/// How to dial one address.
#[derive(Clone)]
struct Dial {
    endpoint: Endpoint,
    tls: Option<(TlsFiles, ServerName<'static>)>,
    tcp_keepalive: Duration,
}

impl Dial {
    /// A lazy channel to `addr`: TCP (keepalive, no delay), then TLS when configured,
    /// with the settings read from their files at each new connection.
    fn channel(&self, addr: SocketAddr) -> Channel {
        let (tls, keepalive) = (self.tls.clone(), self.tcp_keepalive);
        let connector = tower::service_fn(move |_: Uri| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let _ = socket2::SockRef::from(&tcp)
                    .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(keepalive));
                let _ = tcp.set_nodelay(true);
                let io: Box<dyn Io> = match tls {
                    None => Box::new(tcp),
                    Some((files, name)) => {
                        let config = tls::client_config(&files).map_err(std::io::Error::other)?;
                        Box::new(
                            TlsConnector::from(Arc::new(config))
                                .connect(name, tcp)
                                .await?,
                        )
                    }
                };
                Ok::<_, std::io::Error>(TokioIo::new(io))
            }
        });
        self.endpoint.connect_with_connector_lazy(connector)
    }
}

/// A byte stream a connection runs over: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The balancer over every address `host` resolves to, kept up to date by a task that
/// ends when the channel is dropped.
fn balanced(dial: Dial, host: String, port: u16) -> GrpcChannel {
    let name = host.clone();
    balanced_over(dial, name, move || {
        let host = host.clone();
        async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(Iterator::collect)
        }
    })
}

/// The balancer over the addresses `resolve` gives, asked again every
/// [`RESOLVE_EVERY`].
fn balanced_over<R, F>(dial: Dial, host: String, resolve: R) -> GrpcChannel
where
    R: Fn() -> F + Send + 'static,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send,
{
    let (changes, discovered) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut known: HashMap<SocketAddr, ()> = HashMap::new();
        let mut said = None::<String>;
        loop {
            match resolve().await {
                Ok(found) => {
                    let found: HashMap<SocketAddr, ()> =
                        found.into_iter().map(|a| (a, ())).collect();
                    if found.is_empty() {
                        tracing::warn!(%host, "the server's name has no addresses: keeping the last ones");
                    } else {
                        said = None;
                        for gone in known.keys().filter(|a| !found.contains_key(a)) {
                            if changes.send(Ok(Change::Remove(*gone))).await.is_err() {
                                return;
                            }
                        }
                        for new in found.keys().filter(|a| !known.contains_key(a)) {
                            let change = Change::Insert(*new, dial.channel(*new));
                            if changes.send(Ok::<_, BoxError>(change)).await.is_err() {
                                return;
                            }
                        }
                        known = found;
                    }
                }
                Err(error) => {
                    let text = error.to_string();
                    if said.as_deref() != Some(text.as_str()) {
                        tracing::warn!(%host, %error, "cannot resolve the server's name: keeping the last addresses");
                        said = Some(text);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(RESOLVE_EVERY) => {}
                () = changes.closed() => return,
            }
        }
    });
    let discover = PendingRequestsDiscover::new(
        tokio_stream::wrappers::ReceiverStream::new(discovered),
        CompleteOnResponse::default(),
    );
    let balance = Balance::new(discover);
    BoxCloneSyncService::new(Buffer::new(balance, BUFFER).map_err(ChannelError))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    use super::*;

    /// A real gRPC server on a loopback port whose health check answers `status`.
    async fn server(status: ServingStatus) -> SocketAddr {
        let (reporter, service) = tonic_health::server::health_reporter();
        match status {
            ServingStatus::Serving => {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await
            }
            _ => {
                reporter
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await
            }
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _keep = reporter;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        addr
    }

    /// How many of `n` health checks through `channel` each status answered.
    async fn spread(channel: &GrpcChannel, n: usize) -> (usize, usize) {
        let mut client = HealthClient::new(channel.clone());
        let (mut serving, mut not) = (0, 0);
        for _ in 0..n {
            let status = client
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status();
            match status {
                ServingStatus::Serving => serving += 1,
                _ => not += 1,
            }
        }
        (serving, not)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_spread_over_every_address_the_name_resolves_to() {
        let a = server(ServingStatus::Serving).await;
        let b = server(ServingStatus::NotServing).await;
        let addresses = Arc::new(Mutex::new(vec![a, b]));
        let dial = Dial {
            endpoint: Endpoint::from_static("http://auth.test"),
            tls: None,
            tcp_keepalive: Duration::from_secs(60),
        };
        let resolved = addresses.clone();
        let channel = balanced_over(dial, "auth.test".into(), move || {
            let found = resolved.lock().unwrap().clone();
            async move { Ok(found) }
        });
        // Both connections up: a call at a time goes to either (power of two choices
        // over equal loads picks at random).
        let (to_a, to_b) = spread(&channel, 200).await;
        assert!(to_a >= 20 && to_b >= 20, "a {to_a}, b {to_b}");
    }
}
