//! Expiry notifications against a real HTTP receiver, with two service instances on one
//! database scanning every 100 ms, thresholds in minutes, and time moved through the
//! database (expiries set to "now + n seconds").
use std::time::Duration;

use auth_service::{
    db::Db,
    notify::{NotifySettings, webhook::Secret},
    renewal::RenewalPolicy,
};
use auth_test_support::{
    cluster,
    fixtures::{self, token_expiring_in},
    grpc::renew,
    http::metric,
    server::{self, TestServer},
    webhook::{Received, Receiver},
};
use hmac::{Hmac, KeyInit, Mac};

const KEY: &[u8] = b"whsec_test-signing-key";
const HOUR: i64 = 3600;
const TWO_MINUTES: i64 = 120;

/// Notify settings for tests: thresholds 1h and 2m, fast scans and retries.
fn notify(receiver: &Receiver) -> NotifySettings {
    NotifySettings {
        secret: Some(Secret::new(KEY.to_vec())),
        attempts: 3,
        retry_base: Duration::from_millis(50),
        ..NotifySettings::new(
            receiver.url().parse().unwrap(),
            vec![
                Duration::from_secs(TWO_MINUTES as u64),
                Duration::from_secs(HOUR as u64),
            ],
            Duration::from_millis(100),
        )
    }
}

/// `n` servers on `db`, each with `settings` for notices.
async fn servers(db: &Db, n: usize, settings: &NotifySettings) -> Vec<TestServer> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = server::settings(RenewalPolicy::default());
        s.notify = Some(settings.clone());
        out.push(TestServer::start(db.clone(), s).await.unwrap());
    }
    out
}

