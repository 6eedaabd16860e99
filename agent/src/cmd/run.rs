//! `auth-agent run`: bind the health endpoint, and run the daemon until SIGINT or SIGTERM.
use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, signal::unix::SignalKind};
use tracing::warn;

use crate::{
    clock::SystemClock,
    daemon::{self, RunOptions},
    error::AgentError,
};

/// Runs the daemon with the real clock until `shutdown` completes, with `/healthz`,
/// `/readyz` and `/metrics` on `health_addr` when given.
pub async fn run(
    mut opts: RunOptions,
    health_addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    if let Some(addr) = health_addr {
        let listener = TcpListener::bind(addr).await.map_err(|err| {
            AgentError::FixConfig(format!(
                "cannot listen on --health-addr {addr} (AUTH_AGENT_HEALTH_ADDR): {err}"
            ))
        })?;
        opts.health_listener = Some(listener);
    }
    daemon::run(opts, Arc::new(SystemClock), shutdown).await
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (systemd, Kubernetes).
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                // Then only Ctrl-C stops us; say so rather than fail to start.
                warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
