//! Concurrent renewals of one token.
//!
//! - In the database: 60 renewal statements racing on one row (three pools' worth,
//!   queued behind its lock) extend it exactly once: the compare-and-set.
//! - In the service: 1,000 concurrent renewals on one replica, and 300 over three, are
//!   all answered OK from one statement per replica, exactly one says `renewed`, every
//!   answer carries the same expiry, and the audit trail shows one renewal. A renew
//!   storm is answered, not shed.
//! - The waiters are bounded: past the bound, calls are shed at once with RetryInfo,
//!   and counted.
use std::time::Duration;

use auth_api::v1::RenewCurrentTokenResponse;
use auth_service::{db::Db, renewal::RenewalPolicy, service::CoalesceLimits};
use auth_test_support::{
    cluster,
    fixtures::{self, gap, token_expiring_in},
    grpc::*,
    http::metric,
    server::{self, TestServer},
};
use tonic::Code;
use tonic_types::StatusExt;

const RENEW_STATEMENTS: &str = r#"auth_db_statement_duration_seconds_count{statement="renew"}"#;

/// How many renewal rows the audit trail holds for `id`.
async fn renew_events(db: &Db, id: uuid::Uuid) -> usize {
    fixtures::events(db, id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.0 == "renew")
        .count()
}

/// Waits until `n` sessions wait for a row lock.
async fn until_lock_waiters(probe: &Db, n: i64) -> i64 {
    for _ in 0..300 {
        let waiting = fixtures::lock_waiters(probe).await.unwrap();
        if waiting >= n {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fixtures::lock_waiters(probe).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_renewal_statements_extend_exactly_once() {
    let config = cluster::fresh_database().await.unwrap();
    let db = Db::new(config.clone(), 80, Duration::from_secs(10)).unwrap();
    let (id, token) = token_expiring_in(&db, 2.0 * 86400.0).await;
    let digest = auth_service::token::parse(&Default::default(), &token).unwrap();
    let (before, _) = fixtures::stored_expiry(&db, id).await.unwrap();
    // Hold the row lock while the statements arrive, so that all of them read the old
    // expiry and then queue on the lock: a real race every time.
    let lock = fixtures::RowLock::take(&config, id).await.unwrap();
    let racing = auth_service::db::split(80).0;
    let calls: Vec<_> = (0..racing)
        .map(|_| {
            let (db, digest) = (db.clone(), digest.clone());
            tokio::spawn(async move { db.renew(&digest, &RenewalPolicy::default(), "test").await })
        })
        .collect();
    let probe = Db::new(config.clone(), 2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        until_lock_waiters(&probe, racing as i64).await,
        racing as i64,
        "every statement is racing"
    );
    lock.release().await.unwrap();
    let mut renewals = Vec::new();
    for call in calls {
        renewals.push(call.await.unwrap().unwrap());
    }
    assert_eq!(renewals.iter().filter(|r| r.renewed).count(), 1);
    let first = renewals[0].expires_at;
    assert!(renewals.iter().all(|r| r.expires_at == first));
    let (stored, db_now) = fixtures::stored_expiry(&db, id).await.unwrap();
    assert_ne!(stored, before);
    assert_eq!(stored, first, "the stored row holds that value");
    assert!(gap(stored.unwrap(), db_now + 90 * DAY) < 60.0);
    assert_eq!(
        renew_events(&db, id).await,
        1,
        "the audit trail shows one renewal"
    );
}

/// `replicas` servers on one database, a token inside its renewal window, and `calls`
/// concurrent renewals of it spread over them, released together while the row is
/// locked. Returns the answers, the servers and the token's id.
async fn storm(
    replicas: usize,
    calls: usize,
    limits: CoalesceLimits,
) -> (
    Vec<Result<RenewCurrentTokenResponse, tonic::Status>>,
    Vec<TestServer>,
    uuid::Uuid,
) {
    let config = cluster::fresh_database().await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..replicas {
        let db = Db::new(config.clone(), 8, Duration::from_secs(10)).unwrap();
        let mut settings = server::settings(RenewalPolicy::default());
        settings.coalesce = limits;
        servers.push(TestServer::start(db, settings).await.unwrap());
    }
    let (id, token) = token_expiring_in(&servers[0].db, 2.0 * 86400.0).await;
    // Enough connections that every call is in flight at once (a connection carries
    // at most 100 streams).
    let mut clients = Vec::new();
    for _ in 0..calls.div_ceil(100 * replicas) {
        for s in &servers {
            clients.push(s.client().await.unwrap());
        }
    }
    let lock = fixtures::RowLock::take(&config, id).await.unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(calls));
    let handles: Vec<_> = (0..calls)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let (token, barrier) = (token.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                renew(&mut client, &token).await
            })
        })
        .collect();
    // One statement per replica reaches the row; the rest wait in the service.
    let probe = Db::new(config.clone(), 2, Duration::from_secs(5)).unwrap();
    let waiting = until_lock_waiters(&probe, replicas as i64).await;
    // Every call has reached a server (counted as started) and so has had its chance
    // to send a statement of its own: only then is "no more come" a finding.
    let started = std::time::Instant::now();
    loop {
        let mut reached = 0.0;
        for s in &servers {
            let (_, text) = s.http_get("/metrics").await.unwrap();
            reached += auth_test_support::http::metric(
                &text,
                r#"grpc_server_started_total{grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="RenewCurrentToken"}"#,
            );
        }
        if reached >= calls as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{reached} of {calls} calls reached a server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fixtures::lock_waiters(&probe).await.unwrap(),
        waiting,
        "no more statements come"
    );
    lock.release().await.unwrap();
    let mut answers = Vec::new();
    for h in handles {
        answers.push(h.await.unwrap());
    }
    (answers, servers, id)
}

