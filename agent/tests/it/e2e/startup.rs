//! Startup against the real service: a token inside the renewal window is renewed by the
//! preflight call (the database and its audit trail say so) before the agent logs who it
//! is authenticated as; in-process, and through the binary's login, run, status, renew
//! and logout.
use std::{sync::Arc, time::Duration};

use auth_agent::{AgentState, SystemClock, timefmt};
use auth_service::renewal::RenewalPolicy;

use crate::{
    e2e::harness::{
        DAY, PROMPTLY, Process, Service, assert_no_token, command, gap, login, options,
        spawn_agent, text,
    },
    support::{TempDir, capture_logs},
};

const RENEWED: &str = "token renewed: it now expires at";
const AUTHENTICATED: &str = "authenticated as alice, token test expires at";

#[tokio::test]
async fn a_token_in_the_renewal_window_is_renewed_at_startup() {
    let (logs, _guard) = capture_logs();
    let service = Service::start(RenewalPolicy::default()).await;
    let (id, raw) = service.token_expiring_in(3.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let report = login(&service, &config, &raw).await;
    assert_eq!(report.identity.user_id, "alice");
    assert_eq!(
        service.event_kinds(&id).await,
        ["create"],
        "login only looks the token up"
    );

    let agent = spawn_agent(options(&service, &config), Arc::new(SystemClock));
    let ready = agent
        .wait_for("renewed and identified", |s| {
            s.state == AgentState::Ready && s.user_id.is_some() && s.next_attempt_at.is_some()
        })
        .await;
    let (stored, db_now) = service.expiry(&id).await;
    assert!(
        gap(stored, db_now + 90 * DAY) < Duration::from_secs(60),
        "the expiry moved to the database's now + 90 days: {stored:?} vs {db_now:?}"
    );
    assert_eq!(
        ready.expires_at,
        Some(stored),
        "the agent reports what is stored"
    );
    assert_eq!(ready.attempts.renewed, 1);
    assert_eq!(service.event_kinds(&id).await, ["create", "renew"]);
    // The next look is on the interval (3 days, shortened by up to 20% jitter): much
    // sooner than the server's next_renewal_at, 83 days out.
    let next = gap(
        ready.next_attempt_at.unwrap(),
        ready.last_success_at.unwrap(),
    );
    assert!(
        next <= 3 * DAY && next >= 3 * DAY * 4 / 5,
        "next attempt in {next:?}"
    );
    agent.stop().await;
    service.shutdown().await;

    let text = logs.text();
    let renewed = text.find(RENEWED).unwrap_or_else(|| panic!("{text}"));
    let identity_line = format!("{AUTHENTICATED} {}", timefmt::rfc3339(stored));
    let authenticated = text
        .find(&identity_line)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(renewed < authenticated, "renewed first:\n{text}");
    assert_eq!(logs.matching(AUTHENTICATED).len(), 1, "{text}");
    let agent_warnings: Vec<_> = logs
        .warnings()
        .into_iter()
        .filter(|l| l.contains("auth_agent"))
        .collect();
    assert!(agent_warnings.is_empty(), "{agent_warnings:?}");
    assert_no_token("the logs", &text, &[&raw]);
    assert_no_token(
        "the login report",
        &format!("{report}\n{report:?}"),
        &[&raw],
    );
}

#[tokio::test]
async fn the_binary_logs_in_renews_at_startup_and_stops_cleanly_on_sigterm() {
    let service = Service::start(RenewalPolicy::default()).await;
    let (id, raw) = service.token_expiring_in(3.0 * 86_400.0).await;
    let url = service.url();
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();

    let login = command(
        &["login", "--server", &url, "--config", cfg],
        &format!("{raw}\n"),
        dir.path(),
    )
    .await;
    let (login_out, login_err) = (text(&login.stdout), text(&login.stderr));
    assert_eq!(login.status.code(), Some(0), "{login_err}");
    assert!(
        login_out.contains(&format!("logged in to {url} as alice: token \"test\"")),
        "{login_out}"
    );
    assert_eq!(service.event_kinds(&id).await, ["create"]);

    // The server comes from the config that login wrote.
    let mut agent = Process::spawn(&["run", "--config", cfg], &[], dir.path());
    let (line, _) = agent.wait_for_line(AUTHENTICATED, PROMPTLY).await;
    let (stored, db_now) = service.expiry(&id).await;
    assert!(
        gap(stored, db_now + 90 * DAY) < Duration::from_secs(60),
        "{stored:?} vs {db_now:?}"
    );
    assert!(line.contains(&timefmt::rfc3339(stored)), "{line}");
    let events = auth_test_support::fixtures::events(service.db(), id)
        .await
        .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "renew");
    assert!(
        events[1].1.starts_with("127.0.0.1:"),
        "the caller is audited: {events:?}"
    );

    let status = agent.terminate().await;
    let (log, stdout) = (agent.stderr.text(), agent.stdout.text());
    assert_eq!(status.code(), Some(0), "{log}");
    let renewed = log.find(RENEWED).unwrap_or_else(|| panic!("{log}"));
    assert!(renewed < log.find(AUTHENTICATED).unwrap(), "{log}");
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(!log.contains(" WARN "), "{log}");

    // `status` shows the identity and the renewal `run` recorded next to the config.
    let report = command(&["status", "--config", cfg], "", dir.path()).await;
    let (report_out, report_err) = (text(&report.stdout), text(&report.stderr));
    assert_eq!(report.status.code(), Some(0), "{report_err}");
    for expected in [
        format!("server:        {url}"),
        "user:          alice".to_owned(),
        format!("token:         test (id {id})"),
        format!("expires:       {}", timefmt::rfc3339(stored)),
        "extended the expiry".to_owned(),
    ] {
        assert!(
            report_out.contains(&expected),
            "{expected:?} in\n{report_out}"
        );
    }

    // A manual renewal right after is a no-op that says when one is next possible
    // (expiry - 7 days), and logging out revokes the token on the server.
    let renew = command(&["renew", "--config", cfg], "", dir.path()).await;
    let renew_out = text(&renew.stdout);
    assert_eq!(renew.status.code(), Some(0), "{}", text(&renew.stderr));
    assert!(
        renew_out.contains(&format!(
            "not renewed: the token is valid until {}",
            timefmt::rfc3339(stored)
        )) && renew_out.contains(&format!(
            "next renewal possible from {}",
            timefmt::rfc3339(stored - 7 * DAY)
        )),
        "{renew_out}"
    );
    let logout = command(&["logout", "--config", cfg], "", dir.path()).await;
    let logout_out = text(&logout.stdout);
    assert_eq!(logout.status.code(), Some(0), "{}", text(&logout.stderr));
    assert!(logout_out.contains("token revoked at"), "{logout_out}");
    assert_eq!(
        service.event_kinds(&id).await,
        ["create", "renew", "revoke"],
        "one renewal (the manual one was a no-op), then the revocation"
    );
    service.shutdown().await;

    for (what, output) in [
        ("login's stdout", &login_out),
        ("login's stderr", &login_err),
        ("run's log", &log),
        ("run's stdout", &stdout),
        ("status's stdout", &report_out),
        ("status's stderr", &report_err),
        ("renew's stdout", &renew_out),
        ("logout's stdout", &logout_out),
    ] {
        assert_no_token(what, output, &[&raw]);
    }
}
