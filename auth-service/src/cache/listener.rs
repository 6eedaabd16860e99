//! The replica's one dedicated `LISTEN` connection, outside the pool, and the heartbeats
//! that prove it current.
//!
//! - **Evictions never wait.** The connection's own driver task applies each token
//!   change to the [`TokenCache`] the moment it reads it: no channel, ping or other await
//!   sits between the socket and the eviction.
//! - **Heartbeats.** A second connection (through the pool's address, so through a
//!   PgBouncer when there is one) sends `pg_notify` on a channel of this replica's own
//!   every [`CacheSettings::heartbeat_every`], carrying its send time. Hearing one sent
//!   at T proves every change committed before T heard; the cache serves entries only
//!   while that T is recent ([`TokenCache::heard`]).
//! - **Isolation.** Both connections run on a thread of their own with a
//!   current-thread runtime, so that a saturated request runtime cannot delay an
//!   eviction or a heartbeat.
//! - **Losing it.** A connection that fails, or hears no heartbeat for
//!   [`SILENCE_LIMIT`] (a half-open TCP connection, a stalled backend), is dropped: the
//!   cache is emptied and bypassed until a new connection listens and hears one.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{oneshot, watch};

use super::{CacheSettings, Change, TokenCache};
use crate::db::{Target, sql};

/// How long the listening connection may hear no heartbeat before it is given up. Late
/// heartbeats already turned the cache off after `--cache-max-staleness`; this is when
/// the connection itself is presumed dead and replaced.
pub(crate) const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// One heartbeat's time limit before its connection is replaced.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait between reconnection attempts.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The running listener; [`Listener::join`] waits for it after `stop`.
pub struct Listener {
    done: oneshot::Receiver<()>,
}

impl Listener {
    /// Waits until the listener's thread has ended; an error if it panicked.
    pub async fn join(self) -> Result<(), String> {
        self.done
            .await
            .map_err(|_| String::from("the token-change listener's thread panicked"))
    }
}

/// Starts the listener on a thread of its own: it listens on `listen`, sends heartbeats
/// through `send`, and runs until `stop` changes (or its sender is dropped).
pub fn spawn(
    listen: Target,
    send: Target,
    cache: Arc<TokenCache>,
    settings: CacheSettings,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Listener> {
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name("auth-listener".into())
        .spawn(move || {
            if settings.panic_listener {
                panic!("the listener's test hook: panicking as asked");
            }
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(run(listen, send, cache, settings, stop)),
                Err(error) => {
                    tracing::error!(%error, "cannot start the token-change listener: the cache stays off");
                }
            }
            let _ = done_tx.send(());
        })?;
    Ok(Listener { done })
}

async fn run(
    listen: Target,
    send: Target,
    cache: Arc<TokenCache>,
    settings: CacheSettings,
    mut stop: watch::Receiver<bool>,
) {
    let channel = heartbeat_channel();
    let sender = tokio::spawn(heartbeats(
        send,
        channel.clone(),
        cache.clone(),
        settings.heartbeat_every(),
    ));
    let config = with_keepalives(listen.config.clone());
    // Said once per outage, not once per retry.
    let mut said_down = false;
    loop {
        let (why, listened) = tokio::select! {
            ended = listen_once(&listen, &config, &cache, &channel) => ended,
            _ = stop.changed() => break,
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
            _ = stop.changed() => break,
        }
    }
    sender.abort();
}

/// Waits, at startup, until the listener hears its first heartbeat, up to `limit`.
/// Fails when heartbeats went out but none came back: the LISTEN connection hears
/// nothing (a transaction-pooling PgBouncer in front of it), so revocations would never
/// reach this replica. When none could even be sent (the database is down), it returns
/// and the cache stays off until they can.
pub(crate) async fn hears_itself(cache: &TokenCache, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cache.current() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match cache.heartbeats_sent() {
        0 => {
            tracing::warn!(waited = ?limit, "no heartbeat could be sent yet: the cache stays off until the database answers");
            Ok(())
        }
        sent => Err(format!(
            "the token-change listener hears no notifications: {sent} heartbeats went out \
             through --database-url within {limit:?} and none arrived on the LISTEN \
             connection. A PgBouncer in transaction or statement pooling mode cannot carry \
             LISTEN: give --database-listen-url (AUTH_SERVICE_DATABASE_LISTEN_URL) a direct \
             connection to the primary, or turn the cache off with --cache-capacity 0"
        )),
    }
}

