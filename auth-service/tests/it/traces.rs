//! Traces from the real binary (`serve --otlp-endpoint`) to a real OTLP receiver: a
//! `traceparent` sent with ValidateToken, in a Check's checked request, and on
//! forward-auth makes a child server span of that trace, named and shaped as
//! OpenTelemetry's conventions say, with the cache and the database statement inside;
//! the JSON log lines of a span carry its ids; no attribute holds a token; and a
//! collector that is down changes nothing for the callers.
use std::{process::Child, sync::mpsc::Receiver, time::Duration};

use auth_api::v1::{RenewCurrentTokenRequest, ValidateTokenRequest};
use auth_service::db::Db;
use auth_test_support::{
    cluster, fixtures,
    grpc::{authed, envoy_check},
    http::{self, metric},
    otlp::{Collector, Span},
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use crate::cli::{stderr_lines, terminate};

const LONG: Duration = Duration::from_secs(20);

/// `serve` on a fresh database, exporting traces to `endpoint`: the child, its gRPC and
/// HTTP addresses, its database, and its (JSON) log lines.
async fn serve(endpoint: &str) -> (Child, String, String, Db, Receiver<String>) {
    let config = cluster::fresh_database().await.unwrap();
    let mut child = crate::service()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--database-url", &cluster::conninfo(&config)])
        .args(["--otlp-endpoint", endpoint, "--log-format", "json"])
        .env("AUTH_SERVICE_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let (mut grpc, mut http) = (None, None);
    while grpc.is_none() {
        let line = lines.recv_timeout(Duration::from_secs(60)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = v["http"].as_str() {
            http = Some(a.to_owned());
        }
        if v["message"] == "auth-service listening" {
            grpc = v["addr"].as_str().map(str::to_owned);
        }
    }
    let db = Db::new(config, 4, Duration::from_secs(5)).unwrap();
    (child, grpc.unwrap(), http.unwrap(), db, lines)
}

fn traceparent(trace: &str, parent: &str) -> String {
    format!("00-{trace}-{parent}-01")
}

fn check_server_span(span: &Span, service: &str, method: &str, parent: &str) {
    assert_eq!(span.name, format!("{service}/{method}"));
    assert_eq!(span.parent_span_id, parent, "a child of the caller's span");
    assert_eq!(span.attribute("rpc.system"), Some("grpc"));
    assert_eq!(span.attribute("rpc.service"), Some(service));
    assert_eq!(span.attribute("rpc.method"), Some(method));
    assert_eq!(span.attribute("rpc.grpc.status_code"), Some("0"));
    assert_eq!(span.service, "auth-service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_joins_validate_check_and_forward_auth_to_the_callers_trace() {
    let collector = Collector::start().await.unwrap();
    let (mut child, grpc, http_addr, db, lines) = serve(&collector.endpoint()).await;
    let (_, token) = fixtures::token_expiring_in(&db, 86400.0).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // ValidateToken, the trace context in gRPC metadata.
    let (t1, p1) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut client = auth_api::v1::auth_service_client::AuthServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(ValidateTokenRequest {
        token: token.clone(),
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent(t1, p1).parse().unwrap());
    client.validate_token(request).await.unwrap();
    let server = collector
        .wait_for(LONG, |s| {
            s.trace_id == t1 && s.name.ends_with("ValidateToken")
        })
        .await
        .expect("the ValidateToken span");
    check_server_span(&server, "auth.v1.AuthService", "ValidateToken", p1);
    // Inside it: the cache's decision (never looked up before: a miss, or a bypass while
    // the new server's listener has not heard its first heartbeat) and the lookup.
    let cache = collector
        .wait_for(LONG, |s| s.trace_id == t1 && s.name == "cache lookup")
        .await
        .expect("the cache span");
    assert!(
        matches!(
            cache.attribute("auth.cache.result"),
            Some("miss" | "bypass")
        ),
        "{cache:?}"
    );
    let statement = collector
        .wait_for(LONG, |s| {
            s.trace_id == t1 && s.attribute("db.system").is_some()
        })
        .await
        .expect("the database span");
    assert_eq!(statement.attribute("db.system"), Some("postgresql"));
    assert!(statement.name.starts_with("lookup"), "{statement:?}");

    // ext_authz Check, the trace context in the checked request's headers.
    let (t2, p2) = ("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    let bearer = format!("Bearer {token}");
    let tp2 = traceparent(t2, p2);
    let check = envoy_check(
        &[
            (":path", "/"),
            ("authorization", &bearer),
            ("traceparent", &tp2),
        ],
        None,
    );
    AuthorizationClient::new(channel.clone())
        .check(check)
        .await
        .unwrap();
    let server = collector
        .wait_for(LONG, |s| s.trace_id == t2 && s.name.ends_with("/Check"))
        .await
        .expect("the Check span");
    check_server_span(&server, "envoy.service.auth.v3.Authorization", "Check", p2);

    // forward-auth, the trace context in the HTTP headers.
    let (t3, p3) = ("6bf92f3577b34da6a3ce929d0e0e4738", "20f067aa0ba902b9");
    let tp3 = traceparent(t3, p3);
    let (status, _, _) = http::request(
        http_addr.parse().unwrap(),
        "GET",
        "/authz/forward-auth",
        &[("authorization", &bearer), ("traceparent", &tp3)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let server = collector
        .wait_for(LONG, |s| s.trace_id == t3 && s.name.starts_with("GET "))
        .await
        .expect("the forward-auth span");
    assert_eq!(server.name, "GET /authz/forward-auth");
    assert_eq!(server.parent_span_id, p3);
    assert_eq!(server.attribute("http.request.method"), Some("GET"));
    assert_eq!(server.attribute("http.route"), Some("/authz/forward-auth"));
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));

    // A renewal in a trace: its log line names the trace and the span.
    let (t4, p4) = ("7bf92f3577b34da6a3ce929d0e0e4739", "30f067aa0ba902ba");
    let (_, renewable) = fixtures::token_expiring_in(&db, 86400.0).await;
    let mut request = authed(RenewCurrentTokenRequest {}, &renewable);
    request
        .metadata_mut()
        .insert("traceparent", traceparent(t4, p4).parse().unwrap());
    client.renew_current_token(request).await.unwrap();
    let renewed = collector
        .wait_for(LONG, |s| {
            s.trace_id == t4 && s.name.ends_with("RenewCurrentToken")
        })
        .await
        .expect("the renewal span");
    let logged = loop {
        let line = lines.recv_timeout(LONG).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "token renewed" {
            break v;
        }
    };
    assert_eq!(logged["trace_id"], t4, "{logged}");
    assert!(logged["span_id"].as_str().is_some_and(|id| id.len() == 16));

    // No span attribute carries a token.
    for secret in [&token, &renewable] {
        let body = &secret[secret.len() - 20..];
        for span in collector.spans() {
            for (key, value) in &span.attributes {
                assert!(
                    !value.contains(body),
                    "{key} of {} holds a token",
                    span.name
                );
            }
        }
    }
    let _ = renewed;
    assert!(terminate(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_changes_nothing_for_callers() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (mut child, grpc, http_addr, db, _lines) = serve(&endpoint).await;
    let (_, token) = fixtures::token_expiring_in(&db, 86400.0).await;
    let mut client =
        auth_api::v1::auth_service_client::AuthServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
    for i in 0..300 {
        let mut request = tonic::Request::new(ValidateTokenRequest {
            token: token.clone(),
        });
        let tp = traceparent(&format!("{i:032x}"), "00f067aa0ba902b7");
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().unwrap());
        client.validate_token(request).await.unwrap();
    }
    // The spans went nowhere, and are counted.
    let mut dropped = 0.0;
    for _ in 0..200 {
        let (_, text) = http::get(http_addr.parse().unwrap(), "/metrics")
            .await
            .unwrap();
        dropped = metric(&text, "auth_otel_spans_dropped_total");
        if dropped > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped > 0.0, "no dropped spans counted");
    assert!(
        terminate(&mut child).success(),
        "a down collector does not hold up shutdown"
    );
}
