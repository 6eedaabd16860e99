//! Logging setup: an `EnvFilter` from `AUTH_SERVICE_LOG`, else `RUST_LOG`, else a default
//! that keeps dependency noise down; text or flat JSON lines (`--log-format`, see
//! `auth_telemetry`). Logs go to stderr so stdout stays clean for `token create`.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

pub(crate) use auth_telemetry::LogFormat;

/// The service's own log filter variable, read before `RUST_LOG`.
pub(crate) const LOG_ENV: &str = "AUTH_SERVICE_LOG";

/// `level` is the default for our own crate (`info` for `serve`, `warn` for the
/// one-shot commands, whose output is for a person). With `traces`, this crate's spans
/// are exported too.
pub fn init(level: &str, format: LogFormat, traces: Option<&auth_telemetry::otel::Traces>) {
    let filter = auth_telemetry::filter(
        &[LOG_ENV, "RUST_LOG"],
        &format!("{level},h2=warn,hyper=warn,tower=warn,tokio_postgres=warn,refinery_core=warn"),
    );
    auth_telemetry::init(format, filter, traces.map(|t| (t, &["auth_service"][..])));
}

/// A line for the person running a command, on stderr, in the log format.
pub(crate) fn say(line: &str) {
    auth_telemetry::say(tracing::Level::INFO, "auth_service", line);
}

/// The last line of a command that failed, in the log format.
pub fn failed(error: &dyn std::fmt::Display) {
    auth_telemetry::failed("auth-service", "auth_service", error);
}

/// Lets one log line through per period, and counts the ones it held back, so that a
/// condition that fails every call (an outage, an attack) is said without flooding.
pub(crate) struct Every {
    period_secs: u64,
    last: AtomicU64,
    held_back: AtomicU64,
}

impl Every {
    pub(crate) const fn new(period: Duration) -> Every {
        Every {
            period_secs: if period.as_secs() == 0 {
                1
            } else {
                period.as_secs()
            },
            last: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held back since the last line)` when a line may be logged now.
    pub(crate) fn ready(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            / self.period_secs;
        let last = self.last.load(Ordering::Relaxed);
        if now != last
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period() {
        let every = Every::new(Duration::from_secs(1));
        assert_eq!(every.ready(), Some(0));
        let passed = (0..1000).filter(|_| every.ready().is_some()).count();
        // At most one more line, should the second have turned during the loop.
        assert!(passed <= 1, "{passed}");
    }
}
