//! Serving the HTTP side port's accepted connections over HTTP/1.1 (hyper), one task per
//! connection, with the limits `axum::serve` does not set:
//!
//! - **A header-read deadline** (`--http-header-timeout`, hyper's `header_read_timeout`
//!   with a timer): a request head must be complete within it, counted from the moment
//!   the connection is ready for one, so a client dribbling a header byte a second
//!   (slowloris) is cut off, and so is a kept-alive connection that stays idle that long.
//! - **A request time limit** (`--request-timeout`, as on the gRPC port): a handler that
//!   takes longer is answered 503.
//! - **Drain**: on shutdown every connection is told to close once its request in
//!   flight is answered (idle ones close at once); whatever is left after the request
//!   time limit is cut.
//!
//! The connection cap and the accept loop are the gRPC port's ([`super::incoming`]).
use std::{convert::Infallible, io, time::Duration};

use axum::{
    Router,
    extract::ConnectInfo,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures_util::Stream;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::watch;
use tower::ServiceExt;

use super::Conn;

/// What one connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http1Settings {
    /// Longest wait for a complete request head (from the connection's start, or from
    /// the previous response on a kept-alive connection).
    pub(crate) header_timeout: Duration,
    /// Longest a request may take from its head to its answer.
    pub(crate) request_timeout: Duration,
}

/// Serves every connection `incoming` yields with `router` until `shutdown` resolves;
/// then drains (bounded by the request time limit) and returns.
pub(crate) async fn serve(
    incoming: impl Stream<Item = io::Result<Conn>>,
    router: Router,
    settings: Http1Settings,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .keep_alive(true);
    let mut connections = super::serve_connections(incoming, shutdown, |conn, draining| {
        connection(
            conn,
            builder.clone(),
            router.clone(),
            settings.request_timeout,
            draining,
        )
    })
    .await;
    // A request in flight gets its time limit to finish; then the rest are dropped
    // (the JoinSet aborts them).
    let _ = tokio::time::timeout(settings.request_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn connection(
    conn: Conn,
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    timeout: Duration,
    mut draining: watch::Receiver<bool>,
) {
    let peer = conn.info.remote_addr;
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        // What `into_make_service_with_connect_info` would have given the handlers
        // (forward-auth checks who is asking).
        request.extensions_mut().insert(ConnectInfo(peer));
        let call = router.clone().oneshot(request);
        async move {
            Ok::<Response, Infallible>(match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request timed out (--request-timeout)\n",
                )
                    .into_response(),
            })
        }
    });
    let served = builder.serve_connection(TokioIo::new(conn), service);
    futures_util::pin_mut!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = draining.wait_for(|d| *d) => {}
    }
    served.as_mut().graceful_shutdown();
    let _ = served.await;
}
