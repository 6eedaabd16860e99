//! A revoked token against the real service: within seconds, one WARN that names the
//! server's reason (TOKEN_REVOKED) and the exact command that fixes it; at startup
//! (in-process and through the binary) and at the next attempt of a running agent, which
//! then recovers by itself after a new login.
use std::{sync::Arc, time::Duration, time::SystemTime};

use auth_agent::{AgentState, Clock, OffsetClock, SystemClock};
use auth_service::renewal::RenewalPolicy;

use crate::{
    e2e::harness::{
        DAY, PROMPTLY, Process, Service, assert_no_token, command, login, options, spawn_agent,
        text,
    },
    support::{Logs, TempDir, capture_logs},
};

/// The warning auth-agent must print for a revoked token read from `config`.
fn revoked_warning(config: &str) -> String {
    format!(
        "token rejected (TOKEN_REVOKED): run `auth-agent login --config {config}` to re-authenticate"
    )
}

/// The agent's own WARN lines (the capture also holds the server's and dependencies').
fn agent_warnings(logs: &Logs) -> Vec<String> {
    logs.warnings()
        .into_iter()
        .filter(|l| l.contains("auth_agent"))
        .collect()
}

#[tokio::test]
async fn a_revoked_token_is_one_warning_with_the_reason_and_the_command_at_startup() {
    let (logs, _guard) = capture_logs();
    let service = Service::start(RenewalPolicy::default()).await;
    let (id, raw) = service.token_expiring_in(30.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    login(&service, &config, &raw).await;
    service.revoke(&id).await;

    let started = std::time::Instant::now();
    let agent = spawn_agent(options(&service, &config), Arc::new(SystemClock));
    let rejected = agent
        .wait_for("unauthenticated", |s| {
            s.state == AgentState::Unauthenticated
        })
        .await;
    let took = started.elapsed();
    assert_eq!(rejected.reject_reason.as_deref(), Some("TOKEN_REVOKED"));
    // Settled: the retry is scheduled (backoff, 30 s at the default) and nothing else is
    // attempted meanwhile.
    let settled = agent
        .wait_for("retry scheduled", |s| s.next_attempt_at.is_some())
        .await;
    agent.stop().await;
    service.shutdown().await;

    assert!(took < Duration::from_secs(5), "warned after {took:?}");
    assert_eq!(settled.attempts.rejected, 1);
    let warnings = agent_warnings(&logs);
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(
        warnings[0].contains(&revoked_warning(config.to_str().unwrap()))
            && warnings[0].contains("reason=TOKEN_REVOKED"),
        "{}",
        warnings[0]
    );
    assert!(
        logs.matching("authenticated as").is_empty(),
        "no lookup with a rejected token:\n{}",
        logs.text()
    );
    assert_no_token("the logs", &logs.text(), &[&raw]);
}

#[tokio::test]
async fn the_binary_warns_about_a_revoked_token_within_seconds() {
    let service = Service::start(RenewalPolicy::default()).await;
    let (id, raw) = service.token_expiring_in(30.0 * 86_400.0).await;
    let url = service.url();
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();
    let login = command(
        &["login", "--server", &url, "--config", cfg],
        &raw,
        dir.path(),
    )
    .await;
    assert_eq!(login.status.code(), Some(0), "{}", text(&login.stderr));
    service.revoke(&id).await;

    // Everything logged, from every crate, to look for the token in all of it.
    let mut agent = Process::spawn(
        &["run", "--config", cfg],
        &[("AUTH_AGENT_LOG", "trace")],
        dir.path(),
    );
    let (line, after) = agent
        .wait_for_line("token rejected (TOKEN_REVOKED)", PROMPTLY)
        .await;
    assert!(line.contains(" WARN "), "{line}");
    assert!(line.contains(&revoked_warning(cfg)), "{line}");
    let status = agent.terminate().await;
    let log = agent.stderr.text();
    service.shutdown().await;

    assert!(after < Duration::from_secs(5), "warned after {after:?}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("authenticated as"), "{log}");
    assert_no_token("run's log", &log, &[&raw]);
    assert_no_token("run's stdout", &agent.stdout.text(), &[&raw]);
    assert_no_token("login's output", &text(&login.stdout), &[&raw]);
}

#[tokio::test]
async fn a_token_revoked_while_running_is_reported_at_the_next_attempt_and_a_new_login_recovers() {
    let (logs, _guard) = capture_logs();
    let service = Service::start(RenewalPolicy::default()).await;
    let (old_id, old) = service.token_expiring_in(3.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    login(&service, &config, &old).await;

    let clock = Arc::new(OffsetClock::new(SystemTime::now()));
    let mut opts = options(&service, &config);
    opts.schedule.jitter = 0.0;
    let agent = spawn_agent(opts, clock.clone());
    let ready = agent
        .wait_for("ready", |s| {
            s.state == AgentState::Ready && s.next_attempt_at.is_some()
        })
        .await;
    service.revoke(&old_id).await;
    assert_eq!(
        agent.health.snapshot().state,
        AgentState::Ready,
        "nothing is asked between attempts"
    );

    // Three days pass on the agent's clock: the interval is up and it asks again.
    let next = ready.next_attempt_at.unwrap();
    clock.jump(next.duration_since(clock.now()).unwrap() + Duration::from_secs(1));
    let rejected = agent
        .wait_for("the revocation noticed and a retry scheduled", |s| {
            s.state == AgentState::Unauthenticated && s.next_attempt_at != Some(next)
        })
        .await;
    assert_eq!(rejected.reject_reason.as_deref(), Some("TOKEN_REVOKED"));
    let warnings = agent_warnings(&logs);
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(
        warnings[0].contains(&revoked_warning(config.to_str().unwrap())),
        "{}",
        warnings[0]
    );

    // The person does what the warning says; the agent notices the new token by itself.
    let (new_id, new) = service.token_expiring_in(30.0 * 86_400.0).await;
    login(&service, &config, &new).await;
    let recovered = agent
        .wait_for("recovered, identified and scheduled", |s| {
            s.state == AgentState::Ready && s.next_attempt_at != rejected.next_attempt_at
        })
        .await;
    assert_eq!(recovered.reject_reason, None);
    assert_eq!(recovered.attempts.unchanged, 1);
    let (new_expiry, _) = service.expiry(&new_id).await;
    assert_eq!(recovered.expires_at, Some(new_expiry));
    agent.stop().await;
    assert_eq!(
        service.event_kinds(&new_id).await,
        ["create"],
        "30 days left: outside the window, not renewed"
    );
    service.shutdown().await;

    assert_eq!(
        logs.matching("recovered from TOKEN_REVOKED").len(),
        1,
        "{}",
        logs.text()
    );
    assert_eq!(
        logs.matching("authenticated as alice, token test").len(),
        2,
        "the new token's identity is logged too:\n{}",
        logs.text()
    );
    assert!(new_expiry > SystemTime::now() + 29 * DAY);
    assert_no_token("the logs", &logs.text(), &[&old, &new]);
}
