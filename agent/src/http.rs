//! The health endpoint for probes and Prometheus (`GET /healthz`, `/readyz`, `/metrics`),
//! served by axum (already compiled in through tonic). What each route answers is the
//! pure [`respond`], so it is unit-tested without a socket.
use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    response::{IntoResponse, Response as HttpResponse},
};
use tokio::net::TcpListener;
use tracing::warn;

use crate::{
    clock::Clock,
    health::{AgentState, Health, Snapshot, render_metrics},
};

/// An HTTP response, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code.
    pub(crate) status: u16,
    /// `Content-Type`.
    pub(crate) content_type: &'static str,
    /// Body.
    pub(crate) body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers one request (`method`, `path`) from a snapshot taken at `now`.
///
/// - `/healthz` (liveness): 200 while the daemon runs, whatever the token's state,
///   because restarting the agent cannot fix a rejected token.
/// - `/readyz` (readiness): 200 when `ready` or `retrying`, 503 when `starting` or
///   `unauthenticated`; the body names the state (and the rejection reason).
/// - `/metrics`: Prometheus text format.
pub(crate) fn respond(
    method: &str,
    path: &str,
    snapshot: &Snapshot,
    now: std::time::SystemTime,
) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    let state = snapshot.state;
    match path {
        "/healthz" if state == AgentState::Stopped => Response::text(503, "stopped\n"),
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let body = match &snapshot.reject_reason {
                Some(reason) if state == AgentState::Unauthenticated => {
                    format!("unauthenticated ({reason})\n")
                }
                _ => format!("{}\n", state.as_str()),
            };
            Response::text(if state.is_ready() { 200 } else { 503 }, body)
        }
        "/metrics" => Response {
            status: 200,
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: render_metrics(snapshot, now),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

/// What the routes share.
#[derive(Clone)]
struct Shared {
    health: Health,
    clock: Arc<dyn Clock>,
}

/// Every request goes through [`respond`]; axum only carries it.
async fn handle(State(shared): State<Shared>, request: Request) -> HttpResponse {
    let response = respond(
        request.method().as_str(),
        request.uri().path(),
        &shared.health.snapshot(),
        shared.clock.now(),
    );
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut http = (
        status,
        [(header::CONTENT_TYPE, response.content_type)],
        response.body,
    )
        .into_response();
    if request.method() == Method::HEAD {
        *http.body_mut() = axum::body::Body::empty();
    }
    http
}

/// Serves the endpoint on `listener` until `shutdown` completes (in-flight requests
/// finish first).
pub(crate) async fn serve(
    listener: TcpListener,
    health: Health,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .fallback(handle)
        .with_state(Shared { health, clock });
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %err, "health endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn with_state(state: AgentState) -> Snapshot {
        Snapshot {
            state,
            reject_reason: Some("TOKEN_EXPIRED".into()),
            ..Snapshot::default()
        }
    }

    #[test]
    fn readiness_follows_the_state() {
        let get = |state| respond("GET", "/readyz", &with_state(state), UNIX_EPOCH);
        assert_eq!(get(AgentState::Starting), Response::text(503, "starting\n"));
        assert_eq!(get(AgentState::Ready), Response::text(200, "ready\n"));
        assert_eq!(get(AgentState::Retrying), Response::text(200, "retrying\n"));
        assert_eq!(
            get(AgentState::Unauthenticated),
            Response::text(503, "unauthenticated (TOKEN_EXPIRED)\n")
        );
    }

    #[test]
    fn liveness_ignores_the_token() {
        let get = |state| respond("GET", "/healthz", &with_state(state), UNIX_EPOCH).status;
        assert_eq!(get(AgentState::Unauthenticated), 200);
        assert_eq!(get(AgentState::Starting), 200);
        assert_eq!(get(AgentState::Stopped), 503);
    }

    #[test]
    fn other_requests() {
        let snapshot = Snapshot::default();
        assert_eq!(
            respond("GET", "/metrics", &snapshot, UNIX_EPOCH).status,
            200
        );
        assert_eq!(
            respond("HEAD", "/healthz", &snapshot, UNIX_EPOCH).status,
            200
        );
        assert_eq!(respond("GET", "/nope", &snapshot, UNIX_EPOCH).status, 404);
        assert_eq!(
            respond("POST", "/readyz", &snapshot, UNIX_EPOCH).status,
            405
        );
    }
}
