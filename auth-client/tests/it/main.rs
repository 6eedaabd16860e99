//! Integration tests of auth-client against the real auth-service (started through
//! `server::run` by `auth_test_support`) on a real, throwaway PostgreSQL: the
//! invalidation stream and the cache, the layer on tonic and axum services, outages,
//! the allow-list, secrets in logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod allow;
mod flush;
mod layer_axum;
mod layer_tonic;
mod moving;
mod revocation;
mod secrets;

use std::time::{Duration, Instant};

use auth_client::{AuthClient, ClientOptions};
use auth_service::{db::Db, renewal::RenewalPolicy, token};
use auth_test_support::{
    cluster,
    server::{self, TestServer},
};

/// `n` replicas, each with its own pool, on one fresh database.
pub async fn replicas(n: usize) -> (tokio_postgres::Config, Vec<TestServer>) {
    let config = cluster::fresh_database().await.unwrap();
    let mut servers = Vec::new();
    for _ in 0..n {
        let db = Db::new(config.clone(), 8, Duration::from_secs(5)).unwrap();
        let settings = server::settings(RenewalPolicy::default());
        servers.push(TestServer::start(db, settings).await.unwrap());
    }
    (config, servers)
}

/// A caching client of `server`, with its own channel.
pub fn client_of(server: &TestServer) -> AuthClient {
    client_with(server, ClientOptions::default())
}

pub fn client_with(server: &TestServer, options: ClientOptions) -> AuthClient {
    AuthClient::connect_lazy(&server.url().parse().unwrap(), options).unwrap()
}

/// Polls `cond` every millisecond until it holds; fails after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the client's cache answers from memory.
pub async fn serving(client: &AuthClient) {
    wait_until("the cache serving", Duration::from_secs(10), || {
        client.cache_state().unwrap().serving
    })
    .await;
}

/// Validates `token` until the client answers it from memory. (The first answer may not
/// be kept: the stream has just started, or the token's own creation was just heard.)
pub async fn warm(client: &AuthClient, token: &str) {
    serving(client).await;
    for _ in 0..200 {
        client.validate(token).await.unwrap().unwrap();
        let before = client.cache_state().unwrap().hits;
        client.validate(token).await.unwrap().unwrap();
        if client.cache_state().unwrap().hits > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the token is never cached");
}

/// Creates a token for `user` with `scopes` directly in the database; returns the raw
/// token.
pub async fn token_with(db: &Db, user: &str, scopes: &[&str]) -> String {
    let prefix = Default::default();
    let raw = token::generate(&prefix).unwrap();
    let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    db.create_token(
        user,
        "laptop",
        &token::digest_of(&raw, &prefix),
        &scopes,
        Some(Duration::from_secs(86400)),
        "test",
    )
    .await
    .unwrap();
    raw.expose().to_owned()
}
