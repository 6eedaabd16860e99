//! HTTP forward-auth (`/authz/forward-auth` on the HTTP side port), asked directly and
//! through a real nginx running the example in `deploy/mesh/nginx-auth-request.conf`
//! in front of an upstream that echoes the headers it receives.
use std::{net::SocketAddr, time::Duration};

use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{
    cluster, fixtures,
    http::{metric, request},
    nginx::{self, Nginx},
    server::TestServer,
};

const DAY: Duration = Duration::from_secs(86400);
const PATH: &str = "/authz/forward-auth";

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A token with the given scopes; returns (id, raw token).
async fn token_with_scopes(db: &Db, user: &str, scopes: &[&str]) -> (uuid::Uuid, String) {
    let raw = auth_service::token::generate(&Default::default()).unwrap();
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let created = db
        .create_token(
            user,
            "laptop",
            &auth_service::token::digest_of(&raw, &Default::default()),
            &scopes,
            Some(30 * DAY),
            "test",
        )
        .await
        .unwrap();
    (created.id, raw.expose().to_string())
}

#[tokio::test]
async fn forward_auth_answers_200_401_and_403_with_the_headers_proxies_pass_on() {
    let server = TestServer::fresh(RenewalPolicy::default()).await.unwrap();
    let http = server.http_addr.unwrap();
    let (id, token) = token_with_scopes(&server.db, "alice", &["billing:read", "repo"]).await;
    let bearer = format!("Bearer {token}");

    for method in ["GET", "POST", "HEAD", "DELETE"] {
        let (status, headers, _) = request(http, method, PATH, &[("Authorization", &bearer)])
            .await
            .unwrap();
        assert_eq!(status, 200, "{method}");
        assert_eq!(header(&headers, "x-auth-user-id"), Some("alice"));
        assert_eq!(
            header(&headers, "x-auth-token-id"),
            Some(id.to_string().as_str())
        );
        assert_eq!(header(&headers, "x-auth-token-name"), Some("laptop"));
        assert_eq!(header(&headers, "x-auth-scopes"), Some("billing:read,repo"));
        let expires = header(&headers, "x-auth-expires-at").unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(expires).is_ok(),
            "{expires}"
        );
    }
    // Scopes from the header and from ?scope=, all required.
    let (status, _, _) = request(
        http,
        "GET",
        &format!("{PATH}?scope=repo"),
        &[
            ("Authorization", &bearer),
            ("X-Auth-Required-Scope", "billing:read"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    for (path, required) in [
        (format!("{PATH}?scope=billing%3Awrite"), ""),
        (PATH.to_string(), "repo billing:write"),
        (format!("{PATH}?scope=repo&scope=billing:write"), ""),
    ] {
        let mut headers = vec![("Authorization", bearer.as_str())];
        if !required.is_empty() {
            headers.push(("X-Auth-Required-Scope", required));
        }
        let (status, headers, body) = request(http, "GET", &path, &headers).await.unwrap();
        assert_eq!(status, 403, "{path} {required}");
        let www = header(&headers, "www-authenticate").unwrap();
        assert!(
            www.contains(r#"error="insufficient_scope""#)
                && www.ends_with(r#"scope="billing:write""#),
            "{www}"
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["reason"], "INSUFFICIENT_SCOPE");
    }

    // Credential problems: 401, the RFC 6750 challenge, the reason in the body.
    let (revoked_id, revoked) = fixtures::create_token(&server.db, "bob", Some(DAY))
        .await
        .unwrap();
    server.db.revoke_by_id(revoked_id, "test").await.unwrap();
    let revoked = format!("Bearer {revoked}");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[], "MISSING_CREDENTIALS"),
        (&[("Authorization", "Bearer pat_nope")], "TOKEN_MALFORMED"),
        (&[("Authorization", &revoked)], "TOKEN_REVOKED"),
        (
            &[("Authorization", &bearer), ("Authorization", &revoked)],
            "TOKEN_MALFORMED",
        ),
    ];
    for (headers, reason) in cases {
        let (status, got, body) = request(http, "GET", PATH, headers).await.unwrap();
        assert_eq!(status, 401, "{reason}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["reason"], reason);
        let www = header(&got, "www-authenticate").unwrap();
        if reason == "MISSING_CREDENTIALS" {
            assert_eq!(www, r#"Bearer realm="auth""#);
        } else {
            assert!(www.contains(r#"error="invalid_token""#), "{www}");
        }
        assert!(header(&got, "x-auth-user-id").is_none());
    }

    // Each answer is counted by its decision.
    let (_, metrics) = server.http_get("/metrics").await.unwrap();
    for (decision, n) in [("allow", 5.0), ("forbidden", 3.0), ("unauthenticated", 4.0)] {
        let series = format!(
            r#"auth_authz_decisions_total{{adapter="forward_auth",decision="{decision}"}}"#
        );
        assert_eq!(metric(&metrics, &series), n, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_is_503_with_retry_after_when_the_database_is_down() {
    let (server, cluster) = TestServer::on_own_cluster("forward-outage").await.unwrap();
    let db = server.db.clone();
    let (_, token) = fixtures::create_token(&db, "carol", Some(DAY))
        .await
        .unwrap();
    let _cluster = cluster::stop(cluster).await.unwrap();
    let (status, headers, body) = request(
        server.http_addr.unwrap(),
        "GET",
        PATH,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    let retry: u64 = header(&headers, "retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    assert!(header(&headers, "www-authenticate").is_none());
}

/// The nginx example from deploy/, moved to test ports: nginx on `listen`, the
/// service's HTTP port at `auth`, the echo upstream at `upstream`.
fn nginx_example(listen: u16, auth: SocketAddr, upstream: SocketAddr) -> String {
    let example = include_str!("../../../deploy/mesh/nginx-auth-request.conf");
    let mut text = example.to_owned();
    for (from, to) in [
        ("listen 8443;", format!("listen 127.0.0.1:{listen};")),
        ("127.0.0.1:8080", auth.to_string()),
        ("127.0.0.1:9000", upstream.to_string()),
    ] {
        assert!(
            text.contains(from),
            "the nginx example no longer has {from}"
        );
        text = text.replace(from, &to);
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_the_real_service() {
    let (server, cluster) = TestServer::on_own_cluster("nginx").await.unwrap();
    let db = server.db.clone();
    let upstream = nginx::echo().await.unwrap();
    let port = nginx::free_port().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let nginx = Nginx::start(
        "auth-request",
        &nginx_example(port, server.http_addr.unwrap(), upstream),
        addr,
    )
    .await
    .unwrap();

    let (_, reader) = token_with_scopes(&db, "alice", &["billing:read"]).await;
    let (_, other) = token_with_scopes(&db, "bob", &["repo"]).await;

    // A good token reaches the upstream with the service's identity headers, not the
    // client's forgery, and without the token.
    let (status, _, seen) = request(
        addr,
        "GET",
        "/api/orders",
        &[
            ("Authorization", &format!("Bearer {reader}")),
            ("X-Auth-User-Id", "root"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{}", nginx.error_log());
    assert!(seen.contains("x-auth-user-id: alice\n"), "{seen}");
    assert!(!seen.contains("root"), "{seen}");
    assert!(seen.contains("x-auth-scopes: billing:read\n"), "{seen}");
    assert!(!seen.contains(&reader), "the token went upstream: {seen}");

    // No token and a bad one: 401, with the service's challenge.
    for headers in [vec![], vec![("Authorization", "Bearer pat_nope")]] {
        let (status, got, _) = request(addr, "GET", "/api/orders", &headers).await.unwrap();
        assert_eq!(status, 401, "{headers:?}");
        let challenges: Vec<_> = got
            .iter()
            .filter(|(k, _)| k == "www-authenticate")
            .collect();
        assert_eq!(challenges.len(), 1, "{got:?}");
    }
    // /billing/ requires billing:read: a token without it gets 403 insufficient_scope.
    let (status, got, _) = request(
        addr,
        "GET",
        "/billing/invoices",
        &[("Authorization", &format!("Bearer {other}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    let www = header(&got, "www-authenticate").unwrap_or_default();
    assert!(
        www.contains("insufficient_scope") && www.contains("billing:read"),
        "{got:?}"
    );
    let (status, _, seen) = request(
        addr,
        "GET",
        "/billing/invoices",
        &[("Authorization", &format!("Bearer {reader}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(seen.contains("x-auth-user-id: alice\n"), "{seen}");

    // The database stopped: never a 401 (a client would discard a good token).
    let (_, unseen) = token_with_scopes(&db, "carol", &[]).await;
    let _cluster = cluster::stop(cluster).await.unwrap();
    let (status, got, _) = request(
        addr,
        "GET",
        "/api/orders",
        &[("Authorization", &format!("Bearer {unseen}"))],
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "{got:?}\n{}", nginx.error_log());
    assert!(header(&got, "retry-after").is_some(), "{got:?}");
}