/// A channel name of this process's own: `auth_heartbeat_` and 16 random hex digits.
fn heartbeat_channel() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness, the time and pid still tell replicas apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (u64::from(std::process::id()) ^ (nanos as u64)).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("auth_heartbeat_{hex}")
}

/// The connections' settings: TCP keepalives, so that the kernel too notices a peer that
/// vanished. (Their `application_name` is the replica's, as the pool's is.)
fn with_keepalives(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(5));
    config
}

/// One connection's life: connect, LISTEN, resume the cache, then apply every
/// notification as it is read until the connection fails or falls silent. Returns why
/// it ended, and whether it got as far as listening. The cache is off when it returns.
async fn listen_once(
    target: &Target,
    config: &tokio_postgres::Config,
    cache: &Arc<TokenCache>,
    channel: &str,
) -> (String, bool) {
    let on_notification = {
        let (cache, channel) = (cache.clone(), channel.to_owned());
        move |n: &tokio_postgres::Notification| apply(&cache, &channel, n)
    };
    let (client, mut driver) = match target.connect_listening(config, on_notification).await {
        Ok(connected) => connected,
        Err(e) => {
            return (
                format!("cannot connect: {}", crate::error::chain(&e)),
                false,
            );
        }
    };
    let open = cache.connection_open();
    let ended = async {
        if let Err(e) = client.batch_execute(&sql::listen(channel)).await {
            return (format!("LISTEN failed: {e}"), false);
        }
        // Listening from here on: anything cached before may have missed a change.
        cache.resume();
        tracing::info!("listening for token changes: the cache is on");
        let mut check = tokio::time::interval(SILENCE_LIMIT / 10);
        loop {
            tokio::select! {
                ended = &mut driver => {
                    let why = ended.unwrap_or_else(|e| format!("the connection's task failed: {e}"));
                    return (why, true);
                }
                _ = check.tick() => {
                    if cache.since_heard().is_some_and(|s| s >= SILENCE_LIMIT) {
                        return (format!("no heartbeat heard within {SILENCE_LIMIT:?}"), true);
                    }
                }
            }
        }
    };
    let ended = ended.await;
    cache.flush();
    driver.abort();
    drop(client);
    drop(open);
    ended
}

/// Acts on one notification, on the connection's driver task.
fn apply(cache: &TokenCache, heartbeats: &str, n: &tokio_postgres::Notification) {
    if n.channel() == heartbeats {
        match n.payload().parse::<u64>() {
            Ok(sent_us) => cache.heard(sent_us),
            Err(_) => tracing::warn!("ignoring a malformed heartbeat"),
        }
        return;
    }
    match Change::parse(n.payload()) {
        Some(Change::One(key)) => cache.evict(&key),
        Some(Change::All) => cache.resume(),
        None => tracing::warn!(
            payload = %n.payload().chars().take(80).collect::<String>(),
            "ignoring an unexpected token-change notification"
        ),
    }
}

/// Sends a heartbeat every `every` for as long as it runs, over a connection of its
/// own that is replaced whenever a heartbeat fails or takes longer than
/// [`SEND_TIMEOUT`]. A tick that comes while a heartbeat is still on its way is
/// skipped, not queued: a late heartbeat proves less than a fresh one.
async fn heartbeats(target: Target, channel: String, cache: Arc<TokenCache>, every: Duration) {
    let config = with_keepalives(target.config.clone());
    loop {
        match target.connect(&config).await {
            Ok((client, connection)) => {
                let open = cache.connection_open();
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    let started = Instant::now();
                    let beat = sql::heartbeat(&channel, cache.clock_us());
                    match tokio::time::timeout(SEND_TIMEOUT, client.simple_query(&beat)).await {
                        Ok(Ok(_)) => cache.sent(),
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "heartbeat failed");
                            break;
                        }
                        Err(_) => {
                            tracing::debug!(took = ?started.elapsed(), "heartbeat timed out");
                            break;
                        }
                    }
                }
                connection.abort();
                drop(client);
                drop(open);
            }
            Err(error) => tracing::debug!(%error, "heartbeat connection failed"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_channels_are_identifiers_of_their_own() {
        let (a, b) = (heartbeat_channel(), heartbeat_channel());
        assert_ne!(a, b);
        assert!(a.len() < 64, "PostgreSQL identifiers are at most 63 bytes");
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
        );
    }
}
