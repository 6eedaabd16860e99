//! The `--health-addr` endpoint over real HTTP: readiness follows the token's state, and
//! metrics carry expiry and attempts by result.
use std::{net::SocketAddr, time::Duration};

use auth_agent::{AgentState, RunOptions, TokenSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    fake::Fake,
    ordering::spawn,
    support::{TempDir, token},
};

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test]
async fn readiness_and_metrics_follow_the_token() {
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, token("oldhealth")).unwrap();
    let fake = Fake::new();
    fake.accept_only(&[&token("newhealth")], "TOKEN_EXPIRED");
    let url = fake.serve_tcp().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut opts = RunOptions::new(url.parse().unwrap(), TokenSource::File(file.clone()));
    opts.health_listener = Some(listener);
    opts.check_period = Duration::from_millis(20);
    let agent = spawn(opts);
    let mut health = agent.health.subscribe();

    health
        .wait_for(|s| s.state == AgentState::Unauthenticated)
        .await
        .unwrap();
    assert_eq!(
        get(addr, "/readyz").await,
        (503, "unauthenticated (TOKEN_EXPIRED)\n".into())
    );
    assert_eq!(
        get(addr, "/healthz").await,
        (200, "ok\n".into()),
        "a restart cannot fix a token"
    );
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(
        metrics.contains("auth_agent_renewal_attempts_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("auth_agent_state{state=\"unauthenticated\"} 1"),
        "{metrics}"
    );

    std::fs::write(&file, token("newhealth")).unwrap();
    health
        .wait_for(|s| s.state == AgentState::Ready)
        .await
        .unwrap();
    assert_eq!(get(addr, "/readyz").await, (200, "ready\n".into()));
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let expiry_line = metrics
        .lines()
        .find(|l| l.starts_with("auth_agent_token_expiry_seconds "))
        .unwrap();
    let seconds: i64 = expiry_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (89 * 86_400..=90 * 86_400).contains(&seconds),
        "{expiry_line}"
    );
    assert!(
        metrics.contains("auth_agent_renewal_attempts_total{result=\"renewed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("auth_agent_last_success_timestamp_seconds ")),
        "{metrics}"
    );
    assert_eq!(get(addr, "/nope").await.0, 404);

    agent.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the endpoint stops with the daemon"
    );
}
