//! Serving the accepted connections over HTTP/2 (hyper), one task per connection, so
//! that each can be aged out and all can be drained.
//!
//! - **Connection age** (`--max-connection-age`, grpc-go's `MaxConnectionAge`): gRPC
//!   clients, Envoy included, keep one connection for as long as it lives, so the pods
//!   an autoscaler adds get no traffic from them, and a rolling update piles everyone
//!   onto the oldest pods. At its age (jittered ±10 %, so that the connections a fleet
//!   opened together do not all end together) a connection gets a GOAWAY: calls in
//!   flight finish, new calls go to a new connection, which the client's balancer (or
//!   a Kubernetes Service) may place on another replica. What is still running after
//!   `--max-connection-age-grace` is cut.
//! - **Drain**: on shutdown every connection gets a GOAWAY at once, and [`serve`]
//!   returns when the last one has finished (the caller bounds that with
//!   `--shutdown-grace`).
//! - **Going away**: every request carries a [`GoingAway`] extension that turns true
//!   when its connection gets its GOAWAY, so that a long-lived stream (a
//!   `WatchTokenInvalidations` watcher) can tell its client to move before it is cut.
//! - **Limits**: the HTTP/2 settings of every connection (streams, windows, header list,
//!   keepalive PINGs) and a time limit on every call.
use std::{
    convert::Infallible,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::watch;
use tower::Service;

use super::{Conn, ConnInfo};

/// Turns true when the connection a request came on is being closed (aged out, or the
/// server draining): calls in flight may finish, but a stream that never ends will be
/// cut after the grace period.
#[derive(Debug, Clone)]
pub(crate) struct GoingAway(pub(crate) watch::Receiver<bool>);

/// What one connection may do, and how long it may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Http2Settings {
    pub(crate) max_concurrent_streams: u32,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) max_header_list: u32,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    /// `None`: connections live as long as their clients keep them.
    pub(crate) max_age: Option<Duration>,
    pub(crate) age_grace: Duration,
    /// Longest a call may take from its first byte to its answer.
    pub(crate) request_timeout: Duration,
}

/// Serves every connection `incoming` yields with `service` until `shutdown`
/// resolves; then drains, and returns once every connection has finished.
pub(crate) async fn serve<S, B>(
    incoming: impl Stream<Item = io::Result<Conn>>,
    service: S,
    settings: Http2Settings,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .initial_stream_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(settings.max_header_list)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let mut connections = super::serve_connections(incoming, shutdown, |conn, draining| {
        connection(
            conn,
            builder.clone(),
            service.clone(),
            settings.clone(),
            draining,
        )
    })
    .await;
    while connections.join_next().await.is_some() {}
}

/// ±10 % of `age`, so that connections opened together do not all end together.
fn jittered(age: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let unit = match getrandom::fill(&mut byte) {
        Ok(()) => f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX),
        Err(_) => 0.5,
    };
    age.mul_f64(0.9 + 0.2 * unit)
}

async fn connection<S, B>(
    conn: Conn,
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    service: S,
    settings: Http2Settings,
    mut draining: watch::Receiver<bool>,
) where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let info = conn.info.clone();
    let (going_away, going) = watch::channel(false);
    let service = TowerToHyperService::new(PerConnection {
        inner: service,
        info,
        going: GoingAway(going),
        timeout: settings.request_timeout,
    });
    let served = builder.serve_connection(TokioIo::new(conn), service);
    futures_util::pin_mut!(served);
    let age = async {
        match settings.max_age {
            Some(age) => tokio::time::sleep(jittered(age)).await,
            None => std::future::pending().await,
        }
    };
    let aged = tokio::select! {
        _ = served.as_mut() => return,
        () = age => true,
        _ = draining.wait_for(|d| *d) => false,
    };
    // GOAWAY: the calls in flight finish, new ones go elsewhere.
    let _ = going_away.send(true);
    served.as_mut().graceful_shutdown();
    if aged {
        // The rest of a draining server's connections are bounded by its own grace.
        let _ = tokio::time::timeout(settings.age_grace, served).await;
    } else {
        let _ = served.await;
    }
}

/// The per-connection service: the connection's [`ConnInfo`] in every request's
/// extensions (where the handlers look for the peer and its certificate), the request
/// body as tonic's, and a time limit on every call.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    info: ConnInfo,
    going: GoingAway,
    timeout: Duration,
}

impl<S, B> Service<http::Request<Incoming>> for PerConnection<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        request.extensions_mut().insert(self.going.clone());
        let call = self.inner.call(request.map(tonic::body::Body::new));
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Ok(response.map(tonic::body::Body::new)),
                Ok(Err(never)) => match never {},
                // As tonic's own server answers a call over its time limit.
                Err(_) => Ok(tonic::Status::cancelled("Timeout expired").into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_jittered_within_ten_percent() {
        let age = Duration::from_secs(300);
        let ages: Vec<Duration> = (0..200).map(|_| jittered(age)).collect();
        assert!(
            ages.iter()
                .all(|a| *a >= age.mul_f64(0.9) && *a <= age.mul_f64(1.1))
        );
        let (min, max) = (ages.iter().min(), ages.iter().max());
        assert!(
            max.zip(min)
                .is_some_and(|(max, min)| *max - *min > Duration::from_secs(10)),
            "spread out, not all the same"
        );
    }
}
