//! Losing the invalidation stream stops the caller's cache at once ("no stream, no
//! cache"): when the service's own LISTEN connection is killed (the service flushes, and
//! the caller with it), and when the service stops (the stream ends; a live token is
//! bridged only within the outage grace, and without a grace, not at all).
use std::time::{Duration, Instant};

use auth_client::{CacheSettings, ClientOptions, Rejection};
use auth_test_support::{
    cluster,
    fixtures::{set_revoked_ago, token_expiring_in},
};

use crate::{client_of, client_with, replicas, serving, token_with, wait_until, warm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_service_s_listener_flushes_the_caller_s_cache() {
    let (config, servers) = replicas(1).await;
    let server = &servers[0];
    let client = client_of(server);
    let (id, token) = token_expiring_in(&server.db, 86400.0).await;
    warm(&client, &token).await;
    let before = client.cache_state().unwrap();
    assert!(before.entries >= 1 && before.serving);

    let (admin, _task) = cluster::connect(&config).await.unwrap();
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN %' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1, "the service's one LISTEN connection");
    // Revoked while the service may not be listening: its notification can be lost.
    set_revoked_ago(&server.db, id, 0.0).await.unwrap();
    let revoked_at = Instant::now();
    // Within the bound, the caller asks the service, which reads the database.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        client.validate(&token).await.unwrap(),
        Err(Rejection::TokenRevoked)
    );
    // The service listens again and tells its watchers to flush: the caller starts empty.
    wait_until(
        "the caller's cache flushed",
        Duration::from_secs(10),
        || client.cache_state().unwrap().flushes > before.flushes,
    )
    .await;
    serving(&client).await;
    assert_eq!(
        client.validate(&token).await.unwrap(),
        Err(Rejection::TokenRevoked)
    );
    eprintln!(
        "flushed {:?} after the revocation; {:?}",
        revoked_at.elapsed(),
        client.cache_state().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_stops_the_cache_and_only_the_grace_bridges_it() {
    let (_config, mut servers) = replicas(1).await;
    let server = servers.remove(0);
    let bridging = client_of(&server);
    let strict = client_with(
        &server,
        ClientOptions {
            cache: Some(CacheSettings {
                outage_grace: Duration::ZERO,
                ..CacheSettings::default()
            }),
            deadline: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    );
    let cached = token_with(&server.db, "alice", &["read"]).await;
    let uncached = token_with(&server.db, "bob", &["read"]).await;
    warm(&bridging, &cached).await;
    warm(&strict, &cached).await;

    server.shutdown().await.unwrap();
    for client in [&bridging, &strict] {
        wait_until("the cache stops serving", Duration::from_secs(5), || {
            !client.cache_state().unwrap().serving
        })
        .await;
    }
    // Nothing cached: unavailable, not refused.
    let bridging = bridging.with_deadline(Duration::from_millis(500));
    assert!(bridging.validate(&uncached).await.is_err());
    // Within the grace, the live token proven a moment ago still works...
    assert_eq!(
        bridging.validate(&cached).await.unwrap().unwrap().user_id,
        "alice"
    );
    // ...and without one, it does not: the cache is emptied.
    assert!(strict.validate(&cached).await.is_err());
    wait_until("the strict cache emptied", Duration::from_secs(10), || {
        strict.cache_state().unwrap().entries == 0
    })
    .await;
}
