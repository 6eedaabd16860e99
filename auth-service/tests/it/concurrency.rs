//! 500 concurrent renews of one token, spread over 3 service instances (each with
//! its own pool, like replicas) sharing one database: exactly one extends it.

use std::time::Duration;

use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{
    cluster,
    fixtures::{self, gap, token_expiring_in},
    grpc::*,
    server::{self, TestServer},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_renews_across_replicas_extend_exactly_once() {
    let config = cluster::fresh_database().await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let db = Db::new(config.clone(), 20, Duration::from_secs(10)).unwrap();
        // No shedding: the point is that every pooled connection races in the database.
        let mut settings = server::settings(RenewalPolicy::default());
        settings.db_max_per_token = 1000;
        settings.db_max_waiting = 1000;
        servers.push(TestServer::start(db, settings).await.unwrap());
    }
    let db = &servers[0].db;
    let (id, token) = token_expiring_in(db, 2.0 * 86400.0).await;
    let (before, _) = fixtures::stored_expiry(db, id).await.unwrap();

    let mut clients = Vec::new();
    for s in &servers {
        clients.push(s.client().await.unwrap());
    }
    // Hold the token's row lock while the calls arrive, so the ones that reach the
    // database (one per exclusive pooled connection) all read the old expiry and then queue on the lock:
    // a real race every time, not only when timing happens to allow it.
    let lock = fixtures::RowLock::take(&config, id).await.unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(500));
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let mut client = clients[i % 3].clone();
            let (token, barrier) = (token.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                renew(&mut client, &token).await
            })
        })
        .collect();
    let probe = Db::new(config.clone(), 2, Duration::from_secs(5)).unwrap();
    // Every exclusive pooled connection of the three replicas.
    let racing = 3 * auth_service::db::split(20).0;
    for _ in 0..300 {
        if fixtures::lock_waiters(&probe).await.unwrap() >= racing as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fixtures::lock_waiters(&probe).await.unwrap(),
        racing as i64,
        "every pooled connection is racing"
    );
    lock.release().await.unwrap();
    let mut responses = Vec::new();
    for call in calls {
        responses.push(call.await.unwrap().unwrap());
    }

    let winners = responses.iter().filter(|r| r.renewed).count();
    assert_eq!(winners, 1, "exactly one renew extends the token");
    let first = responses[0].expires_at;
    assert!(
        responses.iter().all(|r| r.expires_at == first),
        "every caller sees the same, extended expiry"
    );
    let (stored, db_now) = fixtures::stored_expiry(db, id).await.unwrap();
    assert_ne!(stored, before);
    assert_eq!(
        stored.map(auth_api::time::to_timestamp),
        first,
        "the stored row holds that value"
    );
    assert!(gap(stored.unwrap(), db_now + 90 * DAY) < 60.0);
    let renewals = fixtures::events(db, id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.0 == "renew")
        .count();
    assert_eq!(renewals, 1, "the audit trail shows one renewal");

    for s in servers {
        s.shutdown().await.unwrap();
    }
}
