//! The service's ports, accepted by our own loop rather than tonic's or axum's, so that
//! any client that can reach a port cannot take the server down. The gRPC port and the
//! HTTP side port share the loop ([`incoming`]) and differ only in what a connection
//! must do before it is served ([`Handshake`]):
//!
//! - at most a cap of connections at a time per port, the caps of both together kept
//!   below the open-file limit ([`connection_caps`]): one more is closed at once, so
//!   descriptors never run out, and a flood on one port cannot starve the other;
//! - an error from `accept` (EMFILE, ENFILE, ...) backs off (5 ms doubling to 1 s) and
//!   is logged, at most once every 10 s, instead of spinning on it;
//! - on the gRPC port, every connection must finish its TLS handshake and send the
//!   HTTP/2 preface within `handshake_timeout`, or it is closed: a socket that sends
//!   nothing holds a slot for seconds, not forever. On the HTTP port, hyper's
//!   header-read deadline does the same for each request head ([`http1`]);
//! - with TLS, each new handshake uses the certificate loaded at that moment (see
//!   [`tls`]), and the peer's verified identity travels with the connection.
//!
//! The limits on what an established connection may do (streams, request time, PINGs,
//! idle time) are applied where it is served: [`http2`] and [`http1`].
use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::telemetry::Every;

/// The gRPC port's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against these CAs.
    pub client_ca: Option<PathBuf>,
}

/// How connections are accepted and kept: built only from `serve`'s flags, whose
/// attributes state the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportSettings {
    pub tls: Option<TlsSettings>,
    /// How often the TLS files are checked for a change (SIGHUP reloads at once).
    pub tls_poll: Duration,
    pub max_connections: usize,
    pub max_concurrent_streams: u32,
    pub request_timeout: Duration,
    pub handshake_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection gets a GOAWAY at this age (±10 %); `None`: never.
    pub max_connection_age: Option<Duration>,
    /// How long calls may go on after that GOAWAY before the connection is cut.
    pub max_connection_age_grace: Duration,
}

/// The HTTP side port's limits (`serve --http-max-connections`,
/// `--http-header-timeout`); its request time limit is the gRPC port's
/// (`--request-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpSettings {
    /// Most concurrent connections (also kept within a quarter of the open-file limit).
    pub(crate) max_connections: usize,
    /// A connection must send a complete request head within this, when it opens and
    /// again between requests on a kept-alive connection, or it is closed.
    pub header_timeout: Duration,
}

/// How often the TLS files are checked for a change ([`TransportSettings::tls_poll`]).
pub(crate) const TLS_POLL: Duration = Duration::from_secs(10);

/// Spawns `connection(conn, draining)` for every connection `incoming` yields, until
/// `shutdown` resolves or `incoming` ends; then tells the connections to drain (the
/// receiver turns `true`) and returns them, for the caller to wait on as its protocol
/// says. The HTTP/1.1 and HTTP/2 ports share it.
pub(crate) async fn serve_connections<F, Fut>(
    incoming: impl futures_util::Stream<Item = std::io::Result<Conn>>,
    shutdown: impl Future<Output = ()>,
    mut connection: F,
) -> tokio::task::JoinSet<()>
where
    F: FnMut(Conn, tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    use futures_util::StreamExt;
    let (drain, draining) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    futures_util::pin_mut!(incoming);
    futures_util::pin_mut!(shutdown);
    loop {
        tokio::select! {
            next = incoming.next() => match next {
                Some(Ok(conn)) => {
                    connections.spawn(connection(conn, draining.clone()));
                }
                Some(Err(_)) => {}
                None => break,
            },
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = drain.send(true);
    connections
}

pub(crate) mod http1;
pub(crate) mod http2;
pub(crate) mod identity;
pub(crate) mod tls;

pub(crate) use identity::PeerIdentity;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Descriptors kept free for everything else (the pools, the listener, log files).
const RESERVED_FDS: u64 = 64;

/// What handlers know about the connection a call came on.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub(crate) remote_addr: SocketAddr,
    /// The verified client certificate's identity (mTLS only).
    pub(crate) peer: Option<Arc<PeerIdentity>>,
}

/// The byte stream under one connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Either stream, as one.
trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

impl Io {
    fn stream(&mut self) -> Pin<&mut dyn ByteStream> {
        match self {
            Io::Plain(s) => Pin::new(s),
            Io::Tls(s) => Pin::new(s.as_mut()),
        }
    }
}

/// One accepted connection, handed to tonic once its preface has arrived. The preface
/// it read is replayed first; its slot under `max_connections` is released on drop.
pub(crate) struct Conn {
    io: Io,
    replay: Bytes,
    /// Written, not yet sent (see [`AsyncWrite for Conn`](#impl-AsyncWrite-for-Conn)).
    out: BytesMut,
    /// A flush of `out` already let the other ready tasks run once.
    yielded: bool,
    info: ConnInfo,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replay.has_remaining() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.io.stream().poll_read(cx, buf)
    }
}

