//! Health: `grpc.health.v1` status and `/readyz`, from a periodic database probe.
//! NOT_SERVING while the database is unreachable, so that load balancers and Kubernetes
//! probes route away, and during shutdown.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{db::Db, metrics::Metrics};

/// The serving status, as `grpc.health.v1` and `/readyz` report it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Health {
    reporter: HealthReporter,
    serving: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// Starts NOT_SERVING: nothing is known about the database yet.
    pub(crate) async fn new(reporter: HealthReporter, metrics: Arc<Metrics>) -> Health {
        let health = Health {
            reporter,
            serving: Arc::new(AtomicBool::new(false)),
            metrics,
        };
        health.set(ServingStatus::NotServing).await;
        health
    }

    /// Sets the overall ("") and the auth service's status together.
    pub(crate) async fn set(&self, status: ServingStatus) {
        self.serving
            .store(status == ServingStatus::Serving, Ordering::Release);
        for name in ["", auth_api::SERVICE_NAME] {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Whether the service reports SERVING.
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// Consecutive failed probes before NOT_SERVING: one lost probe is not an outage.
const FAILURES_BEFORE_NOT_SERVING: u32 = 2;
/// The shortest gap between two probes that failing calls asked for.
const MIN_PROBE_GAP: Duration = Duration::from_millis(500);

/// Probes every `every` until `stop` changes, reporting transitions. `db` should be a
/// dedicated handle (`Db::dedicated`), so that load on the request pool cannot fail the
/// probe. `trouble` is woken by calls that found the database unavailable: then the
/// probe runs at once, and one failure is enough for NOT_SERVING (the calls failed too),
/// so that traffic moves away within moments, not a probe interval or two.
pub(crate) async fn monitor(
    db: Db,
    health: Health,
    every: Duration,
    trouble: std::sync::Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving: Option<bool> = None;
    let mut failures = 0;
    let mut woken = false;
    loop {
        let probed = tokio::time::Instant::now();
        let ok = db.ping().await;
        failures = if ok.is_ok() { 0 } else { failures + 1 };
        health.metrics.db_up(ok.is_ok());
        // Once shutdown began, the drain owns the status: never flip it back.
        if *stop.borrow() {
            return;
        }
        let now_serving = match (&ok, serving) {
            (Ok(()), _) => Some(true),
            (Err(_), None) => Some(false),
            (Err(_), Some(_)) if woken || failures >= FAILURES_BEFORE_NOT_SERVING => Some(false),
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
            health.set(status).await;
            serving = Some(now_serving);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => woken = false,
            _ = trouble.notified() => {
                // During an outage every call wakes us: probe at most this often.
                woken = true;
                tokio::time::sleep_until(probed + MIN_PROBE_GAP).await;
            }
            _ = stop.changed() => return,
        }
    }
}
