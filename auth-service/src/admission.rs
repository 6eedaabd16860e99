//! Admission: work this server refuses at once rather than lets pile up.
//!
//! - [`FailureThrottle`]: a peer address that keeps presenting bad credentials to the
//!   self-service calls is refused (RESOURCE_EXHAUSTED, with the wait) for a while. A
//!   keyed GCRA limiter (governor) counts failures, not calls: a well-behaved client is
//!   never slowed. `ValidateToken` is never throttled: its callers relay other people's
//!   tokens. Behind a proxy every caller has the proxy's address, and shares its budget.
//! - [`DbAdmission`]: a hot row cannot starve everyone. Renewals and revocations of one
//!   token wait on its row lock in the database, each holding a pooled connection, so
//!   at most `per_token` of them run at once per process, and at most `max_waiting`
//!   calls wait for a pooled connection. Excess calls get UNAVAILABLE with a retry
//!   delay at once, instead of queueing to the database timeout.
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
};

use crate::{
    cache::Key,
    error::{Error, Result},
};

/// The retry delay of shed database work.
pub(crate) const SHED_RETRY: Duration = Duration::from_secs(1);
/// Most peers tracked at once by the throttle; beyond it, new peers are not counted
/// until the periodic clean-up has dropped the quiet ones.
const MAX_TRACKED_PEERS: usize = 100_000;

/// The failed-credential throttle of the self-service calls.
pub(crate) struct FailureThrottle {
    /// `None`: turned off (`--auth-failure-limit 0`).
    limiter: Option<RateLimiter<IpAddr, HashMapStateStore<IpAddr>, DefaultClock>>,
    blocked: moka::sync::Cache<IpAddr, Instant>,
    clock: DefaultClock,
    /// Most peers counted at once ([`MAX_TRACKED_PEERS`]).
    max_peers: usize,
}

impl FailureThrottle {
    /// At most `per_minute` failures a minute per peer (as a burst, refilling evenly).
    pub(crate) fn new(per_minute: u32) -> FailureThrottle {
        FailureThrottle::tracking(per_minute, MAX_TRACKED_PEERS)
    }

    /// [`FailureThrottle::new`], counting at most `max_peers` peers at once.
    fn tracking(per_minute: u32, max_peers: usize) -> FailureThrottle {
        FailureThrottle {
            limiter: NonZeroU32::new(per_minute)
                .map(|n| RateLimiter::hashmap(Quota::per_minute(n))),
            blocked: moka::sync::Cache::builder()
                .max_capacity(max_peers as u64)
                .time_to_live(Duration::from_secs(60))
                .build(),
            clock: DefaultClock::default(),
            max_peers,
        }
    }

    /// Refuses a peer that is over its budget of failures.
    pub(crate) fn check(&self, peer: Option<IpAddr>) -> Result<()> {
        let Some(peer) = peer else { return Ok(()) };
        if let Some(until) = self.blocked.get(&peer) {
            let now = Instant::now();
            if until > now {
                return Err(Error::TooManyFailures {
                    peer,
                    retry_after: until - now,
                });
            }
            self.blocked.invalidate(&peer);
        }
        Ok(())
    }

    /// Counts a credential failure from `peer`; the one over budget blocks it.
    pub(crate) fn failed(&self, peer: Option<IpAddr>) {
        let (Some(limiter), Some(peer)) = (&self.limiter, peer) else {
            return;
        };
        if limiter.len() >= self.max_peers {
            limiter.retain_recent();
            if limiter.len() >= self.max_peers {
                return;
            }
        }
        if let Err(not_until) = limiter.check_key(&peer) {
            let wait = not_until.wait_time_from(self.clock.now());
            tracing::warn!(%peer, retry_after = ?wait, "too many credential failures: refusing this peer's self-service calls for a while");
            self.blocked.insert(peer, Instant::now() + wait);
        }
    }

