//! A minimal HTTP/1.1 responder for probes and Prometheus (`GET /healthz`, `/readyz`,
//! `/metrics`): one request per connection, then close. That is all a kubelet or a scraper
//! needs, and it keeps an HTTP server framework out of the agent's build.
use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{
    clock::Clock,
    health::{AgentState, Health, Snapshot, render_metrics},
};

/// A client gets this long to send its request head; probes send it at once.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read; probes send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;

/// An HTTP response, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
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

/// Answers one request line (`GET /readyz HTTP/1.1`) from a snapshot taken at `now`.
///
/// - `/healthz` (liveness): 200 while the daemon runs, whatever the token's state,
///   because restarting the agent cannot fix a rejected token.
/// - `/readyz` (readiness): 200 when `ready` or `retrying`, 503 when `starting` or
///   `unauthenticated`; the body names the state (and the rejection reason).
/// - `/metrics`: Prometheus text format.
pub fn respond(request_line: &str, snapshot: &Snapshot, now: std::time::SystemTime) -> Response {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET\n");
    }
    let path = target.split('?').next().unwrap_or("");
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
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(snapshot, now),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, health.clone(), clock.clone()));
                }
                Err(err) => {
                    // Usually EMFILE: back off briefly instead of spinning on the error.
                    warn!(error = %err, "health endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn handle(mut stream: TcpStream, health: Health, clock: Arc<dyn Clock>) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => return debug!(error = %err, "health endpoint: bad request"),
        Err(_) => return debug!("health endpoint: client sent no request in time"),
    };
    let request_line = head.lines().next().unwrap_or("");
    let response = respond(request_line, &health.snapshot(), clock.now());
    let reason = match response.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if !request_line.starts_with("HEAD ") {
        out.push_str(&response.body);
    }
    if let Err(err) = stream.write_all(out.as_bytes()).await {
        debug!(error = %err, "health endpoint: client went away");
    }
    let _ = stream.shutdown().await;
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
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
        let get = |state| respond("GET /readyz HTTP/1.1", &with_state(state), UNIX_EPOCH);
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
        let get = |state| respond("GET /healthz HTTP/1.1", &with_state(state), UNIX_EPOCH).status;
        assert_eq!(get(AgentState::Unauthenticated), 200);
        assert_eq!(get(AgentState::Starting), 200);
        assert_eq!(get(AgentState::Stopped), 503);
    }

    #[test]
    fn other_requests() {
        let snapshot = Snapshot::default();
        assert_eq!(
            respond("GET /metrics?x=1 HTTP/1.1", &snapshot, UNIX_EPOCH).status,
            200
        );
        assert_eq!(
            respond("GET /nope HTTP/1.1", &snapshot, UNIX_EPOCH).status,
            404
        );
        assert_eq!(
            respond("POST /readyz HTTP/1.1", &snapshot, UNIX_EPOCH).status,
            405
        );
        assert_eq!(respond("", &snapshot, UNIX_EPOCH).status, 405);
    }
}
