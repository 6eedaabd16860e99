//! The replica's one dedicated `LISTEN auth_token_changes` connection, outside the pool:
//! every notification evicts one token (or everything) from the [`TokenCache`].
//!
//! The cache serves entries only while this connection is known to be alive. It is
//! pinged every [`PING_EVERY`] (and TCP keepalives are on), so a silently dead peer
//! (half-open TCP, a failover) is noticed within a few seconds; then the cache is emptied
//! and bypassed until the connection is back and listening again.
use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_postgres::AsyncMessage;

use super::{Change, TokenCache};
use crate::db::{Target, sql, target::Tls};

/// How often the connection is pinged.
pub const PING_EVERY: Duration = Duration::from_secs(2);
/// How long a ping may take before the connection is given up.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The wait between reconnection attempts.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Starts the listener. It runs until `stop` changes.
pub fn spawn(
    target: Target,
    cache: Arc<TokenCache>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let config = with_keepalives(target.config.clone());
    tokio::spawn(async move {
        // Said once per outage, not once per retry.
        let mut said_down = false;
        loop {
            let (why, listened) = tokio::select! {
                ended = listen(&target, &config, &cache) => ended,
                _ = stop.changed() => return,
            };
            if listened {
                tracing::warn!(error = %why, "token-change listener lost: answering from the database until it is back");
                said_down = true;
            } else if !said_down {
                tracing::warn!(error = %why, "cannot listen for token changes: answering from the database until it can");
                said_down = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    })
}

/// The listener's connection settings: TCP keepalives, so that the kernel too notices a
/// peer that vanished (a TCP connection to a dead host otherwise looks idle, not broken).
fn with_keepalives(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    config
        // Names the connection in pg_stat_activity, for operators (and tests).
        .application_name("auth-service-listener")
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    config
}

/// One connection's life: connect, LISTEN, resume the cache, then evict on every
/// notification until the connection fails. Returns why it ended, and whether it got as
/// far as listening. The cache is off again when it returns.
async fn listen(
    target: &Target,
    config: &tokio_postgres::Config,
    cache: &TokenCache,
) -> (String, bool) {
    match &target.tls {
        Tls::None => match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => listen_on(client, connection, cache).await,
            Err(e) => (
                format!("cannot connect: {}", crate::error::chain(&e)),
                false,
            ),
        },
        Tls::Rustls(tls) => match config.connect(tls.clone()).await {
            Ok((client, connection)) => listen_on(client, connection, cache).await,
            Err(e) => (
                format!("cannot connect: {}", crate::error::chain(&e)),
                false,
            ),
        },
    }
}

/// Listens on an established connection until it fails.
async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    cache: &TokenCache,
) -> (String, bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The connection's messages, notifications among them, on a task of their own; the
    // channel closes when the connection ends.
    let (tx, mut notifications) = mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return String::from("listener stopped");
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        String::from("the server closed the connection")
    });
    let ended = async {
        if let Err(e) = client.batch_execute(sql::LISTEN_TOKEN_CHANGES).await {
            return (format!("LISTEN failed: {e}"), false);
        }
        // Listening from here on: anything cached before may have missed a change.
        cache.resume();
        tracing::info!("listening for token changes: the cache is on");
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                payload = notifications.recv() => match payload {
                    Some(payload) => match Change::parse(&payload) {
                        Some(Change::One(key)) => cache.evict(&key),
                        Some(Change::All) => cache.resume(),
                        None => tracing::warn!(payload = %payload.chars().take(80).collect::<String>(), "ignoring an unexpected token-change notification"),
                    },
                    None => return (String::from("connection closed"), true),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query(sql::PING)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return (format!("ping failed: {e}"), true),
                        Err(_) => return (format!("no answer to a ping within {PING_TIMEOUT:?}"), true),
                    }
                }
            }
        }
    };
    let ended = ended.await;
    cache.flush();
    driver.abort();
    ended
}
