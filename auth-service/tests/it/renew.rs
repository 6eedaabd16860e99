//! RenewCurrentToken against a real server and a real PostgreSQL.

use std::time::Duration;

use auth_api::v1::RenewCurrentTokenRequest;
use auth_service::renewal::RenewalPolicy;
use auth_test_support::{
    fixtures::{self, gap, token_expiring_in},
    grpc::*,
};
use tonic::{Code, Request};

#[tokio::test]
async fn inside_the_window_extends_to_now_plus_90_days_once() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = token_expiring_in(&server.db, 3.0 * 86400.0).await;

    let first = renew(&mut client, &token).await.unwrap();
    assert!(first.renewed);
    let (stored, db_now) = fixtures::stored_expiry(&server.db, id).await.unwrap();
    let stored = stored.unwrap();
    assert_eq!(to_time(first.expires_at.as_ref().unwrap()), stored);
    assert!(
        gap(stored, db_now + 90 * DAY) < 5.0,
        "expiry is now + 90d by the database clock"
    );
    assert_eq!(
        to_time(first.next_renewal_at.as_ref().unwrap()),
        stored - 7 * DAY
    );

    let second = renew(&mut client, &token).await.unwrap();
    assert!(!second.renewed, "outside the window now: a no-op");
    assert_eq!(second.expires_at, first.expires_at);

    let events = fixtures::events(&server.db, id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["create", "renew"]);
    let expiries = fixtures::event_expiries(&server.db, id).await.unwrap();
    assert_eq!(
        expiries[1].2,
        Some(stored),
        "the renew event records the new expiry"
    );
    assert!(
        expiries[1]
            .1
            .is_some_and(|before| before < stored - 80 * DAY)
    );
    assert!(
        events[1].1.starts_with("127.0.0.1:"),
        "caller address audited: {}",
        events[1].1
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn outside_the_window_is_a_no_op_reporting_the_current_expiry() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = token_expiring_in(&server.db, 30.0 * 86400.0).await;
    let before = fixtures::stored_expiry(&server.db, id).await.unwrap().0;
    let r = renew(&mut client, &token).await.unwrap();
    assert!(!r.renewed);
    assert_eq!(Some(to_time(r.expires_at.as_ref().unwrap())), before);
    assert_eq!(
        fixtures::stored_expiry(&server.db, id).await.unwrap().0,
        before
    );
    assert_eq!(
        fixtures::events(&server.db, id).await.unwrap().len(),
        1,
        "no renew event"
    );
}

#[tokio::test]
async fn a_never_expiring_token_renews_as_a_no_op() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = fixtures::create_token(&server.db, "svc", None)
        .await
        .unwrap();
    let r = renew(&mut client, &token).await.unwrap();
    assert!(!r.renewed);
    assert!(r.expires_at.is_none() && r.next_renewal_at.is_none());
    assert_eq!(
        fixtures::stored_expiry(&server.db, id).await.unwrap().0,
        None
    );
}

#[tokio::test]
async fn expired_revoked_and_unknown_tokens_are_never_extended() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (expired_id, expired) = token_expiring_in(&server.db, -60.0).await;
    let before = fixtures::stored_expiry(&server.db, expired_id)
        .await
        .unwrap()
        .0;
    assert_eq!(
        reason(&renew(&mut client, &expired).await.unwrap_err()),
        "TOKEN_EXPIRED"
    );
    assert_eq!(
        fixtures::stored_expiry(&server.db, expired_id)
            .await
            .unwrap()
            .0,
        before
    );

    let (revoked_id, revoked) = token_expiring_in(&server.db, 86400.0).await;
    server.db.revoke_by_id(revoked_id, "test").await.unwrap();
    let before = fixtures::stored_expiry(&server.db, revoked_id)
        .await
        .unwrap()
        .0;
    assert_eq!(
        reason(&renew(&mut client, &revoked).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    assert_eq!(
        fixtures::stored_expiry(&server.db, revoked_id)
            .await
            .unwrap()
            .0,
        before
    );

    // Well-formed (valid checksum) but never issued here.
    let stranger = auth_service::token::generate(&Default::default()).unwrap();
    assert_eq!(
        reason(&renew(&mut client, stranger.expose()).await.unwrap_err()),
        "TOKEN_UNKNOWN"
    );
}

#[tokio::test]
async fn bad_credentials_get_clear_reasons() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;

    let missing = client
        .renew_current_token(Request::new(RenewCurrentTokenRequest {}))
        .await
        .unwrap_err();
    assert_eq!(reason(&missing), "MISSING_CREDENTIALS");
    assert!(
        missing.message().contains("authorization: Bearer"),
        "{}",
        missing.message()
    );

    let mut basic = Request::new(RenewCurrentTokenRequest {});
    basic
        .metadata_mut()
        .insert("authorization", format!("Basic {token}").parse().unwrap());
    assert_eq!(
        reason(&client.renew_current_token(basic).await.unwrap_err()),
        "MISSING_CREDENTIALS"
    );

    let mut typo = token.clone().into_bytes();
    typo[10] = if typo[10] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [
        "pat_short",
        "' OR 1=1 --",
        typo.as_str(),
        "ghp_0123456789012345678901234567890123456",
    ] {
        assert_eq!(
            reason(&renew(&mut client, bad).await.unwrap_err()),
            "TOKEN_MALFORMED",
            "{bad}"
        );
    }

    let mut binary = Request::new(RenewCurrentTokenRequest {});
    let value = tonic::metadata::MetadataValue::try_from(&b"Bearer pat_\x80\x81"[..]).unwrap();
    binary.metadata_mut().insert("authorization", value);
    assert_eq!(
        reason(&client.renew_current_token(binary).await.unwrap_err()),
        "TOKEN_MALFORMED"
    );
}

