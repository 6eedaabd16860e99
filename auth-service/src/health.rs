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

/// Consecutive failed probes before NOT_SERVING: one lost probe is not an outage.
const FAILURES_BEFORE_NOT_SERVING: u32 = 2;

/// Probes until `stop` changes, reporting transitions. `db` should be a dedicated
/// handle (`Db::dedicated`), so that load on the request pool cannot fail the probe.
pub async fn monitor(
    db: Db,
    reporter: HealthReporter,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving: Option<bool> = None;
    let mut failures = 0;
    loop {
        let ok = db.ping().await;
        failures = if ok.is_ok() { 0 } else { failures + 1 };
        // Once shutdown began, the drain owns the status: never flip it back.
        if *stop.borrow() {
            return;
        }
        let now_serving = match (&ok, serving) {
            (Ok(()), _) => Some(true),
            (Err(_), None) => Some(false),
            (Err(_), Some(_)) if failures >= FAILURES_BEFORE_NOT_SERVING => Some(false),
            (Err(_), Some(_)) => None,
        };
        if let Some(now_serving) = now_serving.filter(|s| serving != Some(*s)) {
            match &ok {
                Ok(()) => tracing::info!("database reachable: SERVING"),
                Err(error) => tracing::warn!(%error, "database unreachable: NOT_SERVING"),
            }
            let status = if now_serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set(&reporter, status).await;
            serving = Some(now_serving);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
