//! Logging setup: `RUST_LOG`-style filtering from `AUTH_SERVICE_LOG`, with a default
//! that keeps dependency noise down. Logs go to stderr so stdout stays clean for
//! `token create`.
use std::{
    io::IsTerminal,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use tracing_subscriber::EnvFilter;

/// `level` is the default for our own crate (`info` for `serve`, `warn` for the
/// one-shot commands, whose output is for a person).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_env("AUTH_SERVICE_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,tokio_postgres=warn,refinery_core=warn"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log collectors would store the codes.
        .with_ansi(std::io::stderr().is_terminal())
        // Its fallback report uses `eprintln!`, which panics when stderr is gone
        // (a closed pipe): a lost log line must never take the service down.
        .log_internal_errors(false)
        .try_init();
}

/// Lets one log line through per period, and counts the ones it held back, so that a
/// condition that fails every call (an outage, an attack) is said without flooding.
pub struct Every {
    period_secs: u64,
    last: AtomicU64,
    held_back: AtomicU64,
}

impl Every {
    pub const fn new(period: Duration) -> Every {
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
    pub fn ready(&self) -> Option<u64> {
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
