//! Through a real PgBouncer 1.18 in `pool_mode = transaction`, where two statements of
//! one client session may run on two server connections: the CLI, renewal, validation,
//! revocation and the notify scan all work, 500 concurrent cold validations succeed, a
//! revocation reaches the other replica through the direct LISTEN connection, and a
//! server whose LISTEN goes through PgBouncer refuses to run, naming the flag.
use std::time::{Duration, Instant};

use auth_api::v1::{RenewCurrentTokenRequest, RevokeCurrentTokenRequest};
use auth_service::{
    cache::CacheSettings,
    db::{Db, Target},
    error::Error,
    notify::NotifySettings,
    renewal::RenewalPolicy,
};
use auth_test_support::{
    cluster,
    fixtures::{self},
    grpc::*,
    pgbouncer::PgBouncer,
    server::{self, TestServer},
    webhook::Receiver,
};
use tonic::Code;

use crate::cache::{wait_listening, warm};

/// A replica whose pool goes through `bouncer` and whose LISTEN goes direct.
async fn replica(
    bouncer: &PgBouncer,
    direct: &tokio_postgres::Config,
    tweak: impl FnOnce(&mut auth_service::config::ServeSettings),
) -> TestServer {
    let db = Db::through_pooler(
        Target::plain(bouncer.config(direct)),
        12,
        Duration::from_secs(5),
    )
    .unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    settings.database_listen = Some(Target::plain(direct.clone()));
    tweak(&mut settings);
    TestServer::start(db, settings).await.unwrap()
}

/// `auth-service token create` through `bouncer`: the raw token.
fn create_with_the_cli(bouncer: &PgBouncer, direct: &tokio_postgres::Config, user: &str) -> String {
    let out = crate::service()
        .args(["token", "create", "--user", user, "--expires-in", "3d"])
        .args([
            "--database-url",
            &cluster::conninfo(&bouncer.config(direct)),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "token create through PgBouncer: {stderr}\n{}",
        bouncer.log()
    );
    // Told once, for what this PgBouncer does: it refuses the option.
    assert_eq!(
        stderr.matches("goes through a pooler").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("refuses startup options"), "{stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_works_through_pgbouncer_in_transaction_mode() {
    let direct = cluster::fresh_database().await.unwrap();
    let bouncer = PgBouncer::start(&direct, 10).await.unwrap();
    let receiver = Receiver::start(&[]).await.unwrap();
    let a = replica(&bouncer, &direct, |s| {
        s.notify = Some(NotifySettings::new(
            receiver.url().parse().unwrap(),
            vec![Duration::from_secs(7 * 86400)],
            Duration::from_millis(100),
        ));
    })
    .await;
    let b = replica(&bouncer, &direct, |_| {}).await;
    wait_listening(&a).await;
    wait_listening(&b).await;

    // Created by the CLI, twice (the second used to fail: prepared statement "s2"
    // already exists), renewed, validated on both, and noticed by the scan.
    let first = create_with_the_cli(&bouncer, &direct, "alice");
    let token = create_with_the_cli(&bouncer, &direct, "bob");
    let mut client = a.client().await.unwrap();
    let renewed = client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(renewed.renewed, "3 days left: inside the renewal window");
    for s in [&a, &b] {
        let mut c = s.client().await.unwrap();
        assert_eq!(validate(&mut c, &token).await.unwrap().user_id, "bob");
        assert_eq!(validate(&mut c, &first).await.unwrap().user_id, "alice");
    }
    let notices = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        notices.iter().any(|n| n.json()["user_id"] == "alice"),
        "the notify scan ran through PgBouncer: {notices:?}"
    );

    // A revocation through a, refused by b (which had it cached) within 100 ms.
    warm(std::slice::from_ref(&b), &first).await;
    client
        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &first))
        .await
        .unwrap();
    let revoked = Instant::now();
    let mut c = b.client().await.unwrap();
    let seen = loop {
        match validate(&mut c, &first).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert_eq!(reason(&status), "TOKEN_REVOKED");
                break revoked.elapsed();
            }
            other => {
                assert!(revoked.elapsed() < Duration::from_secs(5), "{other:?}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    eprintln!("a revocation through replica a was refused by replica b after {seen:?}");
    assert!(seen <= Duration::from_millis(100), "took {seen:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_cold_validations_through_pgbouncer() {
    let direct = cluster::fresh_database().await.unwrap();
    let bouncer = PgBouncer::start(&direct, 10).await.unwrap();
    let fixtures_db = Db::new(direct.clone(), 4, Duration::from_secs(5)).unwrap();
    let mut tokens = Vec::new();
    for _ in 0..50 {
        tokens.push(fixtures::token_expiring_in(&fixtures_db, 86400.0).await.1);
    }
    // No cache: every validation is a lookup through PgBouncer.
    let s = replica(&bouncer, &direct, |s| {
        s.cache = CacheSettings {
            capacity: 0,
            ..CacheSettings::default()
        }
    })
    .await;
    let client = s.client().await.unwrap();
    let calls: Vec<_> = (0..500)
        .map(|i| {
            let (mut client, token) = (client.clone(), tokens[i % tokens.len()].clone());
            tokio::spawn(async move { validate(&mut client, &token).await })
        })
        .collect();
    let mut failed = Vec::new();
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            failed.push(status);
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_connection_behind_pgbouncer_stops_serve_naming_the_flag() {
    let direct = cluster::fresh_database().await.unwrap();
    let bouncer = PgBouncer::start(&direct, 10).await.unwrap();
    let db = Db::through_pooler(
        Target::plain(bouncer.config(&direct)),
        12,
        Duration::from_secs(5),
    )
    .unwrap();
    // No --database-listen-url: LISTEN goes through PgBouncer, which swallows it.
    let s = TestServer::start(db, server::settings(RenewalPolicy::default()))
        .await
        .unwrap();
    let ended = s.stopped_within(Duration::from_secs(30)).await.unwrap();
    match ended {
        Err(Error::Config(why)) => {
            assert!(why.contains("--database-listen-url"), "{why}");
            assert!(why.contains("PgBouncer"), "{why}");
        }
        other => panic!("serve went on: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_drops_startup_options_is_taken_for_a_pooler() {
    let direct = cluster::fresh_database().await.unwrap();
    let bouncer = PgBouncer::start_ignoring(&direct, 10, "extra_float_digits, options")
        .await
        .unwrap();
    // The session is accepted, but its statement_timeout never reached a server.
    let db = Db::connect_to(
        Target::plain(bouncer.config(&direct)),
        4,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!db.session_options_applied().await.unwrap());
    assert!(
        Db::new(direct.clone(), 4, Duration::from_secs(5))
            .unwrap()
            .session_options_applied()
            .await
            .unwrap()
    );
    // The CLI, pointed at it as if it were the database, says so, and goes on as
    // through a pooler.
    let out = crate::service()
        .args(["token", "create", "--user", "carol", "--expires-in", "3d"])
        .args([
            "--database-url",
            &cluster::conninfo(&bouncer.config(&direct)),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", bouncer.log());
    assert!(
        stderr.contains("drops startup options") && stderr.contains("ALTER ROLE"),
        "{stderr}"
    );
}
