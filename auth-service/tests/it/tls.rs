//! TLS and mTLS on the gRPC port with certificates made in the test: the handshake,
//! plaintext refused, a client certificate required, the ValidateToken allow-list,
//! self-service for any mTLS caller, and certificate rotation without a restart.
use std::{path::Path, time::Duration};

use auth_api::v1::{RenewCurrentTokenRequest, auth_service_client::AuthServiceClient};
use auth_service::{
    config::{ServeSettings, TlsSettings},
    renewal::RenewalPolicy,
};
use auth_test_support::{
    certs::{Pair, Pki, served_serial},
    cluster,
    fixtures::token_expiring_in,
    grpc::*,
    http::metric,
    process,
    server::{self, TestServer},
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_types::StatusExt;

async fn tls_server(adjust: impl FnOnce(&mut ServeSettings)) -> TestServer {
    let mut settings = server::settings(RenewalPolicy::default());
    adjust(&mut settings);
    TestServer::start(cluster::test_db().await.unwrap(), settings)
        .await
        .unwrap()
}

fn files(server: &Pair, client_ca: Option<&Path>) -> TlsSettings {
    TlsSettings {
        cert: server.cert.clone(),
        key: server.key.clone(),
        client_ca: client_ca.map(Path::to_path_buf),
    }
}

/// A TLS channel to `server`, trusting `ca`, presenting `client` when given.
async fn channel(
    server: &TestServer,
    ca: &Path,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    channel_to(server.addr.port(), ca, client).await
}

/// [`channel`] to a server on a loopback `port`.
async fn channel_to(
    port: u16,
    ca: &Path,
    client: Option<&Pair>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&client.cert).unwrap(),
            std::fs::read(&client.key).unwrap(),
        ));
    }
    Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