/// Checks the signature the way a receiver would: HMAC-SHA256 of the raw body.
fn signature_verifies(r: &Received) -> bool {
    let Some(hex) = r
        .header("x-auth-signature")
        .and_then(|s| s.strip_prefix("sha256="))
    else {
        return false;
    };
    let Ok(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(KEY).unwrap();
    mac.update(&r.body);
    mac.verify_slice(&bytes).is_ok()
}

/// The successful scans each replica has finished (`auth_notify_scans_total`).
async fn scans(replicas: &[TestServer]) -> Vec<f64> {
    let mut out = Vec::new();
    for replica in replicas {
        let (_, text) = replica.http_get("/metrics").await.unwrap();
        out.push(metric(&text, r#"auth_notify_scans_total{result="ok"}"#));
    }
    out
}

/// Waits until every replica has finished `n` more successful scans than it had: by
/// then each has claimed, and started to send, whatever it was going to. An assertion
/// that nothing more was sent is made after this, never after a fixed sleep (which
/// passes just as well when no scan ran at all).
async fn after_more_scans(replicas: &[TestServer], n: f64) {
    let before = scans(replicas).await;
    let started = std::time::Instant::now();
    loop {
        let now = scans(replicas).await;
        if now
            .iter()
            .zip(&before)
            .all(|(now, before)| *now >= before + n)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the replicas did not scan {n} more times: {before:?} then {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn notify_events(db: &Db, id: uuid::Uuid) -> usize {
    fixtures::event_kinds(db, id)
        .await
        .unwrap()
        .iter()
        .filter(|k| *k == "notify")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_due_token_is_notified_once_across_replicas_for_its_nearest_threshold() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    let (soon, _) = token_expiring_in(&db, 30.0 * 60.0).await; // inside 1h only
    let (very_soon, _) = token_expiring_in(&db, 90.0).await; // inside 1h and 2m
    let (far, _) = token_expiring_in(&db, 10.0 * 86400.0).await;
    let (revoked, _) = token_expiring_in(&db, 30.0 * 60.0).await;
    db.revoke_by_id(revoked, "test").await.unwrap();
    let (expired, _) = token_expiring_in(&db, -600.0).await;
    let (never, _) = fixtures::create_token(&db, "bob", None).await.unwrap();

    let replicas = servers(&db, 2, &notify(&receiver)).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    // Five more scans by both replicas: still exactly two.
    after_more_scans(&replicas, 5.0).await;
    let got_all = receiver.received();
    assert_eq!(got_all.len(), 2, "{got_all:#?}");
    assert_eq!(got.len(), 2);

    for r in &got_all {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/expiring");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-auth-event"), Some("token.expiring"));
        assert!(
            signature_verifies(r),
            "signature: {:?}",
            r.header("x-auth-signature")
        );
        // A tampered body does not verify.
        let mut tampered = r.clone();
        tampered.body.push(b' ');
        assert!(!signature_verifies(&tampered));
    }
    let by_token = |id: uuid::Uuid| {
        got_all
            .iter()
            .find(|r| r.json()["token_id"] == id.to_string())
            .map(Received::json)
    };
    let one_hour = by_token(soon).expect("the 30-minute token");
    assert_eq!(one_hour["event"], "token.expiring");
    assert_eq!(one_hour["threshold"], "1h");
    assert_eq!(one_hour["threshold_seconds"], HOUR);
    assert_eq!(one_hour["user_id"], "alice");
    assert_eq!(one_hour["name"], "test");
    let stored = fixtures::stored_expiry(&db, soon).await.unwrap().0.unwrap();
    assert_eq!(
        one_hour["expires_at"],
        stored.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert!(chrono::DateTime::parse_from_rfc3339(one_hour["sent_at"].as_str().unwrap()).is_ok());
    // Crossing both thresholds at once: only the nearest.
    let two_minutes = by_token(very_soon).expect("the 90-second token");
    assert_eq!(two_minutes["threshold"], "2m");

    for quiet in [far, revoked, expired, never] {
        assert!(by_token(quiet).is_none());
        assert!(fixtures::notices(&db, quiet).await.unwrap().is_empty());
    }
    // Recorded and audited once each.
    for id in [soon, very_soon] {
        let rows = fixtures::notices(&db, id).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(rows[0].sent && !rows[0].failed && rows[0].attempts == 1);
        assert_eq!(notify_events(&db, id).await, 1);
    }
    let mut sent = 0.0;
    for replica in &replicas {
        let (_, text) = replica.http_get("/metrics").await.unwrap();
        sent += metric(&text, r#"auth_notify_deliveries_total{result="sent"}"#);
    }
    assert_eq!(sent, 2.0, "counted once, by whichever replica sent it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_racing_over_sixty_due_tokens_send_each_notice_once() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..60 {
        ids.insert(token_expiring_in(&db, 30.0 * 60.0).await.0.to_string());
    }
    let replicas = servers(&db, 3, &notify(&receiver)).await;
    receiver.wait_for(60, Duration::from_secs(20)).await;
    after_more_scans(&replicas, 5.0).await;
    let got = receiver.received();
    let notified: Vec<String> = got
        .iter()
        .map(|r| r.json()["token_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: std::collections::HashSet<String> = notified.iter().cloned().collect();
    assert_eq!(notified.len(), 60, "one request per token");
    assert_eq!(distinct, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_token_that_comes_back_inside_a_threshold_is_notified_again() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    let (id, token) = token_expiring_in(&db, 30.0 * 60.0).await;
    let replicas = servers(&db, 1, &notify(&receiver)).await;
    assert_eq!(receiver.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    // Renewed: 90 days left, nothing owed.
    let mut client = replicas[0].client().await.unwrap();
    assert!(renew(&mut client, &token).await.unwrap().renewed);
    after_more_scans(&replicas, 5.0).await;
    assert_eq!(receiver.received().len(), 1);

    // Time passes (moved through the database): inside the hour again, a new expiry.
    fixtures::set_expires_in(&db, id, 40.0 * 60.0)
        .await
        .unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_ne!(got[0].json()["expires_at"], got[1].json()["expires_at"]);
    assert_ne!(
        got[0].header("x-auth-delivery"),
        got[1].header("x-auth-delivery")
    );
    assert_eq!(got[1].json()["threshold"], "1h");
    assert_eq!(notify_events(&db, id).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_retried_with_the_same_delivery_id() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[500, 503]).await.unwrap();
    let (id, _) = token_expiring_in(&db, 30.0 * 60.0).await;
    let replicas = servers(&db, 1, &notify(&receiver)).await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let delivery = got[0].header("x-auth-delivery").unwrap();
    assert!(
        got.iter()
            .all(|r| r.header("x-auth-delivery") == Some(delivery))
    );
    assert!(got.iter().all(signature_verifies));
    // Recorded once the third attempt got its 200.
    let started = std::time::Instant::now();
    let rows = loop {
        let rows = fixtures::notices(&db, id).await.unwrap();
        if rows.iter().any(|r| r.sent) || started.elapsed() > Duration::from_secs(5) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rows.len(), 1);
    assert!(rows[0].sent && rows[0].attempts == 3, "{rows:?}");
    assert_eq!(rows[0].delivery_id.to_string(), delivery);
    assert_eq!(notify_events(&db, id).await, 1);
    let (_, text) = replicas[0].http_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&text, r#"auth_notify_deliveries_total{result="retried"}"#),
        2.0
    );
    assert_eq!(
        metric(&text, r#"auth_notify_deliveries_total{result="sent"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_run_out_and_the_notice_is_given_up_without_an_audit_event() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[500; 10]).await.unwrap();
    let (id, _) = token_expiring_in(&db, 30.0 * 60.0).await;
    let replicas = servers(&db, 2, &notify(&receiver)).await;
    assert_eq!(receiver.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    // Given up (recorded), then five more scans by both replicas: no fourth attempt.
    let started = std::time::Instant::now();
    while !fixtures::notices(&db, id)
        .await
        .unwrap()
        .iter()
        .any(|r| r.failed)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never given up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    after_more_scans(&replicas, 5.0).await;
    assert_eq!(receiver.received().len(), 3, "three attempts, then no more");
    let rows = fixtures::notices(&db, id).await.unwrap();
    assert!(
        rows.len() == 1 && rows[0].failed && !rows[0].sent && rows[0].attempts == 3,
        "{rows:?}"
    );
    assert_eq!(notify_events(&db, id).await, 0);
    let mut failed = 0.0;
    for replica in &replicas {
        let (_, text) = replica.http_get("/metrics").await.unwrap();
        failed += metric(&text, r#"auth_notify_deliveries_total{result="failed"}"#);
    }
    assert_eq!(failed, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_dead_replica_is_taken_over_after_the_lease() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    let (id, _) = token_expiring_in(&db, 30.0 * 60.0).await;
    // Claimed 20 minutes ago by a replica that then died.
    let delivery = fixtures::stale_claim(&db, id, HOUR, 1200.0).await.unwrap();
    let (fresh, _) = token_expiring_in(&db, 30.0 * 60.0).await;
    // Claimed a moment ago by a replica still at work: not taken over.
    fixtures::stale_claim(&db, fresh, HOUR, 1.0).await.unwrap();
    let replica = servers(&db, 1, &notify(&receiver)).await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    // Five more scans: the fresh claim is still not taken over.
    after_more_scans(&replica, 5.0).await;
    let got_all = receiver.received();
    assert_eq!(got_all.len(), 1, "{got_all:#?}");
    assert_eq!(
        got[0].header("x-auth-delivery"),
        Some(delivery.to_string().as_str())
    );
    assert_eq!(got[0].json()["token_id"], id.to_string());
    let rows = fixtures::notices(&db, id).await.unwrap();
    assert!(rows[0].sent && rows[0].attempts == 2, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hanging_on_sixteen_notices_delays_no_other() {
    let db = cluster::test_db().await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    // The production timeout, attempts and backoff: each hanging attempt takes 10 s.
    let settings = NotifySettings {
        timeout: Duration::from_secs(10),
        attempts: 5,
        retry_base: Duration::from_secs(1),
        ..notify(&receiver)
    };
    for _ in 0..16 {
        let (id, _) = token_expiring_in(&db, (HOUR / 2) as f64).await;
        receiver.hang_on(&id.to_string());
    }
    let servers = servers(&db, 1, &settings).await;
    let held = receiver.wait_for(16, Duration::from_secs(10)).await;
    assert_eq!(held.len(), 16, "the receiver holds all sixteen");

    let (fresh, _) = token_expiring_in(&db, (HOUR / 2) as f64).await;
    let due = std::time::Instant::now();
    let fresh = fresh.to_string();
    let delivered = loop {
        if receiver
            .received()
            .iter()
            .any(|r| r.json()["token_id"] == fresh.as_str())
        {
            break due.elapsed();
        }
        assert!(
            due.elapsed() < Duration::from_secs(5),
            "a newly due notice waited behind the hanging ones"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("a newly due notice was delivered {delivered:?} after it became due");
    for s in servers {
        s.shutdown().await.unwrap();
    }
}
