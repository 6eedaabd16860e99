//! `--db-max-connections`: under a mixed storm of cold validations, renewals,
//! revocations and notify scans, PostgreSQL never sees more sessions from one replica
//! than its budget, counted by the replica's `application_name`.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use auth_api::v1::{RenewCurrentTokenRequest, RevokeCurrentTokenRequest};
use auth_service::{db::Db, notify::NotifySettings, renewal::RenewalPolicy, token};
use auth_test_support::{
    cluster,
    fixtures::token_expiring_in,
    grpc::*,
    http::metric,
    server::{self, TestServer},
    webhook::Receiver,
};

const REPLICA: &str = "budget-replica";
const BUDGET: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_opens_more_sessions_than_its_budget() {
    let mut config = cluster::fresh_database().await.unwrap();
    let fixtures_db = Db::new(config.clone(), 4, Duration::from_secs(5)).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..40 {
        // Inside the renewal window and the notice threshold: every renewal writes,
        // every scan has work.
        tokens.push(token_expiring_in(&fixtures_db, 2.0 * 86400.0).await.1);
    }
    let receiver = Receiver::start(&[]).await.unwrap();
    config.application_name(REPLICA);
    let mut settings = server::settings(RenewalPolicy::default());
    settings.db_max_connections = BUDGET;
    settings.db_max_waiting = 10_000;
    settings.db_max_per_token = 10_000;
    settings.notify = Some(NotifySettings::new(
        receiver.url().parse().unwrap(),
        vec![Duration::from_secs(3 * 86400)],
        Duration::from_millis(20),
    ));
    let db = Db::new(
        config.clone(),
        settings.pooled_connections(),
        Duration::from_secs(10),
    )
    .unwrap();
    let server = TestServer::start(db, settings).await.unwrap();

    // Count the replica's sessions from outside, as an operator would.
    let (admin, _task) = cluster::connect(&cluster::fresh_database().await.unwrap())
        .await
        .unwrap();
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (most, done) = (most.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        &[&REPLICA],
                    )
                    .await
                    .unwrap()
                    .get(0);
                most.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let client = server.client().await.unwrap();
    let mut calls = Vec::new();
    for round in 0..3 {
        // Cold: tokens no cache has seen, each a lookup.
        for _ in 0..150 {
            let mut c = client.clone();
            let unknown = token::generate(&Default::default())
                .unwrap()
                .expose()
                .to_owned();
            calls.push(tokio::spawn(async move {
                let _ = validate(&mut c, &unknown).await;
            }));
        }
        for (i, t) in tokens.iter().enumerate().skip(round * 10).take(10) {
            for _ in 0..10 {
                let (mut c, t) = (client.clone(), t.clone());
                calls.push(tokio::spawn(async move {
                    let _ = c
                        .renew_current_token(authed(RenewCurrentTokenRequest {}, &t))
                        .await;
                }));
            }
            if i % 2 == 0 {
                let (mut c, t) = (client.clone(), t.clone());
                calls.push(tokio::spawn(async move {
                    let _ = c
                        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &t))
                        .await;
                }));
            }
        }
    }
    for c in calls {
        c.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let most = most.load(Ordering::Relaxed);
    let (_, text) = server.http_get("/metrics").await.unwrap();
    eprintln!(
        "most sessions seen from the replica: {most} (budget {BUDGET}); notices sent: {}",
        receiver.received().len()
    );
    assert!(
        most <= BUDGET as i64,
        "{most} sessions, over the budget of {BUDGET}"
    );
    assert!(
        most >= 5,
        "the storm used the pools ({most} sessions at most)"
    );
    assert_eq!(metric(&text, "auth_db_max_connections"), BUDGET as f64);
    assert!(metric(&text, "auth_db_connections") <= BUDGET as f64);
    assert!(
        !receiver.received().is_empty(),
        "the notify scan ran during the storm"
    );
    server.shutdown().await.unwrap();
}
