//! The daemon's observable state: what `/readyz` and `/metrics` report, and what tests
//! (and an embedding program) can watch change through [`Health::subscribe`].
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;

/// Where the daemon stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    /// The preflight renewal and identity lookup have not finished yet.
    Starting,
    /// The last attempt succeeded.
    Ready,
    /// The last attempt failed for a reason that is not a login problem (server down,
    /// timeout); the token is presumed still good and the agent retries with backoff.
    Retrying,
    /// The token is missing or rejected: someone must log in again (see the WARN log).
    Unauthenticated,
    /// `run` has returned.
    Stopped,
}

impl AgentState {
    /// Every state, in the order metrics list them.
    pub(crate) const ALL: [AgentState; 5] = [
        AgentState::Starting,
        AgentState::Ready,
        AgentState::Retrying,
        AgentState::Unauthenticated,
        AgentState::Stopped,
    ];

    /// Lower-case name, as in `/readyz` bodies and the `state` metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AgentState::Starting => "starting",
            AgentState::Ready => "ready",
            AgentState::Retrying => "retrying",
            AgentState::Unauthenticated => "unauthenticated",
            AgentState::Stopped => "stopped",
        }
    }

    /// Whether `/readyz` answers 200. A server outage keeps the agent ready: the token is
    /// still valid, and failing every workload's readiness at once would turn an auth
    /// outage into a fleet-wide one.
    pub fn is_ready(self) -> bool {
        matches!(self, AgentState::Ready | AgentState::Retrying)
    }
}

/// Renewal attempts by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// The call extended the expiry.
    pub renewed: u64,
    /// The call succeeded but the token did not need extending yet.
    pub unchanged: u64,
    /// The token was missing or rejected.
    pub rejected: u64,
    /// Any other failure (unavailable, timeout, transport).
    pub error: u64,
}

/// Everything the daemon knows about itself, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The current state.
    pub state: AgentState,
    /// The reason of the last rejection, while [`AgentState::Unauthenticated`].
    pub reject_reason: Option<String>,
    /// The token's expiry as last reported; `None` when unknown or never.
    pub expires_at: Option<SystemTime>,
    /// True when the server reported that the token never expires.
    pub never_expires: bool,
    /// When the next attempt is due.
    pub next_attempt_at: Option<SystemTime>,
    /// When a renewal last succeeded.
    pub last_success_at: Option<SystemTime>,
    /// Attempts by result.
    pub attempts: Counters,
    /// The user the token belongs to, once looked up.
    pub user_id: Option<String>,
    /// The token's name, once looked up.
    pub(crate) token_name: Option<String>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            state: AgentState::Starting,
            reject_reason: None,
            expires_at: None,
            never_expires: false,
            next_attempt_at: None,
            last_success_at: None,
            attempts: Counters::default(),
            user_id: None,
            token_name: None,
        }
    }
}

/// A shared, watchable [`Snapshot`]. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Health(Arc<watch::Sender<Snapshot>>);

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// A fresh snapshot in [`AgentState::Starting`].
    pub(crate) fn new() -> Self {
        Health(Arc::new(watch::Sender::new(Snapshot::default())))
    }

    /// A copy of the current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.0.borrow().clone()
    }

    /// A receiver that sees every change (e.g. `wait_for(|s| s.state == Ready)`).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.0.subscribe()
    }

    /// Changes the snapshot and notifies subscribers.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.0.send_modify(change);
    }
}

fn unix_secs(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Registers a gauge holding `value`, or nothing when the value is unknown: an unknown
/// expiry is absent, not 0.
fn gauge(registry: &mut Registry, name: &str, help: &str, value: Option<i64>) {
    if let Some(value) = value {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        registry.register(name, help, gauge);
    }
}

/// The snapshot in the OpenMetrics text format (prometheus-client), with "seconds until
/// expiry" taken at `now`.
pub fn render_metrics(s: &Snapshot, now: SystemTime) -> String {
    let mut registry = Registry::default();
    let states = Family::<StateLabel, Gauge>::default();
    for state in AgentState::ALL {
        states
            .get_or_create(&StateLabel {
                state: state.as_str(),
            })
            .set(i64::from(state == s.state));
    }
    registry.register(
        "auth_agent_state",
        "1 for the agent's current state",
        states,
    );
    gauge(
        &mut registry,
        "auth_agent_token_expiry_timestamp_seconds",
        "When the token expires (Unix time); absent when unknown or never",
        s.expires_at.map(unix_secs),
    );
    gauge(
        &mut registry,
        "auth_agent_token_expiry_seconds",
        "Seconds until the token expires (negative once expired)",
        s.expires_at.map(|at| unix_secs(at) - unix_secs(now)),
    );
    gauge(
        &mut registry,
        "auth_agent_token_never_expires",
        "1 when the server reports that the token never expires",
        Some(i64::from(s.never_expires)),
    );
    let attempts = Family::<ResultLabel, Counter>::default();
    let a = s.attempts;
    for (result, n) in [
        ("renewed", a.renewed),
        ("unchanged", a.unchanged),
        ("rejected", a.rejected),
        ("error", a.error),
    ] {
        attempts.get_or_create(&ResultLabel { result }).inc_by(n);
    }
    registry.register(
        "auth_agent_renewal_attempts",
        "Renewal attempts by result",
        attempts,
    );
    gauge(
        &mut registry,
        "auth_agent_last_success_timestamp_seconds",
        "When a renewal last succeeded (Unix time)",
        s.last_success_at.map(unix_secs),
    );
    gauge(
        &mut registry,
        "auth_agent_next_attempt_timestamp_seconds",
        "When the next renewal attempt is due (Unix time)",
        s.next_attempt_at.map(unix_secs),
    );
    registry.register_collector(Box::new(auth_telemetry::process::ProcessMetrics));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn metrics_report_expiry_attempts_and_state() {
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let snapshot = Snapshot {
            state: AgentState::Ready,
            expires_at: Some(now + Duration::from_secs(3600)),
            last_success_at: Some(now),
            attempts: Counters {
                renewed: 2,
                unchanged: 1,
                rejected: 0,
                error: 3,
            },
            ..Snapshot::default()
        };
        let text = render_metrics(&snapshot, now);
        for line in [
            "auth_agent_state{state=\"ready\"} 1",
            "auth_agent_state{state=\"starting\"} 0",
            "auth_agent_token_expiry_timestamp_seconds 2000003600",
            "auth_agent_token_expiry_seconds 3600",
            "auth_agent_token_never_expires 0",
            "auth_agent_renewal_attempts_total{result=\"renewed\"} 2",
            "auth_agent_renewal_attempts_total{result=\"error\"} 3",
            "auth_agent_last_success_timestamp_seconds 2000000000",
            "# TYPE auth_agent_renewal_attempts counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn unknown_expiry_is_absent_not_zero() {
        let text = render_metrics(&Snapshot::default(), UNIX_EPOCH);
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("auth_agent_token_expiry_seconds ")),
            "{text}"
        );
    }

    #[test]
    fn outages_keep_readiness_and_rejections_drop_it() {
        assert!(AgentState::Ready.is_ready() && AgentState::Retrying.is_ready());
        assert!(!AgentState::Starting.is_ready() && !AgentState::Unauthenticated.is_ready());
    }
}
