//! The agent against the real service over TLS and mTLS, with certificates made in the
//! test: login, renew and run end to end; a server certificate from another CA is a
//! certificate error, retried, never a login warning; and a rotated client certificate
//! is read again when the agent reconnects.
use std::{net::SocketAddr, time::Duration};

use auth_agent::{ServerUrl, TlsFiles, Transport, client};
use auth_service::{config::TlsSettings, renewal::RenewalPolicy};
use auth_test_support::{
    certs::{Pair, Pki},
    cluster,
    server::{self, TestServer},
};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    e2e::harness::{Process, Service, assert_no_token, command, text},
    support::TempDir,
};

/// The service with mTLS: certificates from `pki`, and ValidateToken open to `allow`.
async fn mtls_service(pki: &Pki, allow: &[&str]) -> Service {
    let cert = pki.server("server", 1, &[]).unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    settings.transport.tls = Some(TlsSettings {
        cert: cert.cert,
        key: cert.key,
        client_ca: Some(pki.ca.clone()),
    });
    settings.validate_allow = allow.iter().map(|s| (*s).to_owned()).collect();
    Service::from(
        TestServer::start(cluster::test_db().await.unwrap(), settings)
            .await
            .unwrap(),
    )
}

fn https(service: &Service) -> String {
    let port = service.url().rsplit(':').next().unwrap().to_owned();
    format!("https://localhost:{port}")
}

fn arg(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_renew_and_run_over_mtls() {
    let pki = Pki::new("agent-mtls").unwrap();
    let me = pki
        .client("agent", Some("spiffe://test/agent"), None)
        .unwrap();
    let service = mtls_service(&pki, &[]).await;
    let (_, raw) = service.token_expiring_in(3.0 * 86_400.0).await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let url = https(&service);
    let out = command(
        &[
            "login",
            "--server",
            &url,
            "--config",
            arg(&config),
            "--ca-file",
            arg(&pki.ca),
            "--client-cert",
            arg(&me.cert),
            "--client-key",
            arg(&me.key),
        ],
        &raw,
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // login saved how to reach the server: the next commands need no TLS flags.
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(
        saved.contains("ca_file") && saved.contains("client_cert"),
        "{saved}"
    );
    let renewed = command(&["renew", "--config", arg(&config)], "", dir.path()).await;
    assert_eq!(renewed.status.code(), Some(0), "{}", text(&renewed.stderr));
    assert!(
        text(&renewed.stdout).starts_with("renewed"),
        "{}",
        text(&renewed.stdout)
    );

    let mut run = Process::spawn(&["run", "--config", arg(&config)], &[], dir.path());
    run.wait_for_line("authenticated as alice", Duration::from_secs(20))
        .await;
    assert!(run.terminate().await.success());
    for output in [text(&out.stderr), run.stderr.text()] {
        assert_no_token("output", &output, &[&raw]);
    }
    service.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_a_certificate_error_not_a_login_problem() {
    let pki = Pki::new("agent-tls").unwrap();
    let me = pki.client("agent", None, Some("agent.test")).unwrap();
    let service = mtls_service(&pki, &[]).await;
    let (_, raw) = service.token_expiring_in(30.0 * 86_400.0).await;
    let stranger = Pki::new("agent-tls-other").unwrap();
    let dir = TempDir::new();
    let envs = [
        ("AUTH_AGENT_TOKEN", raw.as_str()),
        ("AUTH_AGENT_CA_FILE", arg(&stranger.ca)),
        ("AUTH_AGENT_CLIENT_CERT", arg(&me.cert)),
        ("AUTH_AGENT_CLIENT_KEY", arg(&me.key)),
    ];
    let url = https(&service);
    let mut status = Process::spawn(
        &["status", "--server", &url, "--config", arg(&dir.join("c"))],
        &envs,
        dir.path(),
    );
    let code = status.exit(Duration::from_secs(20)).await.code();
    let stderr = status.stderr.text();
    assert_eq!(code, Some(1), "retry later, not log in again: {stderr}");
    assert!(
        stderr.contains("certificate") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("auth-agent login"), "{stderr}");

    // The daemon: retries with backoff, no login warning.
    let mut run = Process::spawn(
        &["run", "--server", &url, "--config", arg(&dir.join("c"))],
        &envs,
        dir.path(),
    );
    let (line, _) = run
        .wait_for_line("renewal failed", Duration::from_secs(20))
        .await;
    assert!(line.contains("certificate"), "{line}");
    assert!(run.terminate().await.success());
    assert!(!run.stderr.text().contains("token rejected"));
    service.shutdown().await;
}

/// A TCP proxy that can drop every connection it carries, so that the client must
/// reconnect.
async fn droppable_proxy(upstream: SocketAddr) -> (SocketAddr, watch::Sender<u32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drops, _) = watch::channel(0u32);
    let sender = drops.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let mut dropped = drops.subscribe();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = dropped.changed() => {}
                }
            });
        }
    });
    (addr, sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_certificate_is_read_again_on_reconnect() {
    let pki = Pki::new("agent-rotate").unwrap();
    let service = mtls_service(&pki, &["spiffe://test/new"]).await;
    let (_, raw) = service.token_expiring_in(30.0 * 86_400.0).await;
    let old = pki.client("old", Some("spiffe://test/old"), None).unwrap();
    let new = pki.client("new", Some("spiffe://test/new"), None).unwrap();
    let dir = TempDir::new();
    // The files the agent is configured with; rotated in place.
    let live = Pair {
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let upstream: SocketAddr = service.url().trim_start_matches("http://").parse().unwrap();
    let (proxy, drop_all) = droppable_proxy(upstream).await;
    let server: ServerUrl = format!("https://localhost:{}", proxy.port())
        .parse()
        .unwrap();
    let transport = Transport {
        tls: TlsFiles {
            ca_file: Some(pki.ca.clone()),
            client_cert: Some(live.cert.clone()),
            client_key: Some(live.key.clone()),
        },
        ..Transport::default()
    };
    let client = client::connect_lazy(&server, &transport).unwrap();
    // ValidateToken is limited to spiffe://test/new: it tells which certificate the
    // connection presented.
    let validated = |client: auth_agent::Client, token: String| async move {
        matches!(client.auth_client().validate(&token).await, Ok(Ok(_)))
    };
    let denied = client.auth_client().validate(&raw).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // The agent's own calls work with either certificate.
    let token = auth_agent::Token::parse(&raw).unwrap();
    client
        .lookup(&token, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();

    std::fs::copy(&new.cert, &live.cert).unwrap();
    std::fs::copy(&new.key, &live.key).unwrap();
    // Until the connection is replaced, the old certificate is what the server saw.
    assert!(!validated(client.clone(), raw.clone()).await);
    drop_all.send_modify(|n| *n += 1);
    let mut seen_new = false;
    for _ in 0..50 {
        if validated(client.clone(), raw.clone()).await {
            seen_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen_new,
        "the reconnect did not present the rotated certificate"
    );
    service.shutdown().await;
}
