//! The schedule, in paused tokio time over an in-memory transport, with an injected wall
//! clock: backoff, next_renewal_at, suspend catch-up, recovery, never-expiring tokens.
//! Days pass in milliseconds and every call lands at an exact, assertable instant.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use auth_agent::{
    AgentState, OffsetClock, RunOptions, Schedule, Token, TokenSource,
    config::{self, ConfigFile},
};
use auth_test_support::agent::{self, RunningAgent};
use tonic::Status;

use crate::{
    fake::{Call, DAY, Fake, Rpc, fail, identity, never_expires, renewed},
    support::{Logs, TempDir, capture_logs, token},
};

const MINUTE: Duration = Duration::from_secs(60);

struct Harness {
    fake: Fake,
    clock: Arc<OffsetClock>,
    agent: RunningAgent,
    logs: Logs,
    _guard: tracing::subscriber::DefaultGuard,
}

/// An exact schedule (no jitter) with the given interval and backoff.
fn schedule(interval: Duration, backoff_initial: Duration, backoff_max: Duration) -> Schedule {
    Schedule {
        interval,
        backoff_initial,
        backoff_max,
        jitter: 0.0,
    }
}

fn start_wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

/// Starts the daemon against a fake that `script` prepares. Call inside a paused runtime.
fn start(source: TokenSource, schedule: Schedule, script: impl FnOnce(&Fake)) -> Harness {
    let (logs, guard) = capture_logs();
    let clock = Arc::new(OffsetClock::new(start_wall()));
    let fake = Fake::with_clock(clock.clone());
    script(&fake);
    let mut opts = RunOptions::new("http://fake.in-memory".parse().unwrap(), source);
    opts.channel = Some(fake.serve_in_memory());
    opts.schedule = schedule;
    let agent = agent::spawn(opts, clock.clone());
    Harness {
        fake,
        clock,
        agent,
        logs,
        _guard: guard,
    }
}

impl Harness {
    async fn stop(self) -> Logs {
        self.agent.stop().await;
        self.logs
    }

    /// The renewal calls, once at least `n` renewal attempts have finished (and been
    /// logged: the daemon counts an attempt after logging it).
    async fn renews(&self, n: usize) -> Vec<Call> {
        let mut health = self.agent.health.subscribe();
        health
            .wait_for(|s| {
                let a = s.attempts;
                a.renewed + a.unchanged + a.rejected + a.error >= n as u64
            })
            .await
            .unwrap();
        self.fake
            .calls()
            .into_iter()
            .filter(|c| c.rpc == Rpc::Renew)
            .collect()
    }

    async fn wait_state(&self, state: AgentState) {
        self.agent
            .health
            .subscribe()
            .wait_for(|s| s.state == state)
            .await
            .unwrap();
    }
}

fn env(tag: &str) -> TokenSource {
    TokenSource::Env(Some(Token::parse(&token(tag)).unwrap()))
}

/// Gaps between consecutive calls, in whole seconds of tokio (monotonic) time.
fn gaps(calls: &[Call]) -> Vec<u64> {
    calls
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64().round() as u64)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_up_to_the_cap() {
    let h = start(
        env("backoff"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(240)),
        |fake| {
            fake.renew_always(fail(Status::unavailable("database down")));
        },
    );
    let renews = h.renews(7).await;
    let logs = h.stop().await;

    assert_eq!(gaps(&renews[..7]), [30, 60, 120, 240, 240, 240]);
    assert!(
        logs.matching("auth-agent login").is_empty(),
        "{}",
        logs.text()
    );
    assert_eq!(logs.matching("renewal failed").len(), 7);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_warns_on_every_attempt_and_only_renews() {
    let dir = TempDir::new();
    let path = dir.join("config");
    let stale = ConfigFile {
        server: None,
        token: Some(Token::parse(&token("expired")).unwrap()),
        ..Default::default()
    };
    config::store(&path, &stale).await.unwrap();
    let source = TokenSource::Config {
        path,
        explicit: false,
    };
    let h = start(
        source,
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.accept_only(&[], "TOKEN_EXPIRED");
        },
    );
    let renews = h.renews(3).await;
    let rpcs = h.fake.rpcs();
    let logs = h.stop().await;

    assert!(rpcs.iter().all(|r| *r == Rpc::Renew), "{rpcs:?}");
    assert_eq!(gaps(&renews[..3]), [30, 60]);
    let warnings =
        logs.matching("token rejected (TOKEN_EXPIRED): run `auth-agent login` to re-authenticate");
    assert!(warnings.len() >= 3, "{}", logs.text());
    assert!(warnings.iter().all(|w| w.trim_start().starts_with("WARN")));
}