    /// Forgets peers whose budget is full again (bounds memory; called periodically).
    pub(crate) fn clean_up(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Bounds on database work: per token, and on the pool's queue.
pub(crate) struct DbAdmission {
    per_token: usize,
    max_waiting: usize,
    in_flight: Arc<Mutex<HashMap<Key, usize>>>,
}

/// A call's place among its token's in-flight database work; released on drop.
pub(crate) struct Admitted {
    key: Key,
    in_flight: Arc<Mutex<HashMap<Key, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_flight.lock()
            && let Some(n) = map.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl DbAdmission {
    pub(crate) fn new(per_token: usize, max_waiting: usize) -> DbAdmission {
        DbAdmission {
            per_token: per_token.max(1),
            max_waiting,
            in_flight: Arc::default(),
        }
    }

    /// Admits one database operation on the token `key`, or sheds it: more than
    /// `per_token` in flight for this token, or `max_waiting` calls already queued for a
    /// pooled connection (`waiting`, from the pool's status).
    pub(crate) fn admit(&self, key: Key, waiting: usize) -> Result<Admitted> {
        if waiting >= self.max_waiting {
            return Err(Error::Overloaded {
                what: format!("{waiting} calls are already waiting for a database connection"),
                retry_after: SHED_RETRY,
                shed: crate::error::Shed::Queue,
            });
        }
        let mut map = self
            .in_flight
            .lock()
            .map_err(|_| Error::Internal("admission lock poisoned".into()))?;
        let n = map.entry(key).or_insert(0);
        if *n >= self.per_token {
            return Err(Error::Overloaded {
                what: "this token already has as many renewals and revocations in flight as \
                       one server runs at once"
                    .into(),
                retry_after: SHED_RETRY,
                shed: crate::error::Shed::Token,
            });
        }
        *n += 1;
        Ok(Admitted {
            key,
            in_flight: self.in_flight.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use auth_api::ErrorReason;
    use tonic::Code;

    use super::*;

    #[test]
    fn a_flood_of_peers_cannot_grow_the_throttle_past_its_bound() {
        let throttle = FailureThrottle::tracking(60, 100);
        for i in 0..10_000u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.failed(Some(peer));
        }
        let limiter = throttle.limiter.as_ref().unwrap();
        // Each peer failed once, inside its budget (a clean-up forgets a peer only
        // once its budget is full again): only the bound keeps the map small.
        assert!(limiter.len() <= 100, "{} peers tracked", limiter.len());
        throttle.blocked.run_pending_tasks();
        assert!(throttle.blocked.entry_count() <= 100);
    }

    #[test]
    fn the_throttle_counts_failures_per_peer_and_refuses_with_the_wait() {
        let throttle = FailureThrottle::new(3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            throttle.check(Some(a)).unwrap();
            throttle.failed(Some(a));
        }
        throttle.check(Some(a)).unwrap();
        throttle.failed(Some(a));
        let refused = tonic::Status::from(throttle.check(Some(a)).unwrap_err());
        assert_eq!(refused.code(), Code::ResourceExhausted);
        use tonic_types::StatusExt;
        let details = refused.get_error_details();
        assert!(details.retry_info().unwrap().retry_delay.unwrap() <= Duration::from_secs(20));
        assert_eq!(
            details.error_info().unwrap().reason,
            ErrorReason::RateLimitExceeded.as_str_name()
        );
        // Another peer, and an unknown peer, are not affected.
        throttle.check(Some(b)).unwrap();
        throttle.check(None).unwrap();
        // Off: nothing is ever refused.
        let off = FailureThrottle::new(0);
        for _ in 0..100 {
            off.failed(Some(a));
        }
        off.check(Some(a)).unwrap();
    }

    #[test]
    fn one_tokens_work_and_the_pool_queue_are_bounded() {
        let admission = DbAdmission::new(2, 10);
        let first = admission.admit([1; 32], 0).unwrap();
        let _second = admission.admit([1; 32], 0).unwrap();
        let shed = tonic::Status::from(admission.admit([1; 32], 0).err().unwrap());
        assert_eq!(shed.code(), Code::Unavailable);
        use tonic_types::StatusExt;
        assert_eq!(
            shed.get_error_details().retry_info().unwrap().retry_delay,
            Some(SHED_RETRY)
        );
        // Another token is admitted; a finished call makes room.
        let _other = admission.admit([2; 32], 0).unwrap();
        drop(first);
        admission.admit([1; 32], 0).unwrap();
        assert!(
            admission.admit([3; 32], 10).is_err(),
            "the pool queue is full"
        );
    }
}
