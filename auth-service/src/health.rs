//! Reports `grpc.health.v1` status from a periodic database probe: NOT_SERVING while
//! the database is unreachable, so load balancers and Kubernetes probes route away.
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::db::Db;

/// Sets the overall ("") and the auth service's status together.
pub async fn set(reporter: &HealthReporter, status: ServingStatus) {
    for name in ["", auth_api::SERVICE_NAME] {
        reporter.set_service_status(name, status).await;
    }
}

/// Probes until `stop` changes, reporting transitions.
pub async fn monitor(
    db: Db,
    reporter: HealthReporter,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    loop {
        let ok = db.ping().await;
        if serving != Some(ok.is_ok()) {
            match &ok {
                Ok(()) => tracing::info!("database reachable: SERVING"),
                Err(error) => tracing::warn!(%error, "database unreachable: NOT_SERVING"),
            }
            let status = if ok.is_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set(&reporter, status).await;
            serving = Some(ok.is_ok());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