#[tokio::test(start_paused = true)]
async fn recovers_without_restart_when_the_token_file_changes() {
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, token("old")).unwrap();
    let new = token("rotated");
    // Backoff far longer than the check period: recovery must come from re-reading the file.
    let h = start(
        TokenSource::File(file.clone()),
        schedule(
            3 * DAY,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ),
        |fake| {
            fake.accept_only(&[&token("rotated")], "TOKEN_REVOKED");
        },
    );
    h.wait_state(AgentState::Unauthenticated).await;
    let rotated_at = tokio::time::Instant::now();
    std::fs::write(&file, format!("{new}\n")).unwrap();
    h.wait_state(AgentState::Ready).await;
    let took = rotated_at.elapsed();
    h.fake.wait_for_calls(3).await;
    let calls = h.fake.calls();
    let logs = h.stop().await;

    assert!(
        took <= MINUTE + Duration::from_secs(1),
        "recovered after {took:?}, not after the 1 h backoff"
    );
    let seen: Vec<(Rpc, bool)> = calls
        .iter()
        .map(|c| (c.rpc, c.token.as_deref() == Some(new.as_str())))
        .collect();
    assert_eq!(
        seen,
        [(Rpc::Renew, false), (Rpc::Renew, true), (Rpc::Lookup, true)]
    );
    assert_eq!(
        logs.matching("token accepted again: recovered from TOKEN_REVOKED")
            .len(),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.matching("authenticated as alice").len(),
        1,
        "{}",
        logs.text()
    );
}

#[tokio::test(start_paused = true)]
async fn recovers_without_restart_after_login_rewrites_the_config() {
    let dir = TempDir::new();
    let path = dir.join("config");
    let source = TokenSource::Config {
        path: path.clone(),
        explicit: false,
    };
    // No config at all yet: the agent waits for `auth-agent login`.
    let h = start(
        source,
        schedule(
            3 * DAY,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ),
        |_| {},
    );
    h.wait_state(AgentState::Unauthenticated).await;
    let fresh = ConfigFile {
        server: None,
        token: Some(Token::parse(&token("login")).unwrap()),
        ..Default::default()
    };
    config::store(&path, &fresh).await.unwrap();
    h.wait_state(AgentState::Ready).await;
    h.fake.wait_for_calls(2).await;
    let rpcs = h.fake.rpcs();
    let logs = h.stop().await;

    assert_eq!(rpcs, [Rpc::Renew, Rpc::Lookup]);
    assert_eq!(
        logs.matching("no usable token (MISSING_CREDENTIALS: no config file at")
            .len(),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.matching("recovered from MISSING_CREDENTIALS").len(),
        1,
        "{}",
        logs.text()
    );
}

#[tokio::test(start_paused = true)]
async fn the_schedule_follows_next_renewal_at_when_it_is_sooner() {
    let h = start(
        env("next"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.renew_always(renewed(8 * DAY, Some(DAY)));
        },
    );
    let renews = h.renews(3).await;
    h.stop().await;

    let walls: Vec<Duration> = renews
        .iter()
        .map(|c| c.wall.duration_since(start_wall()).unwrap())
        .collect();
    assert_eq!(
        walls
            .iter()
            .map(|d| d.as_secs_f64().round() as u64)
            .collect::<Vec<_>>(),
        [0, 86_400, 172_800]
    );
}

#[tokio::test(start_paused = true)]
async fn the_interval_caps_a_distant_next_renewal_at() {
    let h = start(
        env("interval"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.renew_always(renewed(90 * DAY, Some(83 * DAY)));
        },
    );
    let renews = h.renews(3).await;
    h.stop().await;

    assert_eq!(gaps(&renews), [3 * 86_400, 3 * 86_400]);
}

