//! AuthLayer on an axum service, in front of the real auth-service: a good token passes
//! with its Identity, each bad token gets 401 with its reason and the RFC 6750
//! challenge, a missing scope 403 `insufficient_scope`, and a database outage 503 for a
//! token that is not cached, never 401.
use std::{net::SocketAddr, time::Duration};

use auth_client::{AuthClient, AuthLayer, Identity};
use auth_test_support::{
    cluster,
    fixtures::{set_revoked_ago, token_expiring_in},
    http::request,
    server::TestServer,
};
use axum::{Extension, Router, routing::get};

use crate::{client_of, serving, token_with, warm};

async fn whoami(Extension(id): Extension<Identity>) -> String {
    format!("{} {} {}", id.user_id, id.name, id.scopes.join(","))
}

/// `/whoami` for any valid token, `/billing` for one with `billing:write`; serving on a
/// port of its own.
pub async fn protected_app(client: AuthClient) -> SocketAddr {
    let auth = AuthLayer::new(client);
    let app = Router::new()
        .route("/whoami", get(whoami).layer(auth.clone()))
        .route(
            "/billing",
            get(whoami).layer(auth.require_scope("billing:write")),
        )
        .route("/open", get(|| async { "open" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// (status, the `www-authenticate` header, the body's `reason`).
async fn get_with(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    let header;
    let headers: Vec<(&str, &str)> = match token {
        Some(token) => {
            header = format!("Bearer {token}");
            vec![("authorization", header.as_str())]
        }
        None => vec![],
    };
    let (status, headers, body) = request(addr, "GET", path, &headers).await.unwrap();
    let challenge = headers
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or(body);
    (status, challenge, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_pass_with_their_identity_and_bad_ones_get_their_reason() {
    let server = TestServer::start(
        cluster::test_db().await.unwrap(),
        auth_test_support::server::settings(Default::default()),
    )
    .await
    .unwrap();
    let client = client_of(&server);
    let app = protected_app(client.clone()).await;
    let reader = token_with(&server.db, "alice", &["read"]).await;
    let biller = token_with(&server.db, "bob", &["read", "billing:write"]).await;

    let (status, _, body) = get_with(app, "/whoami", Some(&reader)).await;
    assert_eq!((status, body.as_str()), (200, "alice laptop read"));
    let (status, _, body) = get_with(app, "/billing", Some(&biller)).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "bob laptop read,billing:write")
    );
    // Answered from memory once warm, the same.
    warm(&client, &reader).await;
    let (status, _, body) = get_with(app, "/whoami", Some(&reader)).await;
    assert_eq!((status, body.as_str()), (200, "alice laptop read"));

    let (status, challenge, reason) = get_with(app, "/billing", Some(&reader)).await;
    assert_eq!((status, reason.as_str()), (403, "INSUFFICIENT_SCOPE"));
    assert!(
        challenge.contains(r#"error="insufficient_scope""#)
            && challenge.ends_with(r#"scope="billing:write""#),
        "{challenge}"
    );

    let (status, challenge, reason) = get_with(app, "/whoami", None).await;
    assert_eq!((status, reason.as_str()), (401, "MISSING_CREDENTIALS"));
    assert_eq!(challenge, r#"Bearer realm="auth""#);

    let unknown = auth_service::token::generate(&Default::default()).unwrap();
    let (_, expired) = token_expiring_in(&server.db, -60.0).await;
    let (revoked_id, revoked) = token_expiring_in(&server.db, 86400.0).await;
    set_revoked_ago(&server.db, revoked_id, 5.0).await.unwrap();
    for (token, want) in [
        ("pat_nope", "TOKEN_MALFORMED"),
        (unknown.expose(), "TOKEN_UNKNOWN"),
        (expired.as_str(), "TOKEN_EXPIRED"),
        (revoked.as_str(), "TOKEN_REVOKED"),
    ] {
        let (status, challenge, reason) = get_with(app, "/whoami", Some(token)).await;
        assert_eq!((status, reason.as_str()), (401, want));
        assert!(
            challenge.starts_with(r#"Bearer realm="auth", error="invalid_token""#),
            "{challenge}"
        );
        // A scoped route refuses the token first: 401, not 403.
        assert_eq!(get_with(app, "/billing", Some(token)).await.0, 401);
    }
    let (status, _, body) = get_with(app, "/open", None).await;
    assert_eq!((status, body.as_str()), (200, "open"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_for_an_uncached_token_never_401() {
    let (server, cluster) = TestServer::on_own_cluster("client-outage").await.unwrap();
    let client = client_of(&server);
    let app = protected_app(client.clone()).await;
    let cached = token_with(&server.db, "alice", &["read"]).await;
    let uncached = token_with(&server.db, "bob", &["read"]).await;
    warm(&client, &cached).await;
    serving(&client).await;

    let cluster = cluster::stop(cluster).await.unwrap();
    // The service's listener goes with its database: the stream stops vouching.
    crate::wait_until("the cache stops serving", Duration::from_secs(10), || {
        !client.cache_state().unwrap().serving
    })
    .await;
    let (status, _, body) = get_with(app, "/whoami", Some(&uncached)).await;
    assert_eq!(status, 503, "{body}");
    // Within the outage grace, a token proven live a moment ago still works.
    let (status, _, body) = get_with(app, "/whoami", Some(&cached)).await;
    assert_eq!((status, body.as_str()), (200, "alice laptop read"));
    assert!(client.cache_state().unwrap().grace_answers >= 1);
    drop(cluster);
    server.shutdown().await.unwrap();
}
