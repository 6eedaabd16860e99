//! `--max-connection-age`: the service sends every connection a GOAWAY after its age.
//! Calls that tonic's channel had queued for the closing connection are cancelled
//! before they were sent; the client sends them again, so no call fails. The
//! invalidation stream is moved make-before-break (the service says `reconnect`), so
//! the cache is never flushed for it.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use auth_client::ClientOptions;
use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{
    cluster,
    fixtures::token_expiring_in,
    http::metric,
    server::{self, TestServer},
};

use crate::{client_of, client_with, warm};

const WATCHES: &str = r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="auth.v1.AuthService",grpc_method="WatchTokenInvalidations"}"#;

async fn aging_server(age: Duration) -> TestServer {
    let config = cluster::fresh_database().await.unwrap();
    let db = Db::new(config, 8, Duration::from_secs(5)).unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    settings.transport.max_connection_age = Some(age);
    settings.transport.max_connection_age_grace = Duration::from_secs(5);
    TestServer::start(db, settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_connection_ages_never_fail() {
    let server = aging_server(Duration::from_millis(500)).await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;
    // Every call goes to the service: no cache.
    let client = client_with(
        &server,
        ClientOptions {
            cache: None,
            ..ClientOptions::default()
        },
    );
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (client, token, stop) = (client.clone(), token.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client.validate(&token).await {
                        Ok(Ok(_)) => ok += 1,
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "{ok} calls across about 6 connection ages, {} failed",
        failed.len()
    );
    assert!(ok > 100);
    assert!(failed.is_empty(), "{failed:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_moves_before_its_connection_closes_and_the_cache_stays() {
    let server = aging_server(Duration::from_secs(1)).await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;
    let client = client_of(&server);
    warm(&client, &token).await;
    let before = client.cache_state().unwrap();
    let watches = || async { metric(&server.http_get("/metrics").await.unwrap().1, WATCHES) };
    let opened = watches().await;
    // Until the stream has moved three times.
    let started = std::time::Instant::now();
    while watches().await < opened + 3.0 {
        assert!(started.elapsed() < Duration::from_secs(15), "never moved");
        assert!(client.validate(&token).await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = client.cache_state().unwrap();
    eprintln!("moved 3 times in {:?}: {after:?}", started.elapsed());
    assert_eq!(after.flushes, before.flushes, "no move flushed the cache");
    assert!(after.entries >= 1 && after.hits > before.hits);
    server.shutdown().await.unwrap();
}