#[tokio::test]
async fn tls_serves_every_service_and_refuses_plaintext() {
    let pki = Pki::new("tls").unwrap();
    let cert = pki.server("server", 1, &[]).unwrap();
    let server = tls_server(|s| s.transport.tls = Some(files(&cert, None))).await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;
    let ch = channel(&server, &pki.ca, None).await.unwrap();
    let mut client = AuthServiceClient::new(ch.clone());
    validate(&mut client, &token).await.unwrap();
    let status = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: auth_api::SERVICE_NAME.into(),
        })
        .await
        .unwrap();
    assert!(status.into_inner().status >= 1);
    // Reflection works over TLS too.
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ch);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());

    // Plaintext on the TLS port goes nowhere.
    let plain = AuthServiceClient::connect(format!("http://{}", server.addr)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => validate(&mut c, &token).await.is_err(),
    };
    assert!(refused, "a plaintext call was answered on a TLS port");
    // A client that trusts another CA refuses the server.
    let other = Pki::new("tls-other").unwrap();
    let wrong = match channel(&server, &other.ca, None).await {
        Err(_) => true,
        Ok(ch) => validate(&mut AuthServiceClient::new(ch), &token)
            .await
            .is_err(),
    };
    assert!(wrong);

    // `healthcheck --ca-file` trusts that CA (the name checked is `localhost`), and a
    // server its CA did not sign is unhealthy (exit 1).
    // (On the blocking pool: the server runs on this test's runtime.)
    let healthcheck = |ca: &Path| {
        let mut command = crate::service();
        command
            .args(["healthcheck", "--addr", &server.addr.to_string()])
            .arg("--ca-file")
            .arg(ca);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let trusted = healthcheck(&pki.ca).await.unwrap();
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).trim(), "SERVING");
    let untrusted = healthcheck(&other.ca).await.unwrap();
    assert_eq!(untrusted.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("unhealthy"),
        "{}",
        String::from_utf8_lossy(&untrusted.stderr)
    );
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_and_the_allow_list_decides_who_validates() {
    let pki = Pki::new("mtls").unwrap();
    let cert = pki.server("server", 1, &[]).unwrap();
    let billing = pki
        .client(
            "billing",
            Some("spiffe://cluster.local/ns/mesh/sa/billing"),
            None,
        )
        .unwrap();
    let stranger = pki
        .client(
            "stranger",
            Some("spiffe://cluster.local/ns/other/sa/stranger"),
            Some("stranger.example"),
        )
        .unwrap();
    // A DNS SAN only, listed by name.
    let reports = pki
        .client("reports", None, Some("reports.mesh.internal"))
        .unwrap();
    let server = tls_server(|s| {
        s.transport.tls = Some(files(&cert, Some(&pki.ca)));
        s.validate_allow = vec![
            "spiffe://cluster.local/ns/mesh/sa/billing".into(),
            "reports.mesh.internal".into(),
        ];
    })
    .await;
    let (_, token) = token_expiring_in(&server.db, 3.0 * 86400.0).await;

    // No client certificate: the handshake fails.
    let anonymous = match channel(&server, &pki.ca, None).await {
        Err(_) => true,
        Ok(ch) => validate(&mut AuthServiceClient::new(ch), &token)
            .await
            .is_err(),
    };
    assert!(anonymous, "a client without a certificate was served");

    // On the list: validates.
    let mut allowed =
        AuthServiceClient::new(channel(&server, &pki.ca, Some(&billing)).await.unwrap());
    let r = validate(&mut allowed, &token).await.unwrap();
    assert_eq!(r.user_id, "alice");
    let mut by_dns =
        AuthServiceClient::new(channel(&server, &pki.ca, Some(&reports)).await.unwrap());
    assert_eq!(
        validate(&mut by_dns, &token).await.unwrap().user_id,
        "alice"
    );

    // Not on the list: PERMISSION_DENIED naming what it presented.
    let mut other =
        AuthServiceClient::new(channel(&server, &pki.ca, Some(&stranger)).await.unwrap());
    let denied = validate(&mut other, &token).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.get_error_details().error_info().unwrap().reason,
        "CALLER_NOT_ALLOWED"
    );
    assert!(
        denied
            .message()
            .contains("spiffe://cluster.local/ns/other/sa/stranger"),
        "{}",
        denied.message()
    );
    // The same list guards Envoy's ext_authz Check: a refused caller is a gRPC error
    // (Envoy's status_on_error applies), not a denial of the client's token.
    let bearer = format!("Bearer {token}");
    let check = || envoy_check(&[("authorization", &bearer)], None);
    let mut envoy =
        AuthorizationClient::new(channel(&server, &pki.ca, Some(&billing)).await.unwrap());
    let ok = envoy.check(check()).await.unwrap().into_inner();
    assert_eq!(ok.status.unwrap().code, 0);
    let mut envoy =
        AuthorizationClient::new(channel(&server, &pki.ca, Some(&stranger)).await.unwrap());
    let refused = envoy.check(check()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // The self-service calls are open to any TLS client: the token is the credential.
    let renewed = other
        .renew_current_token(authed(RenewCurrentTokenRequest {}, &token))
        .await
        .unwrap();
    assert!(renewed.into_inner().renewed);
    lookup(&mut other, &token).await.unwrap();
}