/// Most bytes held back for one flush; past it a write sends what is held first.
const COALESCE_MAX: usize = 64 * 1024;
/// The largest write buffer a connection keeps between flushes.
const KEEP_BUFFER: usize = 16 * 1024;

impl Conn {
    /// Sends everything held in `out`.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let large = self.out.capacity() > KEEP_BUFFER;
        while !self.out.is_empty() {
            let n = std::task::ready!(self.io.stream().poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        // A large response (a stream's burst) leaves no large buffer behind on an
        // otherwise idle connection: thousands of them may be open.
        if large {
            self.out = BytesMut::new();
        } else {
            self.out.clear();
        }
        Poll::Ready(Ok(()))
    }
}

/// Writes are held, and sent at the flush after the other ready tasks had their turn:
/// when a batch of lookups answers many streams of one connection at once, each
/// stream's response would otherwise be its own write system call (the connection's
/// task runs right after the stream that woke it), and one call carries them all.
impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() >= COALESCE_MAX {
            std::task::ready!(this.poll_send(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.out.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() {
            if !this.yielded {
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            std::task::ready!(this.poll_send(cx))?;
        }
        this.yielded = false;
        this.io.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send(cx))?;
        this.io.stream().poll_shutdown(cx)
    }
}

/// The caps of the gRPC port and, when it is open, the HTTP port: `grpc` and `http` as
/// configured, kept together `RESERVED_FDS` below the soft open-file limit. The HTTP
/// port gets at most a quarter of what is left, so that idle connections to it can
/// never take the descriptors the gRPC port needs.
pub(crate) fn connection_caps(grpc: usize, http: Option<usize>) -> (usize, Option<usize>) {
    caps_within(fd_budget(), grpc, http)
}

/// Descriptors left for connections: the soft open-file limit less `RESERVED_FDS`;
/// `None` when unlimited (or unknown).
fn fd_budget() -> Option<usize> {
    let current = getrlimit(Resource::Nofile).current?;
    Some(usize::try_from(current.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX))
}

/// [`connection_caps`] for a given budget of descriptors.
fn caps_within(budget: Option<usize>, grpc: usize, http: Option<usize>) -> (usize, Option<usize>) {
    let Some(budget) = budget else {
        return (grpc, http);
    };
    let http = http.map(|http| http.min((budget / 4).max(1)));
    let grpc = grpc.min(budget.saturating_sub(http.unwrap_or(0)).max(1));
    (grpc, http)
}

/// Raises the soft open-file limit to the hard limit, so that the connection cap, not
/// the default 1024 descriptors, is what bounds the server. Returns the new soft limit,
/// `None` when unlimited.
pub(crate) fn raise_fd_limit() -> Option<u64> {
    // In rustix's `Rlimit`, `None` is RLIM_INFINITY, which is above every number.
    let limit = getrlimit(Resource::Nofile);
    let below = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if below && setrlimit(Resource::Nofile, raised).is_ok() {
        return limit.maximum;
    }
    limit.current
}

/// What a new connection must do before it is served.
#[derive(Clone)]
pub(crate) enum Handshake {
    /// The gRPC port: the TLS handshake when configured, then the HTTP/2 preface, both
    /// within `timeout`.
    Http2 {
        tls: Option<Arc<tls::Reloader>>,
        timeout: Duration,
    },
    /// The HTTP side port: nothing; hyper's header-read deadline bounds the request
    /// head that follows ([`http1`]).
    Http1,
}

/// How one port accepts connections.
#[derive(Clone)]
pub(crate) struct Accept {
    /// Most connections at once (see [`connection_caps`]).
    pub(crate) cap: usize,
    /// The flag that sets the cap, named when it is reached.
    pub(crate) cap_flag: &'static str,
    /// TCP keepalive on every connection, so that a vanished peer is noticed.
    pub(crate) keepalive: Duration,
    pub(crate) handshake: Handshake,
}

impl Accept {
    /// The gRPC port's, with `cap` connections at most.
    pub(crate) fn grpc(
        settings: &TransportSettings,
        cap: usize,
        tls: Option<Arc<tls::Reloader>>,
    ) -> Accept {
        Accept {
            cap,
            cap_flag: "--max-connections",
            keepalive: settings.keepalive_interval,
            handshake: Handshake::Http2 {
                tls,
                timeout: settings.handshake_timeout,
            },
        }
    }

    /// The HTTP side port's, with `cap` connections at most.
    pub(crate) fn http(settings: &TransportSettings, cap: usize) -> Accept {
        Accept {
            cap,
            cap_flag: "--http-max-connections",
            keepalive: settings.keepalive_interval,
            handshake: Handshake::Http1,
        }
    }
}

/// Accepts on `listener` until `stop` changes (or its sender is dropped), yielding
/// connections once their handshake has completed.
pub(crate) fn incoming(
    listener: TcpListener,
    accept: Accept,
    stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, accept, tx, stop));
    ReceiverStream::new(rx)
}

