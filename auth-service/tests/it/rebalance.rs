//! `--max-connection-age`: a client with one long-lived channel, behind a front that
//! sends new connections to a new replica (as a Kubernetes Service does when the
//! autoscaler adds a pod), moves there when the old replica's GOAWAY comes, and no call
//! fails on the way.
//!
//! The client retries a call that never left it, as grpc-go, grpc-java and Envoy do
//! (gRPC's "transparent retry"): tonic's channel cancels the requests it had queued for
//! a connection that closed after a GOAWAY, with `hyper::Error(Canceled, "connection
//! closed")`, before any byte of them was sent. Every other failure fails the test.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{
    cluster,
    fixtures::token_expiring_in,
    grpc::*,
    http::metric,
    proxy::Switch,
    server::{self, TestServer},
};

/// Whether a call failed before it was sent: hyper cancelled it in the client's queue.
fn never_sent(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        source = error.source();
    }
    false
}

const VALIDATE_OK: &str = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="ValidateToken",grpc_code="OK"}"#;

async fn validated(server: &TestServer) -> f64 {
    metric(&server.http_get("/metrics").await.unwrap().1, VALIDATE_OK)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_channel_moves_to_a_new_replica_without_a_failed_call() {
    let config = cluster::fresh_database().await.unwrap();
    let start = || async {
        let db = Db::new(config.clone(), 8, Duration::from_secs(5)).unwrap();
        let mut settings = server::settings(RenewalPolicy::default());
        settings.transport.max_connection_age = Some(Duration::from_secs(1));
        settings.transport.max_connection_age_grace = Duration::from_secs(5);
        TestServer::start(db, settings).await.unwrap()
    };
    let (old, new) = (start().await, start().await);
    let (_, token) = token_expiring_in(&old.db, 86400.0).await;
    let front = Switch::start(old.addr).await.unwrap();

    // One channel, as a service keeps for its whole life, calling without pause.
    let mut client = auth_api::v1::auth_service_client::AuthServiceClient::connect(format!(
        "http://{}",
        front.addr
    ))
    .await
    .unwrap();
    validate(&mut client, &token).await.unwrap();
    // The autoscaler added a replica: new connections go there from now on.
    front.send_new_connections_to(new.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (mut client, token, stop) = (client.clone(), token.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let (mut ok, mut retried, mut failed) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    match validate(&mut client, &token).await {
                        Ok(_) => ok += 1,
                        Err(status) if never_sent(&status) && attempts < 3 => {
                            retried += 1;
                            continue;
                        }
                        Err(status) => failed.push(status),
                    }
                    break;
                }
            }
            (ok, retried, failed)
        }));
    }
    // Until the new replica answers this channel's calls (its GOAWAY comes at 0.9-1.1 s).
    let started = Instant::now();
    while validated(&new).await < 50.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the channel never moved to the new replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_after = started.elapsed();
    let old_before = validated(&old).await;
    // Fifty more calls answered by the new replica: the chance for the old one to get
    // any, taken (not a fixed sleep, which passes as well when no call was made).
    let new_before = validated(&new).await;
    let started = Instant::now();
    while validated(&new).await < new_before + 50.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the channel stopped calling"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut retried, mut failed) = (0, 0, Vec::new());
    for c in callers {
        let (o, r, f) = c.await.unwrap();
        ok += o;
        retried += r;
        failed.extend(f);
    }
    eprintln!(
        "moved after {moved_after:?}; {ok} calls answered, {retried} retried because they \
         were never sent, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(
        validated(&old).await,
        old_before,
        "the old replica answers this channel no more"
    );
    old.shutdown().await.unwrap();
    new.shutdown().await.unwrap();
}
