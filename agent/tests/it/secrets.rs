//! The token never appears in any log line, at any level, from any crate, whatever
//! happens (rejection, outage, recovery, every command), nor in any Debug output.
use std::time::Duration;

use auth_agent::{
    AgentState, RunOptions, Token, TokenSource,
    cmd::{self, Context},
};
use tonic::Status;

use crate::{
    fake::{Fake, fail},
    ordering::spawn,
    support::{TempDir, capture_logs, token},
};

#[tokio::test]
async fn the_token_never_appears_in_any_log_line() {
    let (logs, _guard) = capture_logs();
    let (bad, good) = (token("rejectedsecret"), token("goodsecret"));
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, &bad).unwrap();

    let fake = Fake::new();
    fake.accept_only(&[&good], "TOKEN_REVOKED");
    fake.renew_then([fail(Status::unavailable("database down"))]);
    let url = fake.serve_tcp().await;
    let mut opts = RunOptions::new(url.parse().unwrap(), TokenSource::File(file.clone()));
    opts.check_period = Duration::from_millis(20);
    opts.schedule.backoff_initial = Duration::from_millis(50);
    opts.schedule.backoff_max = Duration::from_millis(50);
    let debug_of_options = format!("{opts:?}");
    let agent = spawn(opts);
    let mut health = agent.health.subscribe();
    health
        .wait_for(|s| s.state == AgentState::Unauthenticated)
        .await
        .unwrap();
    std::fs::write(&file, format!("{good}\n")).unwrap(); // the Secret is rotated
    health
        .wait_for(|s| s.state == AgentState::Ready && s.user_id.is_some())
        .await
        .unwrap();
    agent.stop().await;

    // Every command, through the library, with the same capture.
    let mut context = Context::new(dir.join("config"));
    context.server = Some(url.parse().unwrap());
    let login = cmd::login::login(&context, Token::parse(&good).unwrap())
        .await
        .unwrap();
    let status = cmd::status::status(&context, &auth_agent::SystemClock)
        .await
        .unwrap();
    let renew = cmd::renew::renew(&context, &auth_agent::SystemClock)
        .await
        .unwrap();
    let logout = cmd::logout::logout(&context).await.unwrap();
    let printed = format!(
        "{login}\n{status}\n{renew}\n{logout}\n{login:?}\n{status:?}\n{context:?}\n{debug_of_options}"
    );

    let text = logs.text();
    // The "token absent" check only means something if the layers that handle the
    // header (h2's HPACK, hyper) were captured at TRACE.
    assert!(
        logs.lines()
            .iter()
            .any(|l| l.trim_start().starts_with("TRACE")
                && (l.contains(" h2::") || l.contains(" hyper"))),
        "the capture saw h2/hyper trace events too:\n{text}"
    );
    assert!(
        text.contains("token rejected (TOKEN_REVOKED)") && text.contains("renewal failed"),
        "{text}"
    );
    for secret in [&bad, &good] {
        let body = &secret[4..];
        assert!(
            !text.contains(body),
            "a token leaked into the logs:\n{text}"
        );
        assert!(
            !printed.contains(body),
            "a token leaked into printed output:\n{printed}"
        );
    }
}
