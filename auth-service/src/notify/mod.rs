//! Expiry notifications (`serve --notify-webhook`): a background task that looks for
//! tokens about to expire every `--notify-interval`, claims their notices in the
//! database, and delivers each as a signed webhook ([`webhook`]).
//!
//! - **Once.** A notice is one row of `token_notices` keyed by (token, threshold,
//!   expiry), claimed by whichever replica inserts it first (`sql::CLAIM_DUE_NOTICES`),
//!   so it goes out once however many replicas scan. A renewal changes the expiry, so
//!   a token that comes back inside a threshold later is owed a new notice.
//! - **The nearest threshold only.** A token that crosses several at once gets the
//!   closest one. Revoked and expired tokens get none.
//! - **Failures.** A non-2xx answer or a timeout is retried with backoff, up to
//!   `attempts`; then logged, counted and marked failed. A replica that dies with a
//!   claim unfinished leaves it to another after the lease.
//! - **A hanging receiver holds up nothing else.** One attempt is bounded by its
//!   timeout; first attempts and retries draw on separate budgets of attempts in
//!   flight, and a notice waiting out its backoff holds neither. A notice that becomes
//!   due is sent within `--notify-interval` plus the time its own attempt takes, however
//!   many others are failing.
//! - **Off the request path.** Nothing here runs inside a call.
use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};

use crate::{
    db::{Db, notices::Notice},
    metrics::{Metrics, NoticeResult},
    telemetry::Every,
};

pub mod webhook;

/// The settings of `serve --notify-*`.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub webhook: http::Uri,
    /// Thresholds, ascending, without duplicates.
    pub before: Vec<Duration>,
    pub interval: Duration,
    pub secret: Option<webhook::Secret>,
    /// Deliveries tried per notice before it is given up.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each, up to a minute.
    pub retry_base: Duration,
    /// One delivery attempt's time limit.
    pub timeout: Duration,
    /// How long a claim may stay unfinished before another replica takes it over.
    pub lease: Duration,
    /// Most notices claimed per scan.
    pub batch: i64,
}

impl NotifySettings {
    /// The settings for `webhook`, notifying `before` expiry (ascending) and scanning
    /// every `interval` (`--notify-before`, `--notify-interval`, whose defaults are the
    /// flags'), with the delivery's own defaults.
    pub fn new(webhook: http::Uri, before: Vec<Duration>, interval: Duration) -> NotifySettings {
        NotifySettings {
            webhook,
            before,
            interval,
            secret: None,
            attempts: 5,
            retry_base: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(600),
            batch: 100,
        }
    }

    /// The wait before attempt `n + 1`, after `n` failures (n >= 1).
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.retry_base
            .saturating_mul(factor)
            .min(Duration::from_secs(60))
    }
}

/// First attempts in flight at once, per replica.
const MAX_FIRST_ATTEMPTS: usize = 64;
/// Retries in flight at once, per replica: a separate budget, so that notices that keep
/// failing never take the place of new ones.
const MAX_RETRIES: usize = 16;
/// Claimed notices held at once, per replica (retrying, or waiting to retry).
const MAX_HELD: usize = 1024;

/// Scan failures (a database outage) are logged once a minute, not every scan.
static SCAN_LOG: Every = Every::new(Duration::from_secs(60));