#[tokio::test]
async fn a_rewritten_certificate_is_used_for_new_connections_and_old_ones_keep_working() {
    let pki = Pki::new("rotate").unwrap();
    let first = pki.server("server", 1, &[]).unwrap();
    let live = files(&first, None);
    let server = tls_server(|s| {
        s.transport.tls = Some(live.clone());
        s.transport.tls_poll = Duration::from_millis(100);
    })
    .await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;
    assert_eq!(served_serial(server.addr, &pki.ca).await.unwrap(), 1);
    let mut established = AuthServiceClient::new(channel(&server, &pki.ca, None).await.unwrap());
    validate(&mut established, &token).await.unwrap();

    // cert-manager rewrites the files in place.
    let second = pki.server("server", 2, &[]).unwrap();
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    let mut serial = 1;
    for _ in 0..100 {
        serial = served_serial(server.addr, &pki.ca).await.unwrap();
        if serial == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(serial, 2, "new handshakes use the new certificate");
    validate(&mut established, &token).await.unwrap();

    // A broken replacement (a key that does not go with the certificate) is refused:
    // the last good certificate stays. The refusal is waited for (its counter), so that
    // the serial below is checked after the reloader has looked at the new file, not
    // after a sleep that passes as well when it never did.
    let refused = || async {
        let (_, text) = server.http_get("/metrics").await.unwrap();
        metric(&text, r#"auth_tls_reloads_total{result="refused"}"#)
    };
    let before = refused().await;
    let third = pki.server("server", 3, &[]).unwrap();
    std::fs::copy(&third.cert, &live.cert).unwrap();
    let started = std::time::Instant::now();
    while refused().await <= before {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the rewritten certificate was never looked at"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_serial(server.addr, &pki.ca).await.unwrap(), 2);
    validate(&mut established, &token).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_a_bad_one_is_refused_and_healthcheck_speaks_mtls() {
    let pki = Pki::new("sighup").unwrap();
    let first = pki.server("server", 1, &[]).unwrap();
    let live = files(&first, Some(&pki.ca));
    let url = cluster::conninfo(&cluster::fresh_database().await.unwrap());
    let (cert, key, ca) = (
        live.cert.to_str().unwrap(),
        live.key.to_str().unwrap(),
        pki.ca.to_str().unwrap(),
    );
    let (mut child, addr, log) = crate::attack::serve(
        &[
            "--database-url",
            &url,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
        ],
        None,
    );
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    // The Docker HEALTHCHECK: the same variables as the server, nothing else.
    let health = || {
        crate::service()
            .arg("healthcheck")
            .env("AUTH_SERVICE_LISTEN", format!("0.0.0.0:{}", addr.port()))
            .env("AUTH_SERVICE_TLS_CERT", cert)
            .env("AUTH_SERVICE_TLS_KEY", key)
            .env("AUTH_SERVICE_TLS_CLIENT_CA", ca)
            .output()
            .unwrap()
    };
    let mut healthy = health();
    for _ in 0..50 {
        if healthy.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        healthy = health();
    }
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&healthy.stdout).trim(), "SERVING");

    // A client certificate is required: the probes present one.
    let client = pki
        .client("probe", Some("spiffe://test/probe"), None)
        .unwrap();
    assert_eq!(served_serial_mtls(addr, &pki.ca, &client).await, 1);
    // A connection made before the reload, answered (a gRPC answer, not a transport
    // error) before and after it.
    let mut established = AuthServiceClient::new(
        channel_to(addr.port(), &pki.ca, Some(&client))
            .await
            .unwrap(),
    );
    let answered =
        |r: Result<_, tonic::Status>| matches!(r, Err(s) if s.code() == Code::Unauthenticated);
    assert!(answered(validate(&mut established, "pat_x").await));
    let second = pki.server("server", 2, &[]).unwrap();
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    process::hang_up(child.id()).unwrap();
    let started = std::time::Instant::now();
    while served_serial_mtls(addr, &pki.ca, &client).await != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered(validate(&mut established, "pat_x").await));
    // A replacement key that does not go with the certificate: refused, named, kept.
    let third = pki.server("server", 3, &[]).unwrap();
    std::fs::copy(&third.key, &live.key).unwrap();
    process::hang_up(child.id()).unwrap();
    let started = std::time::Instant::now();
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("ERROR") && l.contains(key))
    {
        lines.extend(log.try_iter());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no ERROR naming the file:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served_serial_mtls(addr, &pki.ca, &client).await, 2);
    let _ = child.kill();
    let _ = child.wait();
}

/// The serial of the certificate served to a new mTLS connection presenting `client`.
async fn served_serial_mtls(addr: std::net::SocketAddr, ca: &Path, client: &Pair) -> u64 {
    auth_test_support::certs::served_serial_as(addr, ca, Some(client))
        .await
        .unwrap()
}