async fn answered_once(replicas: usize, calls: usize) {
    let (answers, servers, id) = storm(replicas, calls, CoalesceLimits::default()).await;
    let answers: Vec<RenewCurrentTokenResponse> = answers
        .into_iter()
        .map(|a| a.expect("every call is answered OK"))
        .collect();
    assert_eq!(
        answers.iter().filter(|a| a.renewed).count(),
        1,
        "exactly one says renewed"
    );
    let first = answers[0].expires_at;
    assert!(
        answers
            .iter()
            .all(|a| a.expires_at == first && a.next_renewal_at == answers[0].next_renewal_at),
        "every answer carries the same expiry and next renewal"
    );
    let mut statements = 0.0;
    for s in &servers {
        statements += metric(&s.http_get("/metrics").await.unwrap().1, RENEW_STATEMENTS);
    }
    assert_eq!(statements, replicas as f64, "one statement per replica");
    assert_eq!(renew_events(&servers[0].db, id).await, 1, "one audit row");
    let (stored, _) = fixtures::stored_expiry(&servers[0].db, id).await.unwrap();
    assert_eq!(stored.map(auth_api::time::to_timestamp), first);
    for s in servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_renewals_on_one_replica_are_answered_by_one_statement() {
    answered_once(1, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_renewals_over_three_replicas_extend_exactly_once() {
    answered_once(3, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_past_the_bound_are_shed_with_retry_info() {
    let limits = CoalesceLimits {
        per_token: 5,
        total: 100,
    };
    let (answers, servers, _) = storm(1, 40, limits).await;
    let (mut ok, mut shed) = (0, 0);
    for a in &answers {
        match a {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                let retry = status.get_error_details().retry_info().cloned();
                assert!(retry.and_then(|r| r.retry_delay).is_some(), "RetryInfo");
                shed += 1;
            }
        }
    }
    assert_eq!(ok, 6, "the leader and five waiters");
    assert_eq!(shed, 34);
    let (_, text) = servers[0].http_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&text, r#"auth_db_shed_total{cause="waiters"}"#),
        34.0
    );
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