/// Starts the notifier; it stops when `stop` turns true (deliveries in flight are
/// abandoned: their claims are taken over after the lease).
pub(crate) fn spawn(
    db: Db,
    settings: NotifySettings,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> crate::error::Result<tokio::task::JoinHandle<()>> {
    let client = Arc::new(webhook::Client::new(&settings)?);
    tracing::info!(
        webhook = %webhook::describe(&settings.webhook),
        before = ?settings.before.iter().map(|d| webhook::fmt_threshold(*d)).collect::<Vec<_>>(),
        interval = ?settings.interval,
        signed = settings.secret.is_some(),
        "expiry notifications on"
    );
    Ok(tokio::spawn(run(
        db,
        Arc::new(settings),
        client,
        metrics,
        stop,
    )))
}

async fn run(
    db: Db,
    settings: Arc<NotifySettings>,
    client: Arc<webhook::Client>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let thresholds: Vec<i64> = settings
        .before
        .iter()
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .collect();
    let budget = Arc::new(Budget {
        first: Arc::new(Semaphore::new(MAX_FIRST_ATTEMPTS)),
        retries: Arc::new(Semaphore::new(MAX_RETRIES)),
    });
    let mut deliveries = JoinSet::new();
    loop {
        while deliveries.try_join_next().is_some() {}
        // Room for first attempts, reserved before claiming: a claimed notice is sent
        // at once, never queued behind a slow one.
        let room = budget
            .first
            .available_permits()
            .min(MAX_HELD.saturating_sub(deliveries.len()));
        if room > 0 {
            let limit = settings.batch.min(i64::try_from(room).unwrap_or(i64::MAX));
            let scanned = db.claim_notices(&thresholds, limit, settings.lease).await;
            let ok = scanned.is_ok();
            match scanned {
                Ok(claimed) => {
                    for notice in claimed {
                        let Ok(first) = budget.first.clone().try_acquire_owned() else {
                            break;
                        };
                        deliveries.spawn(deliver(
                            Delivery {
                                db: db.clone(),
                                settings: settings.clone(),
                                client: client.clone(),
                                metrics: metrics.clone(),
                                budget: budget.clone(),
                            },
                            notice,
                            first,
                        ));
                    }
                }
                Err(error) => {
                    if let Some(folded) = SCAN_LOG.ready() {
                        tracing::warn!(%error, similar_since_last = folded, "expiry notices: cannot look for due tokens");
                    }
                }
            }
            // After the deliveries are spawned: a test (or an operator) that sees the
            // count move knows this scan's claims are made.
            metrics.notify_scan(ok);
        }
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            _ = stop.changed() => break,
        }
    }
}

/// The attempts in flight: first attempts and retries, each bounded on its own.
struct Budget {
    first: Arc<Semaphore>,
    retries: Arc<Semaphore>,
}

/// What one delivery needs.
struct Delivery {
    db: Db,
    settings: Arc<NotifySettings>,
    client: Arc<webhook::Client>,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
}

/// Delivers one claimed notice, retrying with backoff, and records how it ended. Each
/// attempt holds a permit of its budget (`first` for the first); waiting out a backoff
/// holds none.
async fn deliver(d: Delivery, notice: Notice, first: tokio::sync::OwnedSemaphorePermit) {
    let threshold = webhook::fmt_threshold(Duration::from_secs(
        u64::try_from(notice.threshold_secs).unwrap_or(0),
    ));
    let mut attempts = u32::try_from(notice.attempts).unwrap_or(0);
    let mut permit = Some(first);
    loop {
        let held = match permit.take() {
            Some(p) => p,
            // The retries' budget is never closed; if it were, give the notice up to
            // the lease (another replica takes it over).
            None => match d.budget.retries.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        attempts += 1;
        let made = i32::try_from(attempts).unwrap_or(i32::MAX);
        // A root span of its own: a delivery belongs to no call.
        let span = crate::trace::webhook(&webhook::describe(&d.settings.webhook), attempts);
        let sent = tracing::Instrument::instrument(d.client.send(&notice), span.clone()).await;
        if sent.is_err() && !span.is_disabled() {
            span.record("otel.status_code", "ERROR");
        }
        drop(held);
        match sent {
            Ok(()) => {
                d.metrics.notice(NoticeResult::Sent);
                tracing::info!(token_id = %notice.token_id, %threshold, attempts, "expiry notice sent");
                if let Err(error) = d.db.notice_sent(&notice, made, d.client.caller()).await {
                    // Delivered but not recorded: after the lease another replica may
                    // send it again, which X-Auth-Delivery lets the receiver spot.
                    tracing::warn!(token_id = %notice.token_id, %error, "expiry notice sent but not recorded");
                }
                return;
            }
            Err(why) if attempts < d.settings.attempts => {
                d.metrics.notice(NoticeResult::Retried);
                let wait = d.settings.backoff(attempts);
                tracing::info!(token_id = %notice.token_id, %threshold, attempts, error = %why, retry_in = ?wait, "expiry notice not delivered; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(why) => {
                d.metrics.notice(NoticeResult::Failed);
                tracing::warn!(token_id = %notice.token_id, %threshold, attempts, error = %why, "expiry notice not delivered; giving up");
                if let Err(error) = d.db.notice_failed(&notice, made).await {
                    tracing::warn!(token_id = %notice.token_id, %error, "expiry notice failure not recorded");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let s = NotifySettings::new(
            "http://x/".parse().unwrap(),
            vec![],
            Duration::from_secs(60),
        );
        let waits: Vec<u64> = (1..=8).map(|n| s.backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}
