//! Batched cold lookups give exactly what single ones give: a property test over
//! tokens in every state (live, revoked, expired, never expiring, with scopes) and
//! unknown hashes, in random batches with duplicates, prepared (a direct session) and
//! unnamed (through a pooler); and 1,000 concurrent lookups through the batcher, each
//! answered with its own row. On a direct session the lookups are prepared once per
//! connection, and a schema change under a prepared lookup costs a retry, not an error.
use std::time::Duration;

use auth_service::{
    db::{Db, Target},
    metrics::{DbState, Metrics},
    token,
};
use auth_test_support::{cluster, fixtures, http::metric};
use proptest::prelude::*;

async fn tokens(db: &Db) -> Vec<[u8; 32]> {
    let prefix = Default::default();
    let mut hashes = Vec::new();
    for (secs, revoke) in [
        (86400.0, false),
        (-60.0, false),
        (86400.0, true),
        (3600.0, false),
    ] {
        let (id, raw) = fixtures::token_expiring_in(db, secs).await;
        if revoke {
            db.revoke_by_id(id, "test").await.unwrap();
        }
        hashes.push(token::parse(&prefix, &raw).unwrap().hash);
    }
    let (_, never) = fixtures::create_token(db, "nobody", None).await.unwrap();
    hashes.push(token::parse(&prefix, &never).unwrap().hash);
    // Unknown hashes.
    hashes.extend([[0u8; 32], [0xff; 32], [7; 32]]);
    hashes
}

#[test]
fn a_batch_answers_what_single_lookups_answer() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (db, unnamed, hashes) = runtime.block_on(async {
        let config = cluster::fresh_database().await.unwrap();
        let db = Db::new(config.clone(), 8, Duration::from_secs(5)).unwrap();
        let unnamed = Db::through_pooler(Target::plain(config), 8, Duration::from_secs(5)).unwrap();
        let hashes = tokens(&db).await;
        (db, unnamed, hashes)
    });
    let n = hashes.len();
    proptest!(ProptestConfig::with_cases(64), |(picks in proptest::collection::vec(0..n, 1..40))| {
        let batch: Vec<[u8; 32]> = picks.iter().map(|&i| hashes[i]).collect();
        runtime.block_on(async {
            let many = db.lookup_many(&batch).await.unwrap();
            for h in &batch {
                let (_, from_batch) = many.iter().find(|(k, _)| k == h).expect("every hash answered");
                let alone = db.lookup_one(h).await.unwrap();
                prop_assert_eq!(&from_batch.record, &alone.record);
                prop_assert!(from_batch.db_now <= alone.db_now);
                let unprepared = unnamed.lookup_one(h).await.unwrap();
                prop_assert_eq!(&unprepared.record, &alone.record);
            }
            let unprepared = unnamed.lookup_many(&batch).await.unwrap();
            for (h, found) in &unprepared {
                let (_, prepared) = many.iter().find(|(k, _)| k == h).expect("the same hashes");
                prop_assert_eq!(&found.record, &prepared.record);
            }
            let mut distinct = batch.clone();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(many.len(), distinct.len(), "one row per distinct hash");
            Ok(())
        })?;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_lookups_through_the_batcher_each_get_their_own_row() {
    // Four connections: two shared, so the batcher has few slots and must batch.
    let db = Db::new(
        cluster::fresh_database().await.unwrap(),
        4,
        Duration::from_secs(5),
    )
    .unwrap();
    let hashes = tokens(&db).await;
    let mut expected = Vec::new();
    for h in &hashes {
        expected.push(db.lookup_one(h).await.unwrap().record);
    }
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let (db, h) = (db.clone(), hashes[i % hashes.len()]);
            tokio::spawn(async move {
                let digest = token::TokenDigest {
                    hash: h,
                    display_prefix: String::new(),
                };
                db.lookup(&digest).await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let found = c.await.unwrap().unwrap();
        assert_eq!(found.record, expected[i % hashes.len()], "call {i}");
    }
    let mut metrics = Metrics::new();
    metrics.register_statements(db.statement_seconds().clone());
    let text = metrics.encode(
        &DbState {
            pool: db.pool().status(),
            open_connections: 0,
            max_connections: 4,
        },
        &Default::default(),
    );
    let count = |s: &str| {
        metric(
            &text,
            &format!(r#"auth_db_statement_duration_seconds_count{{statement="{s}"}}"#),
        )
    };
    let (batches, singles) = (count("lookup_batch"), count("lookup"));
    eprintln!("1000 concurrent lookups: {batches} batch statements, {singles} single ones");
    assert!(batches > 0.0, "queued lookups were batched");
    assert!(batches + singles < 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_prepared_once_per_direct_session_and_never_through_a_pooler() {
    let config = cluster::fresh_database().await.unwrap();
    // Four connections: one shared reader, so every read lands on the same session.
    let direct = Db::new(config.clone(), 4, Duration::from_secs(5)).unwrap();
    let hashes = tokens(&direct).await;
    assert!(direct.session_options_applied().await.unwrap());
    assert_eq!(direct.prepared_on_a_reader().await.unwrap(), 0);
    for h in &hashes {
        direct.lookup_one(h).await.unwrap();
    }
    direct.lookup_many(&hashes).await.unwrap();
    direct.lookup_many(&hashes[..2]).await.unwrap();
    assert_eq!(
        direct.prepared_on_a_reader().await.unwrap(),
        2,
        "the single and the batched lookup, each prepared once on the reader"
    );

    // Through a pooler nothing is prepared: the next statement may run on another
    // server connection, where a named one would be missing or someone else's.
    let pooled = Db::through_pooler(Target::plain(config), 4, Duration::from_secs(5)).unwrap();
    assert!(!pooled.session_options_applied().await.unwrap());
    for h in &hashes {
        pooled.lookup_one(h).await.unwrap();
    }
    pooled.lookup_many(&hashes).await.unwrap();
    assert_eq!(pooled.prepared_on_a_reader().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_under_a_prepared_lookup_costs_a_retry_not_an_error() {
    let config = cluster::fresh_database().await.unwrap();
    let db = Db::new(config.clone(), 4, Duration::from_secs(5)).unwrap();
    let hashes = tokens(&db).await;
    let before = db.lookup_one(&hashes[0]).await.unwrap();
    let batch_before = db.lookup_many(&hashes).await.unwrap();
    // A newer replica's migration changes the type of a column the lookup returns: the
    // prepared plans' result type no longer matches ("cached plan must not change
    // result type").
    let (client, task) = cluster::connect(&config).await.unwrap();
    client
        .batch_execute(
            "DROP TRIGGER tokens_changed ON tokens;
             ALTER TABLE tokens ALTER COLUMN name TYPE varchar(200)",
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let after = db.lookup_one(&hashes[0]).await.unwrap();
    assert_eq!(after.record, before.record);
    let batch_after = db.lookup_many(&hashes).await.unwrap();
    for (h, found) in &batch_after {
        let (_, was) = batch_before.iter().find(|(k, _)| k == h).unwrap();
        assert_eq!(found.record, was.record);
    }
    // Prepared afresh for the new plans; the stale ones were closed, not leaked.
    db.lookup_one(&hashes[1]).await.unwrap();
    assert_eq!(db.prepared_on_a_reader().await.unwrap(), 2);
}
