//! Keep-alive against the real service: after the preflight, the agent schedules its next
//! call at the server's `next_renewal_at` and, when that comes, renews again by itself.
//!
//! Real time cannot be used: the agent waits at least a minute after a success (see
//! `schedule::MIN_DELAY_AFTER_SUCCESS`), and a window that short would race the clock. So
//! the hour in between is made to pass on both sides instead: on the agent's
//! [`OffsetClock`] (a jump, as after a suspend) and in the database (the token's expiry
//! is moved back into the renewal window). The agent notices within one check period.
use std::{sync::Arc, time::Duration, time::SystemTime};

use auth_agent::{Clock, OffsetClock};
use auth_service::renewal::RenewalPolicy;

use crate::{
    e2e::harness::{HOUR, Service, assert_no_token, gap, login, options, spawn_agent},
    support::{TempDir, capture_logs},
};

#[tokio::test]
async fn the_agent_renews_again_on_its_own_at_the_servers_next_renewal_time() {
    let (logs, _guard) = capture_logs();
    // Renew when less than an hour is left, by two hours.
    let policy = RenewalPolicy {
        threshold: HOUR,
        extension: 2 * HOUR,
        max_lifetime: None,
    };
    let service = Service::start(policy).await;
    let (id, raw) = service.token_expiring_in(1800.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    login(&service, &config, &raw).await;

    let clock = Arc::new(OffsetClock::new(SystemTime::now()));
    let mut opts = options(&service, &config);
    // Exact deadlines, so that the next one can be compared with the server's answer.
    opts.schedule.jitter = 0.0;
    let agent = spawn_agent(opts, clock.clone());
    let first = agent
        .wait_for("renewed at startup", |s| {
            s.attempts.renewed == 1 && s.next_attempt_at.is_some()
        })
        .await;
    let (stored, db_now) = service.expiry(&id).await;
    assert!(
        gap(stored, db_now + 2 * HOUR) < Duration::from_secs(60),
        "{stored:?} vs {db_now:?}"
    );
    let next = first.next_attempt_at.unwrap();
    assert_eq!(
        next,
        stored - HOUR,
        "the next attempt is the server's next_renewal_at (expiry - threshold)"
    );
    assert_eq!(service.event_kinds(&id).await, ["create", "renew"]);

    // An hour and a half passes: the token is 30 minutes from expiry again, and the
    // agent's clock is past its deadline.
    service.set_expires_in(&id, 1800.0).await;
    clock.jump(next.duration_since(clock.now()).unwrap() + Duration::from_secs(1));
    let second = agent
        .wait_for("renewed again", |s| {
            s.attempts.renewed == 2 && s.next_attempt_at.is_some_and(|at| at > next)
        })
        .await;
    let (stored, db_now) = service.expiry(&id).await;
    assert!(
        gap(stored, db_now + 2 * HOUR) < Duration::from_secs(60),
        "{stored:?} vs {db_now:?}"
    );
    assert_eq!(second.expires_at, Some(stored));
    assert_eq!(
        (
            second.attempts.unchanged,
            second.attempts.rejected,
            second.attempts.error
        ),
        (0, 0, 0),
        "exactly one call when it was due, and it renewed"
    );
    assert_eq!(service.event_kinds(&id).await, ["create", "renew", "renew"]);
    assert!(
        second.next_attempt_at.unwrap() > clock.now(),
        "and it waits again"
    );
    agent.stop().await;
    service.shutdown().await;

    assert_eq!(
        logs.matching("token renewed: it now expires at").len(),
        2,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.matching("authenticated as alice").len(),
        1,
        "the same token is looked up once:\n{}",
        logs.text()
    );
    assert_no_token("the logs", &logs.text(), &[&raw]);
}
