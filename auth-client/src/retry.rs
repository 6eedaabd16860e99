//! When a call is tried again: the policy, its schedule (pure functions), and the loop
//! that runs a call under a deadline.
//!
//! - **A call that never left this client** is retried at once, whatever the policy:
//!   tonic's channel cancels the requests it had queued for a connection that closed
//!   after a GOAWAY (`hyper::Error(Canceled, "connection closed")`), and a server may
//!   refuse a stream before reading it (`REFUSED_STREAM`), or say in its GOAWAY that it
//!   never started it. Nothing was done, so nothing can be done twice. grpc-go, grpc-java and Envoy do the same ("transparent retry").
//! - **`UNAVAILABLE`** is retried with capped, jittered exponential backoff, or after the
//!   delay of the server's `google.rpc.RetryInfo` when it sent one, as long as the next
//!   attempt can start before the deadline. Every other code is final.
//! - **The deadline** covers every attempt and every wait; each attempt tells the
//!   server what is left of it (`grpc-timeout`).
use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How calls are retried. The schedule of `UNAVAILABLE` retries is
/// `initial_backoff × 2ⁿ`, capped at `max_backoff`, each shortened by up to `jitter`
/// (a fraction) at random so that callers that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retry `UNAVAILABLE` (else only calls that were never sent).
    pub retry_unavailable: bool,
    /// The first wait.
    pub initial_backoff: Duration,
    /// The longest wait (a server's `RetryInfo` may ask for longer).
    pub max_backoff: Duration,
    /// Up to this fraction of each wait is taken off at random.
    pub jitter: f64,
    /// How many times in a row a call that was never sent is sent again.
    pub max_transparent: u32,
}

impl Default for RetryPolicy {
    /// `UNAVAILABLE` retried from 25 ms, doubling to 1 s, with 20 % jitter.
    fn default() -> Self {
        RetryPolicy {
            retry_unavailable: true,
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            jitter: 0.2,
            max_transparent: 3,
        }
    }
}

impl RetryPolicy {
    /// Only calls that never left the client are sent again: for a caller with a
    /// schedule of its own (auth-agent retries over hours, wall-clock aware), where a
    /// second layer of retries would only hide failures from it.
    pub fn transparent_only() -> Self {
        RetryPolicy {
            retry_unavailable: false,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (0 for the first), given `unit`, a random
    /// number in [0, 1].
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.max_backoff);
        base.mul_f64(1.0 - self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0))
    }
}

/// A random number in [0, 1] for the jitter (0.5 if the OS has no randomness to give).
pub(crate) fn unit() -> f64 {
    let mut bytes = [0u8; 4];
    match getrandom::fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

/// Whether `status` is a call that never left this client: hyper cancelled it in the
/// channel's queue, or the server refused the stream before processing it.
pub fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || error.downcast_ref::<h2::Error>().is_some_and(unprocessed)
        {
            return true;
        }
        source = error.source();
    }
    false
}

/// An HTTP/2 stream the server says it did not process: refused (`REFUSED_STREAM`), or
/// above the last stream id of a graceful GOAWAY (`NO_ERROR`), which the server promises
/// it never started (RFC 9113 §6.8).
fn unprocessed(error: &h2::Error) -> bool {
    error.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (error.is_go_away() && error.is_remote() && error.reason() == Some(h2::Reason::NO_ERROR))
}

/// The answer of `call`, tried under `policy` until it succeeds, fails for good, or
/// `deadline` (from now) is reached. `call` is given what is left of the deadline.
///
/// A deadline that passes is `DEADLINE_EXCEEDED` ("no answer within ..."), however it
/// surfaced: tonic's own enforcement of `grpc-timeout` reads `CANCELLED: Timeout
/// expired`, as if someone had cancelled the call.
pub async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    deadline: Duration,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let expired = || Status::deadline_exceeded(format!("no answer within {deadline:?}"));
    let (mut retries, mut transparent) = (0u32, 0u32);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(expired());
        }
        let status = match tokio::time::timeout(left, call(left)).await {
            Err(_) => return Err(expired()),
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(status)) => status,
        };
        if status.code() == Code::Cancelled && started.elapsed() >= deadline {
            return Err(expired());
        }
        if never_sent(&status) && transparent < policy.max_transparent {
            transparent += 1;
            tracing::debug!("retrying a call that was never sent: {}", status.message());
            continue;
        }
        if !(policy.retry_unavailable && status.code() == Code::Unavailable) {
            return Err(status);
        }
        let wait = status
            .get_error_details()
            .retry_info()
            .and_then(|info| info.retry_delay)
            .unwrap_or_else(|| policy.backoff(retries, unit()));
        if started.elapsed() + wait >= deadline {
            return Err(status);
        }
        tracing::debug!(wait = ?wait, "auth service unavailable, retrying: {}", status.message());
        tokio::time::sleep(wait).await;
        retries += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_jitter_only_shortens() {
        let p = RetryPolicy::default();
        let exact: Vec<_> = (0..8).map(|n| p.backoff(n, 0.0).as_millis()).collect();
        assert_eq!(exact, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(160));
        assert_eq!(p.backoff(u32::MAX, 0.0), p.max_backoff);
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_is_retried_within_the_deadline_then_returned() {
        let calls = Arc::new(AtomicU32::new(0));
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let started = Instant::now();
        let c = calls.clone();
        let result: Result<(), _> = run(&policy, Duration::from_millis(500), move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err(Status::unavailable("down")) }
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        // 0, 25, 75, 175, 375: the next wait (400 ms) would end past the deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(started.elapsed(), Duration::from_millis(375));
    }

    #[tokio::test(start_paused = true)]
    async fn the_server_s_retry_info_sets_the_wait() {
        let calls = Arc::new(AtomicU32::new(0));
        let started = Instant::now();
        let c = calls.clone();
        let answer = run(&RetryPolicy::default(), Duration::from_secs(5), move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
                    Err(Status::with_error_details(
                        Code::Unavailable,
                        "shed",
                        details,
                    ))
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(answer.unwrap(), 7);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        // A delay past the deadline is not waited for.
        let late = run(
            &RetryPolicy::default(),
            Duration::from_millis(500),
            |_| async {
                let details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
                Err::<(), _>(Status::with_error_details(
                    Code::Unavailable,
                    "shed",
                    details,
                ))
            },
        )
        .await;
        assert_eq!(late.unwrap_err().code(), Code::Unavailable);
    }

    #[tokio::test(start_paused = true)]
    async fn other_codes_and_transparent_only_are_not_retried() {
        for (policy, status) in [
            (RetryPolicy::default(), Status::unauthenticated("no")),
            (RetryPolicy::default(), Status::internal("bug")),
            (RetryPolicy::transparent_only(), Status::unavailable("down")),
        ] {
            let calls = Arc::new(AtomicU32::new(0));
            let c = calls.clone();
            let s = status.clone();
            let result: Result<(), _> = run(&policy, Duration::from_secs(5), move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                async move { Err(s) }
            })
            .await;
            assert_eq!(result.unwrap_err().code(), status.code());
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{status:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_call_is_deadline_exceeded() {
        let result: Result<(), _> = run(
            &RetryPolicy::default(),
            Duration::from_secs(2),
            |left| async move {
                tokio::time::sleep(left * 2).await;
                Ok(())
            },
        )
        .await;
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.message(), "no answer within 2s");
    }
}