/// How long to wait after each of consecutive accept errors: 5 ms, doubling, at most a
/// second.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(5))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        wait
    }
}

async fn accept_loop(
    listener: TcpListener,
    accept: Accept,
    tx: mpsc::Sender<io::Result<Conn>>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(accept.cap));
    let accept_errors = Every::new(Duration::from_secs(10));
    let over_cap = Every::new(Duration::from_secs(10));
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, remote_addr) = match accepted {
            Ok(pair) => {
                backoff = Backoff::default();
                pair
            }
            Err(error) => {
                // Out of descriptors (or another transient error): retrying at once would
                // spin a core and starve the connections that could free them.
                if let Some(folded) = accept_errors.ready() {
                    tracing::warn!(%error, similar_since_last = folded, "cannot accept a connection; backing off");
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(folded) = over_cap.ready() {
                tracing::warn!(
                    peer = %remote_addr,
                    refused_since_last = folded,
                    "connection limit reached ({}): closing new connections",
                    accept.cap_flag
                );
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(accept.keepalive)
                .with_interval(accept.keepalive),
        );
        let (handshake, tx) = (accept.handshake.clone(), tx.clone());
        tokio::spawn(async move {
            let ready = match handshake {
                Handshake::Http1 => Ok(Ok((Io::Plain(stream), Bytes::new(), None))),
                Handshake::Http2 { tls, timeout } => {
                    tokio::time::timeout(
                        timeout,
                        handshake_http2(stream, remote_addr, tls.as_deref()),
                    )
                    .await
                }
            };
            match ready {
                Ok(Ok((io, replay, peer))) => {
                    let info = ConnInfo { remote_addr, peer };
                    let _ = tx
                        .send(Ok(Conn {
                            out: BytesMut::new(),
                            yielded: false,
                            io,
                            replay,
                            info,
                            _slot: slot,
                        }))
                        .await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(peer = %remote_addr, %error, "connection closed during its handshake");
                }
                Err(_) => {
                    tracing::debug!(peer = %remote_addr, "connection closed: no handshake and preface in time");
                }
            }
        });
    }
}

/// The TLS handshake (when configured), then the HTTP/2 preface.
async fn handshake_http2(
    stream: TcpStream,
    remote_addr: SocketAddr,
    tls: Option<&tls::Reloader>,
) -> io::Result<(Io, Bytes, Option<Arc<PeerIdentity>>)> {
    let (mut io, peer) = match tls {
        None => (Io::Plain(stream), None),
        Some(tls) => {
            let stream = tls.acceptor().accept(stream).await?;
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| Arc::new(PeerIdentity::from_der(leaf.as_ref())));
            (Io::Tls(Box::new(stream)), peer)
        }
    };
    let mut preface = [0u8; PREFACE.len()];
    io.stream().read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{remote_addr} does not speak HTTP/2 (gRPC needs it)"),
        ));
    }
    Ok((io, Bytes::copy_from_slice(&preface), peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ports_together_stay_below_the_descriptor_limit() {
        // 1024 descriptors, less the 64 reserved: the HTTP port a quarter at most, the
        // gRPC port the rest.
        assert_eq!(caps_within(Some(960), 4096, Some(1024)), (720, Some(240)));
        assert_eq!(caps_within(Some(960), 4096, None), (960, None));
        // What is configured below that stands.
        assert_eq!(caps_within(Some(960), 100, Some(10)), (100, Some(10)));
        // No limit: as configured.
        assert_eq!(caps_within(None, 4096, Some(1024)), (4096, Some(1024)));
        // Never zero, however few descriptors there are.
        assert_eq!(caps_within(Some(0), 4096, Some(1024)), (1, Some(1)));
        for budget in [1, 3, 100, 448, 960, 65_472] {
            let (grpc, http) = caps_within(Some(budget), usize::MAX, Some(usize::MAX));
            assert!(
                grpc + http.unwrap_or(0) <= budget.max(2),
                "{budget}: {grpc} + {http:?}"
            );
        }
    }

    #[test]
    fn accept_errors_back_off_to_a_second_and_never_spin() {
        let mut backoff = Backoff::default();
        let waits: Vec<u128> = (0..10).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // A thousand errors in a row, as when descriptors stay exhausted: the loop
        // sleeps at least 15 minutes in all, instead of spinning a core.
        let mut backoff = Backoff::default();
        let total: Duration = (0..1000).map(|_| backoff.next()).sum();
        assert!(total > Duration::from_secs(900), "{total:?}");
    }

    /// A connection over a real loopback socket, and its peer.
    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, remote_addr) = accepted.unwrap();
        let slot = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
        let conn = Conn {
            io: Io::Plain(stream),
            replay: Bytes::new(),
            out: BytesMut::new(),
            yielded: false,
            info: ConnInfo {
                remote_addr,
                peer: None,
            },
            _slot: slot,
        };
        (conn, peer.unwrap())
    }

    /// What `peer` has received so far, without waiting for more.
    async fn received(peer: &TcpStream) -> Vec<u8> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = vec![0u8; 1 << 20];
        match peer.try_read(&mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Vec::new(),
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn writes_are_held_until_the_flush_and_leave_together() {
        use tokio::io::AsyncWriteExt;
        let (mut conn, peer) = pair().await;
        conn.write_all(b"first response ").await.unwrap();
        conn.write_all(b"second response").await.unwrap();
        assert_eq!(
            received(&peer).await,
            b"",
            "nothing is sent before the flush"
        );
        conn.flush().await.unwrap();
        assert_eq!(received(&peer).await, b"first response second response");

        // Past the bound, a write sends what is held first, flush or not.
        let big = vec![7u8; COALESCE_MAX];
        conn.write_all(&big).await.unwrap();
        conn.write_all(b"more").await.unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            got.extend(received(&peer).await);
            if got.len() >= COALESCE_MAX {
                break;
            }
        }
        assert_eq!(got, big, "the held bytes went out when the next write came");
        assert!(
            conn.out.capacity() <= KEEP_BUFFER,
            "no 64 KiB buffer is kept: {}",
            conn.out.capacity()
        );

        // Shutting down sends what is still held.
        conn.shutdown().await.unwrap();
        assert_eq!(received(&peer).await, b"more");
    }

    #[tokio::test]
    async fn a_flush_lets_the_other_ready_tasks_run_first() {
        use tokio::io::AsyncWriteExt;
        let (mut conn, _peer) = pair().await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let other = {
            let ran = ran.clone();
            tokio::spawn(async move { ran.store(true, std::sync::atomic::Ordering::SeqCst) })
        };
        conn.write_all(b"response").await.unwrap();
        conn.flush().await.unwrap();
        assert!(
            ran.load(std::sync::atomic::Ordering::SeqCst),
            "the task that was ready ran before the flush completed"
        );
        other.await.unwrap();
    }
}