#[tokio::test]
async fn a_one_megabyte_token_is_refused_without_harm() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = token_expiring_in(&server.db, 86400.0).await;
    let huge = "pat_".to_string() + &"A".repeat(1 << 20);
    // Metadata beyond 16 KiB is refused by HTTP/2 itself, before any handler runs.
    let err = renew(&mut client, &huge).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Below that limit, an overlong token is malformed, judged without the database.
    let long = "pat_".to_string() + &"A".repeat(8 * 1024);
    let mut client = server.client().await.unwrap();
    assert_eq!(
        reason(&renew(&mut client, &long).await.unwrap_err()),
        "TOKEN_MALFORMED"
    );
    // The server is still healthy and the real token still works, unchanged by the attempt.
    let mut client = server.client().await.unwrap();
    assert!(renew(&mut client, &token).await.unwrap().renewed);
    assert_eq!(fixtures::events(&server.db, id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn the_maximum_lifetime_caps_renewal() {
    let policy = RenewalPolicy {
        max_lifetime: Some(30 * DAY),
        ..RenewalPolicy::default()
    };
    let (server, mut client) = crate::start(policy).await;
    let (id, token) = token_expiring_in(&server.db, 86400.0).await;
    let r = renew(&mut client, &token).await.unwrap();
    assert!(r.renewed);
    let (stored, db_now) = fixtures::stored_expiry(&server.db, id).await.unwrap();
    // created just now, so the cap (created_at + 30d) wins over now + 90d.
    assert!(gap(stored.unwrap(), db_now + 30 * DAY) < 5.0);
    assert!(
        r.next_renewal_at.is_none(),
        "no renewal can extend a capped token"
    );

    // Created 10 days ago, 2 days left: inside the window and below the cap, so it
    // moves up to the cap (created_at + 30d = now + 20d), not to now + 90d.
    fixtures::set_created_ago(&server.db, id, 10.0 * 86400.0)
        .await
        .unwrap();
    fixtures::set_expires_in(&server.db, id, 2.0 * 86400.0)
        .await
        .unwrap();
    let again = renew(&mut client, &token).await.unwrap();
    assert!(again.renewed);
    let (stored, db_now) = fixtures::stored_expiry(&server.db, id).await.unwrap();
    assert!(gap(stored.unwrap(), db_now + 20 * DAY) < 5.0);

    // Created 28 days ago: the expiry sits at the cap (now + 2d), inside the
    // window. The cap forbids any extension, so the guard leaves it alone.
    fixtures::set_created_ago(&server.db, id, 28.0 * 86400.0)
        .await
        .unwrap();
    fixtures::set_expires_in(&server.db, id, 2.0 * 86400.0)
        .await
        .unwrap();
    let (at_cap, _) = fixtures::stored_expiry(&server.db, id).await.unwrap();
    let third = renew(&mut client, &token).await.unwrap();
    assert!(!third.renewed, "nothing beyond the cap");
    assert_eq!(third.expires_at.as_ref().map(to_time), at_cap);
    assert!(third.next_renewal_at.is_none());
    assert_eq!(
        fixtures::stored_expiry(&server.db, id).await.unwrap().0,
        at_cap
    );
    let renewals = fixtures::events(&server.db, id).await.unwrap();
    assert_eq!(renewals.iter().filter(|e| e.0 == "renew").count(), 2);
}

#[tokio::test]
async fn renewal_uses_a_configurable_threshold_and_extension() {
    let policy = RenewalPolicy {
        threshold: Duration::from_secs(3600),
        extension: Duration::from_secs(7200),
        max_lifetime: None,
    };
    let (server, mut client) = crate::start(policy).await;
    let (id, token) = token_expiring_in(&server.db, 1800.0).await;
    assert!(renew(&mut client, &token).await.unwrap().renewed);
    let (stored, now) = fixtures::stored_expiry(&server.db, id).await.unwrap();
    assert!(gap(stored.unwrap(), now + Duration::from_secs(7200)) < 5.0);
}
