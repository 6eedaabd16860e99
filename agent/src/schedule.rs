//! When to call next, as pure functions of the clock reading, the server's answer and a
//! random sample: computed deadlines rather than ticks, so that a suspend or a clock jump
//! cannot skip or stack renewals, and so that they are unit-tested without a runtime.
use std::time::{Duration, SystemTime};

use crate::client::RenewOutcome;

/// Never schedule sooner than this after a success. Guards against a server whose clock is
/// behind ours: its `next_renewal_at` may already be past for us while it still answers
/// "not yet", and without a floor the agent would call it in a tight loop.
pub(crate) const MIN_DELAY_AFTER_SUCCESS: Duration = Duration::from_secs(60);

/// How long before a token that cannot be renewed any more expires the agent looks at it
/// one last time: one more warning while it still works, close enough to act on.
pub(crate) const FINAL_NOTICE: Duration = Duration::from_secs(3600);

/// Used in place of a delay that does not fit in a `SystemTime` (which would panic).
const FALLBACK_DELAY: Duration = Duration::from_secs(365 * 86_400);

/// The knobs of the schedule. Defaults are documented on each field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Longest time between successful renewals (default 3 days). The server's
    /// `next_renewal_at` usually comes later; this bounds how stale the agent's view can
    /// get, and how long a revoked token goes unnoticed.
    pub interval: Duration,
    /// First retry delay after a failure (default 30 s); doubles on each failure.
    pub backoff_initial: Duration,
    /// Cap on the retry delay (default 1 h).
    pub backoff_max: Duration,
    /// Fraction of each delay that is randomised (default 0.2), so that a fleet restarted
    /// together does not call the server in lock step. 0 makes the schedule exact.
    pub jitter: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            interval: Duration::from_secs(3 * 86_400),
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(3600),
            jitter: 0.2,
        }
    }
}

impl Schedule {
    /// The next attempt after a successful renewal at `now`; `u` is a sample in `[0, 1)`.
    ///
    /// It is the earlier of
    /// - `now + interval`, shortened by up to `jitter` of it, and
    /// - the server's `next_renewal_at`, delayed by up to `jitter` of the renewal window
    ///   (`expires_at - next_renewal_at`, at most one interval). Jitter goes *after* that
    ///   point, because a renewal before it is a no-op, and the window is days long.
    ///
    /// A token that cannot be extended any more (`next_renewal_at` unset) is looked at
    /// [`FINAL_NOTICE`] before it expires (for one more warning while it works), and once
    /// inside that, when it expires; one that never expires only on the interval.
    ///
    /// Never sooner than [`MIN_DELAY_AFTER_SUCCESS`], and never after a known expiry that
    /// is still ahead, even when that leaves less than the minimum delay.
    pub(crate) fn after_success(
        &self,
        now: SystemTime,
        outcome: &RenewOutcome,
        u: f64,
    ) -> SystemTime {
        let jitter = self.jitter_fraction() * unit(u);
        let on_interval = later(now, scale(self.interval, 1.0 - jitter));
        let floor = later(now, MIN_DELAY_AFTER_SUCCESS);
        let from_server = match (outcome.expires_at, outcome.next_renewal_at) {
            (None, _) => None,
            (Some(expires_at), None) => Some(final_check(expires_at, floor)),
            (Some(expires_at), Some(next)) => {
                let window = expires_at
                    .duration_since(next)
                    .unwrap_or_default()
                    .min(self.interval);
                Some(later(next, scale(window, jitter)))
            }
        };
        let next = from_server
            .map_or(on_interval, |at| at.min(on_interval))
            .max(floor);
        match outcome.expires_at {
            Some(expires_at) if expires_at > now => next.min(expires_at),
            _ => next,
        }
    }

