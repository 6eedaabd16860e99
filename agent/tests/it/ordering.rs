//! The startup contract, over real TCP in real time: preflight renew first, then the
//! identity lookup; login warnings only for UNAUTHENTICATED, and the right fix in them.
use std::{sync::Arc, time::Duration};

use auth_agent::{AgentState, RunOptions, SystemClock, TokenSource};
use auth_test_support::agent::{self, RunningAgent};
use tonic::Status;

use crate::{
    fake::{DAY, Fake, Rpc, fail, not_renewed, unauthenticated},
    support::{TempDir, capture_logs, token},
};

/// The daemon with the real clock.
pub fn spawn(opts: RunOptions) -> RunningAgent {
    agent::spawn(opts, Arc::new(SystemClock))
}

pub async fn start_tcp(fake: &Fake, source: TokenSource) -> RunningAgent {
    let url = fake.serve_tcp().await;
    spawn(RunOptions::new(url.parse().unwrap(), source))
}

fn env_source(tag: &str) -> TokenSource {
    TokenSource::Env(Some(auth_agent::Token::parse(&token(tag)).unwrap()))
}

#[tokio::test]
async fn preflight_renew_comes_before_the_identity_call() {
    let (logs, _guard) = capture_logs();
    let fake = Fake::new();
    let agent = start_tcp(&fake, env_source("order")).await;
    let calls = fake.wait_for_calls(2).await;
    agent.settled().await;
    agent.stop().await;

    assert_eq!(fake.rpcs(), [Rpc::Renew, Rpc::Lookup]);
    assert!(
        calls
            .iter()
            .all(|c| c.token.as_deref() == Some(token("order").as_str()))
    );
    let authenticated = logs.matching("authenticated as alice, token laptop expires at ");
    assert_eq!(authenticated.len(), 1, "{}", logs.text());
    // The preflight is logged before the identity line.
    let text = logs.text();
    assert!(
        text.find("token renewed").unwrap() < text.find("authenticated as").unwrap(),
        "{text}"
    );
}

