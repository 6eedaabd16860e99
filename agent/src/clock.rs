//! The wall clock the schedule is kept in, injectable so that tests can simulate days and
//! a suspended laptop. The bounded sleep that notices when wall time jumps is the
//! daemon's `wait_until` (it also re-reads the token source while the token is rejected).
//!
//! Deadlines are wall-clock (`SystemTime`) because on Linux the monotonic clock behind
//! tokio's timers stops while the machine is suspended: a laptop that sleeps through its
//! renewal time would otherwise renew days late. So the daemon never sleeps for more than
//! a short step (a minute by default) before looking at the wall clock again.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that follows tokio's clock (so it advances with paused test time) from a
/// chosen start, plus jumps made with [`OffsetClock::jump`]. A jump moves wall time but
/// not tokio time, which is exactly what a suspend and resume looks like. For tests and
/// simulations; create it inside the runtime whose time it should follow.
#[derive(Debug)]
pub struct OffsetClock {
    start_wall: SystemTime,
    start: tokio::time::Instant,
    jumped_nanos: AtomicU64,
}

impl OffsetClock {
    /// A clock that reads `start_wall` now.
    pub fn new(start_wall: SystemTime) -> Self {
        OffsetClock {
            start_wall,
            start: tokio::time::Instant::now(),
            jumped_nanos: AtomicU64::new(0),
        }
    }

    /// Moves wall time forward by `by` without moving tokio time (a suspend).
    pub fn jump(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.jumped_nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now(&self) -> SystemTime {
        let jumped = Duration::from_nanos(self.jumped_nanos.load(Ordering::SeqCst));
        self.start_wall + self.start.elapsed() + jumped
    }
}

/// Time left until `deadline`, or `None` when it has passed.
pub(crate) fn remaining(now: SystemTime, deadline: SystemTime) -> Option<Duration> {
    deadline
        .duration_since(now)
        .ok()
        .filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test(start_paused = true)]
    async fn offset_clock_follows_paused_time_and_jumps() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let clock = OffsetClock::new(start);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), start + Duration::from_secs(90));
        clock.jump(DAY);
        assert_eq!(clock.now(), start + Duration::from_secs(90) + DAY);
    }

    #[test]
    fn remaining_is_none_at_and_after_the_deadline() {
        let now = SystemTime::UNIX_EPOCH + DAY;
        assert_eq!(remaining(now, now), None);
        assert_eq!(remaining(now, now - DAY), None);
        assert_eq!(remaining(now, now + DAY), Some(DAY));
    }
}
