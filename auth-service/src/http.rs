//! The HTTP side port (`serve --http-listen`), routed by axum (already compiled in
//! through tonic): `/metrics` for Prometheus, `/healthz` (the process runs) and
//! `/readyz` (the database answers) for probes, and `/authz/forward-auth` for proxies
//! (see [`crate::authz::forward`]). Accepted and served as the gRPC port is
//! ([`crate::transport`]): a connection cap, a header-read deadline, a request time limit.
use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::{FromRef, State},
    http::{StatusCode, header},
    response::IntoResponse,
    routing::{any, get},
};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::{
    authz::forward::{self, ForwardAuth},
    cache::TokenCache,
    db::Db,
    health::Health,
    metrics::{DbState, Metrics},
    transport,
};

/// What the routes read.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) db: Db,
    /// The health probe's own handle (its session counts against the budget).
    pub(crate) probe: Db,
    /// `--db-max-connections`.
    pub(crate) max_connections: usize,
    /// The trace exporter, for its dropped-span count.
    pub(crate) traces: Option<auth_telemetry::otel::Traces>,
    pub(crate) health: Health,
    /// The token checks and who may ask, for forward-auth.
    pub(crate) forward_auth: ForwardAuth,
}

impl FromRef<HttpState> for ForwardAuth {
    fn from_ref(state: &HttpState) -> ForwardAuth {
        state.forward_auth.clone()
    }
}

/// The routes, for serving and for tests.
pub(crate) fn router(state: HttpState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(FORWARD_AUTH, any(forward::handle))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(metrics, observe))
}

/// The forward-auth route: the one whose requests get a server span of their own.
const FORWARD_AUTH: &str = "/authz/forward-auth";

/// Times every request (`http_server_request_duration_seconds`, by route, method and
/// status), and gives forward-auth requests a server span joined to the caller's trace.
async fn observe(
    State(metrics): State<Arc<Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = match request.uri().path() {
        "/metrics" => "/metrics",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        FORWARD_AUTH => FORWARD_AUTH,
        _ => "other",
    };
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let span = if route == FORWARD_AUTH {
        let span = crate::trace::http_server(&method, route);
        crate::trace::join(&span, crate::trace::trace_headers(request.headers()));
        span
    } else {
        tracing::Span::none()
    };
    let response = next.run(request).instrument(span.clone()).await;
    crate::trace::http_status(&span, response.status().as_u16());
    metrics.http_request(route, &method, response.status(), started.elapsed());
    response
}

async fn metrics_page(State(state): State<HttpState>) -> impl IntoResponse {
    let cache = state.cache.state();
    let db = DbState {
        pool: state.db.pool().status(),
        open_connections: state
            .db
            .open_connections()
            .saturating_add(state.probe.open_connections())
            .saturating_add(cache.connections),
        max_connections: state.max_connections,
    };
    if let Some(traces) = &state.traces {
        state.metrics.otel_dropped(traces.dropped());
    }
    let body = state.metrics.encode(&db, &cache);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.serving() {
        // Ready either way: without the cache every answer comes from the database,
        // which is just as correct. Say so, for whoever looks.
        let cache = state.cache.state();
        let body = if !cache.enabled || state.cache.current() {
            "ready\n".to_owned()
        } else if !cache.listening {
            "ready (the cache is off: the token-change listener is not listening)\n".to_owned()
        } else {
            format!(
                "ready (the cache is off: no heartbeat heard for {:?}, above \
                 --cache-max-staleness)\n",
                cache.lag
            )
        };
        (StatusCode::OK, body)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the database is unreachable, or the service is shutting down\n".to_owned(),
        )
    }
}

/// Serves until `shutdown` completes (in-flight requests finish first, within the
/// request time limit): at most `accept.cap` connections, each with `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    state: HttpState,
    accept: transport::Accept,
    limits: transport::http1::Http1Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let incoming = transport::incoming(listener, accept, stopped);
    let shutdown = async move {
        shutdown.await;
        // The accept loop stops too.
        let _ = stop.send(true);
    };
    transport::http1::serve(incoming, router(state), limits, shutdown).await;
}
