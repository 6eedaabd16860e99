//! Failover: the service names a primary and its streaming standby with
//! `target_session_attrs=read-write`; the primary is stopped at once (or vanishes with
//! its connections left open) and the standby promoted. Renew and validate come back
//! without a restart, the change listener and the cache with them, and no call on the
//! way says UNAUTHENTICATED for a valid token.

use std::time::{Duration, Instant};

use auth_service::{
    db::{Db, Target},
    renewal::RenewalPolicy,
};
use auth_test_support::{
    fixtures::token_expiring_in,
    grpc::*,
    ha::Pair,
    http::metric,
    proxy::Front,
    server::{self, TestServer},
};
use tokio::sync::watch;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cache::{rejected_everywhere, wait_listening, warm};

/// The longest a caller may wait, after the promotion, for renew to work again.
const RECOVERY: Duration = Duration::from_secs(20);

/// One answer seen while the database failed over: (call, code, message).
type Seen = (&'static str, Code, String);

fn seen<T>(call: &'static str, answer: Result<T, tonic::Status>) -> Seen {
    match answer {
        Ok(_) => (call, Code::Ok, String::new()),
        Err(status) => (call, status.code(), status.message().to_owned()),
    }
}

/// Repeats `call` until it succeeds, each failure meanwhile UNAVAILABLE; fails when
/// [`RECOVERY`] has passed since `since`.
async fn until_ok<T>(
    what: &str,
    since: Instant,
    mut call: impl AsyncFnMut() -> Result<T, tonic::Status>,
) -> T {
    loop {
        match call().await {
            Ok(answer) => return answer,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{what}: {e:?}");
                assert!(
                    since.elapsed() < RECOVERY,
                    "{what} still fails {RECOVERY:?} after the promotion: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The primary is stopped at once (`pg_ctl stop -m immediate`: its connections close)
/// and the standby promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_validate_come_back_after_a_failover_without_a_restart() {
    let pair = Pair::start().await.unwrap();
    let target = Target::parse(&pair.conninfo("postgres")).unwrap();
    let db = Db::connect_to(target, 8, Duration::from_secs(2)).unwrap();
    db.migrate().await.unwrap();
    let server = TestServer::start(db.clone(), server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    wait_listening(&server).await;
    let mut client = server.client().await.unwrap();

    // Both tokens are inside the renewal window (3 days left). `early` is renewed on the
    // primary, and that renewal must survive the failover; `late` is first renewed on
    // the promoted standby, so that renewal is a write to the new primary.
    let (early_id, early) = token_expiring_in(&db, 3.0 * 86400.0).await;
    let (_, late) = token_expiring_in(&db, 3.0 * 86400.0).await;
    let first = renew(&mut client, &early).await.unwrap();
    assert!(first.renewed);
    warm(std::slice::from_ref(&server), &late).await;
    // What the primary committed reaches the standby a moment later: wait for it, so
    // that the immediate stop loses nothing this test relies on (see the README on
    // asynchronous replication).
    pair.wait_for_standby().await.unwrap();

    // Every answer from here until the service has recovered, renew and validate in turn.
    let (stop_probe, mut stopping) = watch::channel(false);
    let probe = tokio::spawn({
        let mut client = client.clone();
        let (early, late) = (early.clone(), late.clone());
        async move {
            let mut answers = Vec::new();
            while !*stopping.borrow_and_update() {
                answers.push(seen("renew", renew(&mut client, &early).await));
                answers.push(seen("validate", validate(&mut client, &late).await));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }
    });

    let stopped = Instant::now();
    pair.stop_primary_immediately().await.unwrap();
    // No server takes writes now: calls are UNAVAILABLE and health says NOT_SERVING.
    wait_for_health(&server.url(), ServingStatus::NotServing).await;
    let err = renew(&mut client, &late).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // A service that reaches the read-only standby (configured with its address alone,
    // so it gets connections there) has its renewal refused with SQLSTATE 25006: that is
    // UNAVAILABLE, retry later, never UNAUTHENTICATED.
    let standby_db = Db::connect_to(
        Target::parse(&pair.standby_conninfo("postgres")).unwrap(),
        2,
        Duration::from_secs(2),
    )
    .unwrap();
    let on_standby = TestServer::start(
        standby_db.clone(),
        server::settings(RenewalPolicy::default()),
    )
    .await
    .unwrap();
    let mut standby_client = on_standby.client().await.unwrap();
    for token in [&early, &late] {
        let err = renew(&mut standby_client, token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let (_, code, message) = seen("validate", validate(&mut standby_client, token).await);
        assert!(
            matches!(code, Code::Ok | Code::Unavailable),
            "validate on the standby: {code:?} {message}"
        );
    }
    on_standby.shutdown().await.unwrap();
    standby_db.close();

    let promoting = Instant::now();
    pair.promote_standby().await.unwrap();
    let promotion_took = promoting.elapsed();
    let renewed = until_ok("renew", promoting, async || renew(&mut client, &late).await).await;
    let recovered_at = Instant::now();
    let recovered = recovered_at - promoting;
    assert!(renewed.renewed, "the renewal is written to the new primary");
    validate(&mut client, &late).await.unwrap();
    validate(&mut client, &early).await.unwrap();
    // The renewal made on the old primary is there: a renew now has nothing to do, and
    // reports the expiry that renewal set.
    let again = renew(&mut client, &early).await.unwrap();
    assert!(!again.renewed);
    assert_eq!(again.expires_at, first.expires_at);
    wait_for_health(&server.url(), ServingStatus::Serving).await;

    stop_probe.send(true).unwrap();
    let answers = probe.await.unwrap();
    let unavailable = answers
        .iter()
        .filter(|(_, code, _)| *code == Code::Unavailable)
        .count();
    for (call, code, message) in &answers {
        assert!(
            matches!(code, Code::Ok | Code::Unavailable),
            "{call} answered {code:?} ({message}) during the failover"
        );
    }
    assert!(unavailable > 0, "no call saw the failover: {answers:?}");
    assert_eq!(answers.last().map(|(_, code, _)| *code), Some(Code::Ok));

    // The listener is back, on the new primary: the cache was emptied when it was lost,
    // answers from memory again, and a revocation made there behind this replica's back
    // (not through its API) still evicts at once.
    wait_listening(&server).await;
    let (_, text) = server.http_get("/metrics").await.unwrap();
    assert!(
        metric(&text, r#"auth_cache_evictions_total{cause="flush"}"#) >= 1.0,
        "{text}"
    );
    warm(std::slice::from_ref(&server), &early).await;
    db.revoke_by_id(early_id, "test").await.unwrap();
    rejected_everywhere(std::slice::from_ref(&server), &early, "TOKEN_REVOKED").await;

    eprintln!(
        "failover: {} calls during it, {unavailable} UNAVAILABLE, none UNAUTHENTICATED; \
         promotion took {promotion_took:?}; renew worked {recovered:?} after the promotion \
         ({:?} after the primary stopped)",
        answers.len(),
        recovered_at - stopped,
    );
    server.shutdown().await.unwrap();
    db.close();
}

/// The old primary's machine vanishes instead: the connections to it stay open and say
/// nothing (here behind a front that goes silent; in life, HAProxy keeps them so, or the
/// kernel does for many minutes). A call on one of them times out, and that connection
/// must not serve another call, or the service never reaches the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_vanishes_with_its_connections_open_is_left_behind() {
    let pair = Pair::start().await.unwrap();
    let front = Front::start(pair.primary().pgdata().join(".s.PGSQL.5432"))
        .await
        .unwrap();
    let url = format!(
        "host=127.0.0.1,{} port={},5432 user=postgres dbname=postgres \
         target_session_attrs=read-write",
        pair.standby().pgdata().display(),
        front.addr.port()
    );
    let db = Db::connect_to(Target::parse(&url).unwrap(), 8, Duration::from_secs(1)).unwrap();
    db.migrate().await.unwrap();
    let server = TestServer::start(db.clone(), server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    wait_listening(&server).await;
    let mut client = server.client().await.unwrap();
    let (_, token) = token_expiring_in(&db, 3.0 * 86400.0).await;
    validate(&mut client, &token).await.unwrap();
    pair.wait_for_standby().await.unwrap();

    front.go_silent();
    pair.stop_primary_immediately().await.unwrap();
    pair.promote_standby().await.unwrap();
    let promoted = Instant::now();
    let renewed = until_ok("renew", promoted, async || renew(&mut client, &token).await).await;
    assert!(renewed.renewed, "the renewal is written to the new primary");
    let renew_back = promoted.elapsed();
    // Lookups too, over the shared read connections: the renewal evicted the token from
    // this replica's cache.
    until_ok("validate", promoted, async || {
        validate(&mut client, &token).await
    })
    .await;
    let validate_back = promoted.elapsed();
    // The health probe's own connection.
    wait_for_health(&server.url(), ServingStatus::Serving).await;
    wait_listening(&server).await;
    eprintln!(
        "vanished primary: renew worked {renew_back:?} after the promotion, validate \
         {validate_back:?}, health and the listener {:?}",
        promoted.elapsed()
    );
    server.shutdown().await.unwrap();
    db.close();
}