    /// The delay before retry number `failures` (1 for the first failure): `backoff_initial`
    /// doubled per failure, capped at `backoff_max`, then shortened by up to `jitter` of
    /// itself with sample `u` in `[0, 1)`.
    pub(crate) fn backoff(&self, failures: u32, u: f64) -> Duration {
        let doublings = failures.saturating_sub(1);
        let base = match 1u32.checked_shl(doublings) {
            Some(factor) => self
                .backoff_initial
                .saturating_mul(factor)
                .min(self.backoff_max),
            None => self.backoff_max,
        };
        scale(base, 1.0 - self.jitter_fraction() * unit(u))
    }

    /// The next attempt after failure number `failures` at `now`.
    pub(crate) fn after_failure(&self, now: SystemTime, failures: u32, u: f64) -> SystemTime {
        later(now, self.backoff(failures, u))
    }

    /// `jitter` in `[0, 1]`; 0 when it is not a number.
    fn jitter_fraction(&self) -> f64 {
        if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// `delay` times `fraction` (in `[0, 1]`). Unlike `Duration::mul_f64`, which panics when
/// the f64 product rounds past `Duration::MAX`, this keeps `delay` then.
fn scale(delay: Duration, fraction: f64) -> Duration {
    Duration::try_from_secs_f64(delay.as_secs_f64() * fraction)
        .map_or(delay, |scaled| scaled.min(delay))
}

/// A sample in `[0, 1]`; the midpoint when it is not a number.
fn unit(u: f64) -> f64 {
    if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// `at + delay`, without the panic of `+` when the sum does not fit in a `SystemTime`
/// (the flags are bounded, but the server's timestamps are not): then a year later.
pub(crate) fn later(at: SystemTime, delay: Duration) -> SystemTime {
    at.checked_add(delay)
        .or_else(|| at.checked_add(FALLBACK_DELAY))
        .unwrap_or(at)
}

/// The last look at a token that cannot be renewed any more: [`FINAL_NOTICE`] before it
/// expires while that is still after `floor`, else when it expires.
fn final_check(expires_at: SystemTime, floor: SystemTime) -> SystemTime {
    expires_at
        .checked_sub(FINAL_NOTICE)
        .filter(|at| *at >= floor)
        .unwrap_or(expires_at)
}

/// A uniform sample in `[0, 1)` from the OS random source. Jitter only needs to differ
/// between machines, so if the source fails the midpoint is good enough.
pub(crate) fn random_unit() -> f64 {
    match getrandom::u64() {
        // 53 random bits: exactly representable in an f64 mantissa.
        Ok(bits) => (bits >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000)
    }

    fn exact() -> Schedule {
        Schedule {
            jitter: 0.0,
            ..Schedule::default()
        }
    }

    fn outcome(expires_in: Option<Duration>, next_in: Option<Duration>) -> RenewOutcome {
        RenewOutcome {
            expires_at: expires_in.map(|d| t0() + d),
            renewed: true,
            next_renewal_at: next_in.map(|d| t0() + d),
        }
    }

    #[test]
    fn takes_the_servers_next_renewal_when_it_is_sooner() {
        let next = exact().after_success(t0(), &outcome(Some(2 * DAY), Some(DAY)), 0.0);
        assert_eq!(next, t0() + DAY);
    }

    #[test]
    fn takes_the_interval_when_it_is_sooner() {
        let next = exact().after_success(t0(), &outcome(Some(90 * DAY), Some(83 * DAY)), 0.0);
        assert_eq!(next, t0() + 3 * DAY);
    }

    #[test]
    fn jitter_stays_inside_its_bounds() {
        let schedule = Schedule::default();
        for u in [0.0, 0.25, 0.5, 0.999] {
            let on_interval =
                schedule.after_success(t0(), &outcome(Some(90 * DAY), Some(83 * DAY)), u);
            assert!(
                on_interval <= t0() + 3 * DAY && on_interval >= t0() + 3 * DAY - 3 * DAY / 5,
                "u={u}"
            );
            // After next_renewal_at (a renewal before it would be a no-op), well before expiry.
            let on_server = schedule.after_success(t0(), &outcome(Some(8 * DAY), Some(DAY)), u);
            assert!(
                on_server >= t0() + DAY && on_server <= t0() + DAY + 3 * DAY / 5,
                "u={u}"
            );
        }
        let a = schedule.after_success(t0(), &outcome(Some(90 * DAY), Some(83 * DAY)), 0.1);
        let b = schedule.after_success(t0(), &outcome(Some(90 * DAY), Some(83 * DAY)), 0.9);
        assert_ne!(a, b, "different samples must spread a fleet");
    }

    #[test]
    fn a_token_that_never_expires_is_checked_on_the_interval() {
        assert_eq!(
            exact().after_success(t0(), &outcome(None, None), 0.0),
            t0() + 3 * DAY
        );
    }

    #[test]
    fn a_token_at_its_maximum_lifetime_gets_a_final_check_before_it_expires() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            exact().after_success(t0(), &outcome(Some(DAY), None), 0.0),
            t0() + DAY - hour
        );
        // Past the final check: at expiry, when the server's answer tells the operator.
        assert_eq!(
            exact().after_success(t0(), &outcome(Some(hour), None), 0.0),
            t0() + hour
        );
        // Longer-lived ones are still looked at every interval until then.
        assert_eq!(
            exact().after_success(t0(), &outcome(Some(30 * DAY), None), 0.0),
            t0() + 3 * DAY
        );
    }

    #[test]
    fn the_minimum_delay_never_pushes_the_next_attempt_past_expiry() {
        let left = Duration::from_secs(20);
        // A server clock behind ours says "not yet" though under a minute is left.
        let skewed = RenewOutcome {
            expires_at: Some(t0() + left),
            renewed: false,
            next_renewal_at: Some(t0() - DAY),
        };
        assert_eq!(exact().after_success(t0(), &skewed, 0.0), t0() + left);
        assert_eq!(
            exact().after_success(t0(), &outcome(Some(left), None), 0.0),
            t0() + left
        );
        // An expiry already past (for our clock) does not make a tight loop.
        let expired = RenewOutcome {
            expires_at: Some(t0() - left),
            renewed: false,
            next_renewal_at: None,
        };
        assert_eq!(
            exact().after_success(t0(), &expired, 0.0),
            t0() + MIN_DELAY_AFTER_SUCCESS
        );
    }

    #[test]
    fn huge_durations_and_timestamps_do_not_panic() {
        let huge = Schedule {
            interval: Duration::MAX,
            backoff_initial: Duration::MAX,
            backoff_max: Duration::MAX,
            jitter: f64::NAN,
        };
        let next = huge.after_success(t0(), &outcome(None, None), f64::NAN);
        assert!(next > t0());
        assert!(huge.after_failure(t0(), 3, 0.5) > t0());
        assert_eq!(later(t0(), Duration::MAX), t0() + FALLBACK_DELAY);
    }

    #[test]
    fn a_next_renewal_in_the_past_does_not_cause_a_tight_loop() {
        let skewed = RenewOutcome {
            expires_at: Some(t0() + DAY),
            renewed: false,
            next_renewal_at: Some(t0() - DAY),
        };
        assert_eq!(
            exact().after_success(t0(), &skewed, 0.0),
            t0() + MIN_DELAY_AFTER_SUCCESS
        );
    }

    #[test]
    fn backoff_doubles_from_30s_to_an_hour_cap() {
        let secs: Vec<u64> = (1..=10)
            .map(|n| exact().backoff(n, 0.0).as_secs())
            .collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(exact().backoff(u32::MAX, 0.0), Duration::from_secs(3600));
        assert_eq!(
            exact().after_failure(t0(), 2, 0.0),
            t0() + Duration::from_secs(60)
        );
    }

    #[test]
    fn backoff_jitter_only_shortens() {
        let schedule = Schedule::default();
        for u in [0.0, 0.5, 0.999] {
            let d = schedule.backoff(3, u);
            assert!(
                d <= Duration::from_secs(120) && d >= Duration::from_secs(96),
                "u={u}: {d:?}"
            );
        }
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
