//! A database outage is UNAVAILABLE (never UNAUTHENTICATED), health reports it, and
//! the service recovers by itself when the database returns.

use std::time::Duration;

use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{
    cluster,
    fixtures::{self, token_expiring_in},
    grpc::*,
    server::{self, TestServer},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_is_unavailable_and_the_service_recovers() {
    let (mut cluster, dir) = cluster::own("outage").await.unwrap();
    let db = Db::new(cluster.client_config("postgres"), 8, Duration::from_secs(2)).unwrap();
    db.migrate().await.unwrap();
    let server = TestServer::start(db.clone(), server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    let mut client = server.client().await.unwrap();
    let (_, token) = token_expiring_in(&db, 30.0 * 86400.0).await;
    renew(&mut client, &token).await.unwrap();
    // SERVING first: NOT_SERVING is also the initial state, so only the change counts.
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    assert_eq!(server.http_get("/readyz").await.unwrap().0, 200);

    cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_server().unwrap();
        cluster
    })
    .await
    .unwrap();

    for call in 0..3 {
        let err = renew(&mut client, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "renew #{call}: {err:?}");
        assert!(
            !err.message().contains("postgres"),
            "no database detail leaks: {}",
            err.message()
        );
        let err = validate(&mut client, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "validate #{call}: {err:?}");
    }
    // Malformed input is still judged without the database.
    assert_eq!(
        reason(&renew(&mut client, "pat_nope").await.unwrap_err()),
        "TOKEN_MALFORMED"
    );
    wait_for_health(&server.url(), ServingStatus::NotServing).await;
    // The HTTP port says the same to load balancers; liveness stays up (a restart
    // cannot fix the database).
    assert_eq!(server.http_get("/readyz").await.unwrap().0, 503);
    assert_eq!(server.http_get("/healthz").await.unwrap().0, 200);

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_server().unwrap();
        cluster
    })
    .await
    .unwrap();
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    assert_eq!(server.http_get("/readyz").await.unwrap().0, 200);
    let mut recovered = None;
    for _ in 0..50 {
        match renew(&mut client, &token).await {
            Ok(r) => {
                recovered = Some(r);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered.is_some(), "the service did not recover");
    validate(&mut client, &token).await.unwrap();

    server.shutdown().await.unwrap();
    db.close();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_database_that_never_answers_is_unavailable_not_unauthenticated() {
    // Nothing listens on this socket directory: every connection attempt fails.
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(cluster::scratch_dir("nodb"))
        .port(5432)
        .user("postgres")
        .dbname("postgres");
    let db = Db::new(config, 4, Duration::from_secs(1)).unwrap();
    let server = TestServer::start(db, server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    let mut client = server.client().await.unwrap();
    let token = auth_service::token::generate(&Default::default()).unwrap();
    for err in [
        renew(&mut client, token.expose()).await.unwrap_err(),
        validate(&mut client, token.expose()).await.unwrap_err(),
        lookup(&mut client, token.expose()).await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    // (Health is NOT_SERVING here too, but it starts that way, so asserting it would
    // prove nothing: the test above watches it go from SERVING to NOT_SERVING.)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_exhausted_database_is_unavailable() {
    let config = cluster::fresh_database().await.unwrap();
    // One connection, one second: a call stuck behind a lock is too slow, and the
    // call queued behind it finds the pool exhausted.
    let db = Db::new(config.clone(), 1, Duration::from_secs(1)).unwrap();
    let server = TestServer::start(db.clone(), server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    let (id, token) = token_expiring_in(&db, 86400.0).await;
    let lock = fixtures::RowLock::take(&config, id).await.unwrap();
    let mut a = server.client().await.unwrap();
    let mut b = a.clone();
    // The second call first waits for the pool, then (if it gets the connection
    // back before its second is up) for the lock: UNAVAILABLE either way.
    let (slow, queued) = tokio::join!(renew(&mut a, &token), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        renew(&mut b, &token).await
    });
    assert_eq!(slow.unwrap_err().code(), Code::Unavailable);
    assert_eq!(queued.unwrap_err().code(), Code::Unavailable);
    // The timed-out statements were cancelled on the server: nothing waits on the
    // lock any more, so releasing it cannot let a "failed" renew complete later.
    let probe = Db::new(config.clone(), 1, Duration::from_secs(5)).unwrap();
    for _ in 0..100 {
        if fixtures::lock_waiters(&probe).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(fixtures::lock_waiters(&probe).await.unwrap(), 0);
    lock.release().await.unwrap();
    // Nothing was half-done, and the service works again at once.
    assert_eq!(fixtures::events(&db, id).await.unwrap().len(), 1);
    assert!(renew(&mut a, &token).await.unwrap().renewed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_fail_turn_health_to_not_serving_at_once() {
    let (mut cluster, dir) = cluster::own("fasthealth").await.unwrap();
    let db = Db::new(cluster.client_config("postgres"), 4, Duration::from_secs(2)).unwrap();
    db.migrate().await.unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    // The periodic probe alone would take half a minute to notice.
    settings.db_check_interval = Duration::from_secs(30);
    let server = TestServer::start(db.clone(), settings).await.unwrap();
    let mut client = server.client().await.unwrap();
    let (_, token) = token_expiring_in(&db, 86400.0).await;
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    cluster = tokio::task::spawn_blocking(move || {
        cluster.stop_server().unwrap();
        cluster
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = renew(&mut client, &token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    wait_for_health(&server.url(), ServingStatus::NotServing).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "NOT_SERVING took {:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
    db.close();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