#[tokio::test]
async fn renew_comes_first_even_when_every_call_is_unauthenticated() {
    let (logs, _guard) = capture_logs();
    let fake = Fake::new();
    fake.accept_only(&[], "TOKEN_REVOKED");
    let agent = start_tcp(&fake, env_source("revoked")).await;
    agent.settled().await;
    let snapshot = agent.health.snapshot();
    agent.stop().await;

    // The only call is the preflight: a lookup with a rejected token would only fail again.
    assert_eq!(fake.rpcs(), [Rpc::Renew]);
    assert_eq!(snapshot.state, AgentState::Unauthenticated);
    assert_eq!(snapshot.reject_reason.as_deref(), Some("TOKEN_REVOKED"));
    assert_eq!(
        logs.matching("token rejected (TOKEN_REVOKED)").len(),
        1,
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn a_no_op_renewal_still_proceeds_to_the_identity_call() {
    let (logs, _guard) = capture_logs();
    let fake = Fake::new();
    fake.renew_then([not_renewed(30 * DAY, Some(23 * DAY))]);
    let agent = start_tcp(&fake, env_source("noop")).await;
    fake.wait_for_calls(2).await;
    agent.settled().await;
    let snapshot = agent.health.snapshot();
    agent.stop().await;

    assert_eq!(fake.rpcs(), [Rpc::Renew, Rpc::Lookup]);
    assert_eq!(snapshot.state, AgentState::Ready);
    assert_eq!(snapshot.attempts.unchanged, 1);
    assert_eq!(
        logs.matching("not due for renewal yet").len(),
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

#[tokio::test]
async fn unavailable_or_internal_at_preflight_do_not_block_startup_nor_blame_the_login() {
    for (status, code) in [
        (Status::unavailable("database down"), "UNAVAILABLE"),
        (Status::internal("bug"), "INTERNAL"),
    ] {
        let (logs, _guard) = capture_logs();
        let fake = Fake::new();
        fake.renew_then([fail(status)]);
        let agent = start_tcp(&fake, env_source("outage")).await;
        fake.wait_for_calls(2).await;
        agent.settled().await;
        let snapshot = agent.health.snapshot();
        agent.stop().await;

        assert_eq!(fake.rpcs(), [Rpc::Renew, Rpc::Lookup], "{code}");
        assert_eq!(snapshot.state, AgentState::Retrying, "{code}");
        assert!(
            logs.matching("authenticated as alice").len() == 1,
            "{code}: startup continued\n{}",
            logs.text()
        );
        assert!(
            logs.matching("auth-agent login").is_empty(),
            "{code}: no login warning\n{}",
            logs.text()
        );
        assert!(
            logs.matching("token rejected").is_empty(),
            "{code}\n{}",
            logs.text()
        );
        let failed = logs.matching("renewal failed");
        assert!(
            failed.len() == 1 && failed[0].contains(code),
            "{code}\n{}",
            logs.text()
        );
    }
}

#[tokio::test]
async fn a_silent_server_times_the_preflight_out_without_a_login_warning() {
    let (logs, _guard) = capture_logs();
    // Accepts TCP connections and never answers: the black hole a firewall makes.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut opts = RunOptions::new(url.parse().unwrap(), env_source("silent"));
    opts.preflight_timeout = Duration::from_millis(200);
    opts.request_timeout = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let agent = spawn(opts);
    agent.settled().await;
    let elapsed = started.elapsed();
    let snapshot = agent.health.snapshot();
    agent.stop().await;
    holder.abort();

    assert!(
        elapsed < Duration::from_secs(5),
        "preflight and lookup gave up on their timeouts: {elapsed:?}"
    );
    assert_eq!(snapshot.state, AgentState::Retrying);
    assert!(
        logs.matching("renewal failed")
            .iter()
            .any(|l| l.contains("DEADLINE_EXCEEDED")),
        "{}",
        logs.text()
    );
    assert!(
        logs.matching("identity lookup failed").len() == 1,
        "{}",
        logs.text()
    );
    assert!(
        logs.matching("auth-agent login").is_empty(),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn the_warning_names_the_reason_and_the_command_first() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new();
    let config = dir.join("config");
    auth_agent::config::store(
        &config,
        &auth_agent::config::ConfigFile {
            server: None,
            token: Some(auth_agent::Token::parse(&token("expired")).unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let fake = Fake::new();
    fake.renew_always(fail(unauthenticated("TOKEN_EXPIRED")));
    let agent = start_tcp(
        &fake,
        TokenSource::Config {
            path: config.clone(),
            explicit: true,
        },
    )
    .await;
    agent.settled().await;
    agent.stop().await;

    let expected = format!(
        "token rejected (TOKEN_EXPIRED): run `auth-agent login --config {}` to re-authenticate",
        config.display()
    );
    let warnings = logs.warnings();
    assert!(
        !warnings.is_empty() && warnings[0].contains(&expected),
        "{}",
        logs.text()
    );
    assert!(
        warnings[0].contains("reason=TOKEN_EXPIRED"),
        "structured field: {}",
        warnings[0]
    );
}

#[tokio::test]
async fn with_a_token_file_the_warning_names_the_file_not_login() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, format!("{}\n", token("secretmount"))).unwrap();
    let fake = Fake::new();
    fake.accept_only(&[], "TOKEN_UNKNOWN");
    let agent = start_tcp(&fake, TokenSource::File(file.clone())).await;
    agent.settled().await;
    agent.stop().await;

    let warnings = logs.matching("token rejected (TOKEN_UNKNOWN)");
    assert_eq!(warnings.len(), 1, "{}", logs.text());
    assert!(
        warnings[0].contains(&file.display().to_string()),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("Secret"), "{}", warnings[0]);
    assert!(!warnings[0].contains("auth-agent login"), "{}", warnings[0]);
}

#[tokio::test]
async fn a_missing_token_file_is_a_login_problem_without_any_call() {
    let (logs, _guard) = capture_logs();
    let dir = TempDir::new();
    let fake = Fake::new();
    let agent = start_tcp(&fake, TokenSource::File(dir.join("absent"))).await;
    agent.settled().await;
    agent.stop().await;

    assert!(fake.rpcs().is_empty(), "nothing to send, nothing sent");
    let warnings = logs.matching("no usable token (MISSING_CREDENTIALS: cannot read");
    assert_eq!(warnings.len(), 1, "{}", logs.text());
}

/// A call that timed out may sit in a connection that is dead but not known to be (a
/// suspend, a NAT that dropped it): the next attempt must dial a new one rather than be
/// multiplexed onto it and hang again.
#[tokio::test]
async fn after_a_timeout_the_next_attempt_uses_a_new_connection() {
    let (_logs, _guard) = capture_logs();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (accepted, mut accepts) = tokio::sync::watch::channel(0usize);
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
            accepted.send_replace(held.len());
        }
    });
    let mut opts = RunOptions::new(url.parse().unwrap(), env_source("blackhole"));
    opts.preflight_timeout = Duration::from_millis(200);
    opts.request_timeout = Duration::from_millis(200);
    opts.schedule.backoff_initial = Duration::from_millis(50);
    opts.schedule.backoff_max = Duration::from_millis(50);
    let agent = spawn(opts);
    let dialled_again =
        tokio::time::timeout(Duration::from_secs(5), accepts.wait_for(|n| *n >= 2)).await;
    agent.stop().await;
    holder.abort();

    assert!(
        dialled_again.is_ok(),
        "every attempt went into the first, silent connection"
    );
}
