//! Over mTLS, a caller that is not on the service's `--validate-allow` can neither
//! validate nor watch: its `validate` is unavailable (PERMISSION_DENIED,
//! CALLER_NOT_ALLOWED), never a rejection of the token, its cache never serves, and a
//! layer in front of it answers 503. A caller on the list does all three.
use std::path::Path;

use auth_api::v1::{WatchTokenInvalidationsRequest, auth_service_client::AuthServiceClient};
use auth_client::{AuthClient, ClientOptions, TlsFiles, Transport};
use auth_service::{config::TlsSettings, renewal::RenewalPolicy};
use auth_test_support::{
    certs::{Pair, Pki},
    cluster,
    fixtures::token_expiring_in,
    server::{self, TestServer},
};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

use crate::{serving, warm};

fn mtls_client(server: &TestServer, ca: &Path, me: &Pair) -> AuthClient {
    let url = format!("https://localhost:{}", server.addr.port());
    let options = ClientOptions {
        transport: Transport {
            tls: TlsFiles {
                ca_file: Some(ca.to_path_buf()),
                client_cert: Some(me.cert.clone()),
                client_key: Some(me.key.clone()),
            },
            ..Transport::default()
        },
        ..ClientOptions::default()
    };
    AuthClient::connect_lazy(&url.parse().unwrap(), options).unwrap()
}

/// A raw tonic channel presenting `me`, to see the watch call's own answer.
async fn raw_channel(server: &TestServer, ca: &Path, me: &Pair) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .identity(Identity::from_pem(
            std::fs::read(&me.cert).unwrap(),
            std::fs::read(&me.key).unwrap(),
        ))
        .domain_name("localhost");
    Channel::from_shared(format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_off_the_allow_list_can_neither_validate_nor_watch() {
    let pki = Pki::new("client-allow").unwrap();
    let cert = pki.server("server", 1, &[]).unwrap();
    let allowed = pki
        .client("billing", Some("spiffe://test/billing"), None)
        .unwrap();
    let stranger = pki
        .client("stranger", Some("spiffe://test/stranger"), None)
        .unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    settings.transport.tls = Some(TlsSettings {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
        client_ca: Some(pki.ca.clone()),
    });
    settings.validate_allow = vec!["spiffe://test/billing".into()];
    let server = TestServer::start(cluster::test_db().await.unwrap(), settings)
        .await
        .unwrap();
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;

    let good = mtls_client(&server, &pki.ca, &allowed);
    warm(&good, &token).await;
    serving(&good).await;

    let bad = mtls_client(&server, &pki.ca, &stranger);
    let outage = bad.validate(&token).await.unwrap_err();
    assert_eq!(outage.code(), Code::PermissionDenied, "{outage}");
    assert_eq!(
        outage.reason(),
        Some(auth_api::ErrorReason::CallerNotAllowed)
    );
    let mut raw = AuthServiceClient::new(raw_channel(&server, &pki.ca, &stranger).await);
    let denied = raw
        .watch_token_invalidations(WatchTokenInvalidationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(!bad.cache_state().unwrap().serving);
    let app = crate::layer_axum::protected_app(bad.clone()).await;
    let bearer = format!("Bearer {token}");
    let (status, _, _) = auth_test_support::http::request(
        app,
        "GET",
        "/whoami",
        &[("authorization", bearer.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "the token was not judged: not a 401");
    // The allowed caller's raw watch is answered (its first message is a heartbeat).
    let mut raw = AuthServiceClient::new(raw_channel(&server, &pki.ca, &allowed).await);
    let mut stream = raw
        .watch_token_invalidations(WatchTokenInvalidationsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    server.shutdown().await.unwrap();
}