#[tokio::test(start_paused = true)]
async fn catches_up_within_a_check_period_after_a_suspend() {
    let h = start(
        env("laptop"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.renew_always(renewed(8 * DAY, Some(2 * DAY)));
        },
    );
    h.agent
        .health
        .subscribe()
        .wait_for(|s| s.next_attempt_at.is_some())
        .await
        .unwrap();
    let due = h.agent.health.snapshot().next_attempt_at.unwrap();
    assert_eq!(due, start_wall() + 2 * DAY);
    // An hour later the lid closes; it opens four days of wall time later, while the
    // monotonic clock (tokio's) did not move.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    h.clock.jump(4 * DAY);
    let resumed = tokio::time::Instant::now();
    let renews = h.renews(2).await;
    h.stop().await;

    let caught_up = renews[1].at - resumed;
    assert!(
        caught_up <= MINUTE,
        "renewed {caught_up:?} after resume, within one check period"
    );
    assert!(
        renews[1].wall >= start_wall() + 4 * DAY,
        "the renewal happened after the resume"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_that_never_expires_is_announced_once() {
    let h = start(
        env("forever"),
        schedule(DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.renew_always(never_expires());
            fake.lookup_always(identity("robot", "ci", None));
        },
    );
    h.renews(3).await;
    let snapshot = h.agent.health.snapshot();
    let logs = h.stop().await;

    assert_eq!(
        logs.matching("token never expires: no renewals needed")
            .len(),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.matching("authenticated as robot, token ci never expires")
            .len(),
        1,
        "{}",
        logs.text()
    );
    assert!(snapshot.never_expires && snapshot.expires_at.is_none());
}

/// Token A is rejected; the source now holds B, and B meets an outage. B is not known to
/// be bad: the agent must back off (not retry every check period because B != A) and be
/// "retrying", i.e. ready, as in any outage.
#[tokio::test(start_paused = true)]
async fn a_new_token_that_meets_an_outage_backs_off_and_is_retrying() {
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, token("old")).unwrap();
    let h = start(
        TokenSource::File(file.clone()),
        schedule(3 * DAY, Duration::from_secs(600), Duration::from_secs(3600)),
        |fake| {
            fake.accept_only(&[&token("new")], "TOKEN_REVOKED");
            fake.renew_always(fail(Status::unavailable("database down")));
        },
    );
    h.wait_state(AgentState::Unauthenticated).await;
    std::fs::write(&file, token("new")).unwrap();
    tokio::time::timeout(
        3 * 3600 * Duration::from_secs(1),
        h.wait_state(AgentState::Retrying),
    )
    .await
    .expect("an outage with a token not known to be bad is \"retrying\"");
    let renews = h.renews(4).await;
    let snapshot = h.agent.health.snapshot();
    let logs = h.stop().await;

    let with_new: Vec<Call> = renews
        .iter()
        .filter(|c| c.token.as_deref() == Some(token("new").as_str()))
        .cloned()
        .collect();
    assert_eq!(with_new.len(), 3, "{renews:?}");
    // Failures 2 and 3 of the run: 20 and 40 minutes, not one check period each.
    assert_eq!(gaps(&with_new), [1200, 2400]);
    assert_eq!(logs.matching("has a new token").len(), 1, "{}", logs.text());
    assert_eq!(snapshot.state, AgentState::Retrying);
    assert!(snapshot.state.is_ready() && snapshot.reject_reason.is_none());
    assert!(
        logs.matching("renewal failed")
            .iter()
            .all(|l| l.contains("code=\"UNAVAILABLE\"") || l.contains("code=UNAVAILABLE")),
        "structured code field: {}",
        logs.text()
    );
}

/// A renewal that works followed by a rejected lookup is one renewal attempt, counted as
/// renewed; the lookup's rejection shows in the state, not in the attempt counters.
#[tokio::test(start_paused = true)]
async fn a_rejected_lookup_after_a_renewal_is_not_counted_twice() {
    let h = start(
        env("lookupfails"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.lookup_always(fail(crate::fake::unauthenticated("TOKEN_REVOKED")));
        },
    );
    h.agent
        .health
        .subscribe()
        .wait_for(|s| s.state == AgentState::Unauthenticated && s.next_attempt_at.is_some())
        .await
        .unwrap();
    let attempts = h.agent.health.snapshot().attempts;
    h.stop().await;

    assert_eq!(
        (attempts.renewed, attempts.rejected),
        (1, 0),
        "{attempts:?}"
    );
}

/// A token at its maximum lifetime: warned about when first seen, looked at once more an
/// hour before it expires (a second warning while it still works), then at expiry.
#[tokio::test(start_paused = true)]
async fn an_unrenewable_token_gets_a_final_warning_an_hour_before_it_expires() {
    let expires_at = start_wall() + 2 * DAY;
    let h = start(
        env("maxlife"),
        schedule(3 * DAY, Duration::from_secs(30), Duration::from_secs(3600)),
        |fake| {
            fake.renew_always(Arc::new(move |_| {
                Ok(auth_api::v1::RenewCurrentTokenResponse {
                    expires_at: Some(expires_at.into()),
                    renewed: false,
                    next_renewal_at: None,
                })
            }));
        },
    );
    let renews = h.renews(3).await;
    let logs = h.stop().await;

    let walls: Vec<u64> = renews[..3]
        .iter()
        .map(|c| c.wall.duration_since(start_wall()).unwrap().as_secs())
        .collect();
    assert_eq!(walls, [0, 2 * 86_400 - 3600, 2 * 86_400]);
    let warnings = logs.matching("has reached its maximum lifetime");
    assert_eq!(warnings.len(), 2, "{}", logs.text());
    assert!(warnings[1].contains("(in 1h"), "{}", warnings[1]);
}
