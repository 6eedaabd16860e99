//! The in-process cache of token lookups, keyed by the token's SHA-256, that lets
//! `ValidateToken` and `LookupCurrentToken` answer from memory.
//!
//! Correctness rests on four rules:
//! - **Invalidation, not expiry.** Every change to a token is announced by a database
//!   trigger (`pg_notify`), and [`listener`] evicts it on every replica at once. The TTL
//!   is only a safety net.
//! - **A bound on staleness, enforced.** An entry is served only while the listener is
//!   provably current: every [`HEARTBEAT_PER_BOUND`]th of `--cache-max-staleness` the
//!   replica sends a heartbeat `NOTIFY` of its own through its database connection, and
//!   the listening connection hears it. PostgreSQL delivers notifications in commit
//!   order, so once a heartbeat sent at T has been heard, every change committed before
//!   T has been heard (and applied: evictions are applied as they are read). The cache
//!   answers only while the newest heard heartbeat was sent less than the bound ago;
//!   otherwise the lookup goes to the database (counted as a bypass), and the cache
//!   resumes with the next heartbeat. A cached answer is therefore never older than the
//!   bound, however slow the listener, the network or the database.
//! - **No listener, no cache.** While the listening connection is down, a notification
//!   may be missed, so the cache is emptied and bypassed until it listens again.
//! - **No stale insert.** A lookup that raced a change must not insert what it read
//!   before the change. Every notification advances an epoch; a loader notes the epoch
//!   before its query and, after inserting, removes its entry again if the epoch moved.
//!   Either the notification's eviction comes after the insert, or the loader sees the
//!   new epoch: there is no order in which a stale entry survives.
//!
//! Concurrent misses of one token share one lookup ([`flight`]), within the same bound.
//!
//! Expiry is judged on the database clock: each entry records the offset between the
//! database's `now()` and the local clock when it was loaded, so a replica whose clock is
//! skewed still expires a cached token at the moment the database would.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use tracing::Instrument;

use crate::{
    error::Result,
    metrics::{Bypass, CacheState, Eviction, Metrics},
};

mod entry;
pub(crate) mod feed;
pub(crate) mod flight;
pub mod listener;
mod store;

pub use entry::{Entry, TokenView};

/// A token's SHA-256: the cache key.
pub(crate) type Key = [u8; 32];

/// Heartbeats sent per staleness bound: at the default bound of 250 ms, one every
/// 100 ms, so that one late or lost heartbeat does not yet turn the cache off.
pub(crate) const HEARTBEAT_PER_BOUND: f64 = 2.5;

/// Cache settings (`--cache-capacity`, `--cache-ttl`, `--cache-max-staleness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most entries held; 0 turns the cache off.
    pub capacity: u64,
    /// Most bytes the entries take (estimated).
    pub max_bytes: u64,
    /// Longest an entry is kept (a safety net on top of invalidation).
    pub ttl: Duration,
    /// The bound: no entry is served unless every change committed more than this
    /// long ago has been heard.
    pub max_staleness: Duration,
    /// Added to the local clock: lets tests run a replica with a skewed clock.
    pub clock_skew: TimeDelta,
    /// Test hook: the listener's thread panics as it starts, to prove that its loss is
    /// reported and stops the replica.
    #[doc(hidden)]
    pub panic_listener: bool,
}

/// The default `--cache-capacity`.
pub(crate) const DEFAULT_CAPACITY: u64 = 100_000;

/// The default `--cache-max-bytes`: 24 MiB, which holds the default 100,000 entries.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 24 << 20;

/// The default `--cache-ttl`.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// The default `--cache-max-staleness`.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(250);

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            capacity: DEFAULT_CAPACITY,
            max_bytes: DEFAULT_MAX_BYTES,
            ttl: DEFAULT_TTL,
            max_staleness: DEFAULT_MAX_STALENESS,
            clock_skew: TimeDelta::zero(),
            panic_listener: false,
        }
    }
}

impl CacheSettings {
    /// How often this replica sends itself a heartbeat.
    pub(crate) fn heartbeat_every(&self) -> Duration {
        self.max_staleness.div_f64(HEARTBEAT_PER_BOUND)
    }
}

/// Noted before a lookup's query; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// "Never": no heartbeat heard on this connection yet.
const NEVER: u64 = 0;

/// An answer, from the cache or the database, and whether it is now cached.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) entry: Arc<Entry>,
    pub(crate) cached: bool,
}

/// See [`TokenCache::connection_open`].
pub(crate) struct OpenConnection<'a>(&'a AtomicUsize);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cache, shared by the handlers and the listener.
pub struct TokenCache {
    entries: Option<store::Store>,
    flights: flight::Flights<Loaded>,
    epoch: AtomicU64,
    listening: AtomicBool,
    /// The clock of heartbeats: microseconds since `born` (monotonic, this process).
    born: Instant,
    /// Send time of the newest heartbeat heard on the current connection, or [`NEVER`].
    heard_sent_us: AtomicU64,
    /// When it was heard, or [`NEVER`].
    heard_at_us: AtomicU64,
    max_staleness: Duration,
    clock_skew: TimeDelta,
    metrics: Arc<Metrics>,
    /// The listener's connections open now (LISTEN, heartbeat), for the budget.
    connections: AtomicUsize,
    /// Heartbeats sent without an error, ever: with none heard, LISTEN hears nothing.
    sent: AtomicU64,
    /// What watchers hear: the same events, in the same order.
    feed: feed::Feed,
}

impl TokenCache {
    /// A cache that answers nothing until [`TokenCache::resume`] (the listener) says it
    /// is listening, and a heartbeat says it is current.
    pub fn new(settings: CacheSettings, metrics: Arc<Metrics>) -> TokenCache {
        let ttl_us = u64::try_from(settings.ttl.as_micros()).unwrap_or(u64::MAX);
        let entries = (settings.capacity > 0 && settings.max_bytes > 0).then(|| {
            store::Store::new(
                settings.capacity,
                settings.max_bytes,
                ttl_us,
                metrics.clone(),
            )
        });
        TokenCache {
            entries,
            flights: flight::Flights::default(),
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            born: Instant::now(),
            heard_sent_us: AtomicU64::new(NEVER),
            heard_at_us: AtomicU64::new(NEVER),
            max_staleness: settings.max_staleness,
            clock_skew: settings.clock_skew,
            metrics,
            connections: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            feed: feed::Feed::default(),
        }
    }

    /// Counts one of the listener's connections as open until the guard is dropped
    /// (the connection closed, or the task holding it was cancelled).
    pub(crate) fn connection_open(&self) -> OpenConnection<'_> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(&self.connections)
    }

    /// A heartbeat went out without an error.
    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Heartbeats sent without an error so far.
    pub(crate) fn heartbeats_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether the cache is configured at all (`--cache-capacity` above 0).
    pub(crate) fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The local clock (plus the test skew).
    pub(crate) fn local_now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_skew
    }

    /// The heartbeat clock: microseconds since this cache was made, never 0.
    pub(crate) fn clock_us(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Why an entry may not be served now, if it may not.
    fn bypass(&self) -> Option<Bypass> {
        if !self.listening.load(Ordering::Acquire) {
            return Some(Bypass::NotListening);
        }
        let sent = self.heard_sent_us.load(Ordering::Acquire);
        let bound = u64::try_from(self.max_staleness.as_micros()).unwrap_or(u64::MAX);
        if sent == NEVER || self.clock_us().saturating_sub(sent) >= bound {
            return Some(Bypass::Stale);
        }
        None
    }

    /// The entry for `key`, while the cache is enabled, listening and current. Counts
    /// the hit, miss or bypass. Test-only: requests
    /// go through [`TokenCache::get_or_load`].
    #[cfg(test)]
    pub(crate) fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.decide(key).0
    }

    /// [`TokenCache::get`], and what happened: `hit`, `miss`, `bypass` or `off`.
    fn decide(&self, key: &Key) -> (Option<Arc<Entry>>, &'static str) {
        let Some(entries) = self.entries.as_ref() else {
            return (None, "off");
        };
        let (found, result) = match self.bypass() {
            None => {
                let found = entries.get(key, self.clock_us());
                let result = if found.is_some() { "hit" } else { "miss" };
                (found, result)
            }
            Some(cause) => {
                self.metrics.cache_bypassed(cause);
                (None, "bypass")
            }
        };
        self.metrics.cache_request(found.is_some());
        (found, result)
    }

    /// The entry for `key` from the cache, else from `load` (the database), which
    /// concurrent misses of the same key share; the answer is cached when no change to
    /// any token was announced while it was loaded.
    pub(crate) async fn get_or_load<F, Fut>(&self, key: &Key, load: F) -> Result<Loaded>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry>>,
    {
        let span = crate::trace::cache_lookup();
        let (found, result) = self.decide(key);
        span.record("auth.cache.result", result);
        if let Some(entry) = found {
            return Ok(Loaded {
                entry,
                cached: true,
            });
        }
        let (loaded, _led) = self
            .flights
            .run(key, self.max_staleness, || async {
                let ticket = self.ticket();
                let at = self.clock_us();
                let entry = Arc::new(load().await?.loaded_at(at));
                let cached = self.insert(ticket, *key, entry.clone());
                Ok(Loaded { entry, cached })
            })
            .instrument(span)
            .await;
        loaded
    }

    /// Noted before the database is asked about a key that missed.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.epoch.load(Ordering::SeqCst))
    }

    /// Caches `entry` (what the database said about `key`), unless a change was
    /// announced since `ticket` or the listener is down. Returns whether it is cached.
    pub fn insert(&self, ticket: Ticket, key: Key, entry: Arc<Entry>) -> bool {
        let Some(entries) = &self.entries else {
            return false;
        };
        let current = || {
            self.listening.load(Ordering::Acquire) && self.epoch.load(Ordering::SeqCst) == ticket.0
        };
        if !current() {
            return false;
        }
        entries.insert(key, entry);
        // A notification that arrived between the check above and the insert may have
        // found nothing to evict: look again, and take the entry back if so.
        if !current() {
            entries.remove(&key);
            return false;
        }
        true
    }

    /// A change to `key` was announced (or made here): evict it, make in-flight
    /// lookups discard what they read, and let no later caller join them.
    pub(crate) fn evict(&self, key: &Key) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.feed.publish(feed::Event::Changed(*key));
        self.flights.detach(key);
        if let Some(entries) = &self.entries
            && entries.remove(key)
        {
            self.metrics.evicted(Eviction::Notify, 1);
        }
    }

    /// A heartbeat sent at `sent_us` (see [`TokenCache::clock_us`]) was heard: every
    /// change committed before then has been heard too.
    pub(crate) fn heard(&self, sent_us: u64) {
        let now = self.clock_us();
        self.heard_sent_us.fetch_max(sent_us, Ordering::AcqRel);
        self.heard_at_us.store(now, Ordering::Release);
        self.metrics
            .heartbeat_delay(Duration::from_micros(now.saturating_sub(sent_us)));
        self.feed.publish(feed::Event::Heard(sent_us));
    }

    /// Every entry is suspect (the listener is gone, or a TRUNCATE): evict all, and
    /// answer from the database until [`TokenCache::resume`].
    pub(crate) fn flush(&self) {
        self.listening.store(false, Ordering::Release);
        self.clear();
        self.feed.publish(feed::Event::Lost);
    }

    /// The listener is (again) listening: what was cached before may have missed
    /// notifications, so start empty, and serve nothing until a heartbeat sent on this
    /// connection's watch is heard.
    pub(crate) fn resume(&self) {
        self.clear();
        self.heard_at_us.store(self.clock_us(), Ordering::Release);
        self.listening.store(true, Ordering::Release);
        self.feed.publish(feed::Event::Reset);
    }

    /// A watcher of everything published from now on (see [`feed`]).
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<feed::Event> {
        self.feed.subscribe()
    }

    /// The bound on staleness (`--cache-max-staleness`), which watchers apply too.
    pub(crate) fn max_staleness(&self) -> Duration {
        self.max_staleness
    }

    /// Whether the listener is listening (entries may be served once current).
    pub(crate) fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// Whether an entry may be served at this moment.
    pub fn current(&self) -> bool {
        self.enabled() && self.bypass().is_none()
    }

    /// Since the newest heartbeat was heard (or the connection began listening).
    pub(crate) fn since_heard(&self) -> Option<Duration> {
        let at = self.heard_at_us.load(Ordering::Acquire);
        (at != NEVER).then(|| Duration::from_micros(self.clock_us().saturating_sub(at)))
    }

    /// The cache and its listener, now (for `/metrics` and `/readyz`).
    pub fn state(&self) -> CacheState {
        let now = self.clock_us();
        let since = |t: u64| Duration::from_micros(now.saturating_sub(t));
        CacheState {
            enabled: self.enabled(),
            entries: self.entry_count(),
            listening: self.listening(),
            lag: since(self.heard_sent_us.load(Ordering::Acquire)),
            since_heard: since(self.heard_at_us.load(Ordering::Acquire)),
            connections: self.connections.load(Ordering::Relaxed),
            bytes: self.entries.as_ref().map_or(0, store::Store::bytes),
        }
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.heard_sent_us.store(NEVER, Ordering::Release);
        self.flights.detach_all();
        if let Some(entries) = &self.entries {
            let dropped = entries.clear();
            if dropped > 0 {
                self.metrics.evicted(Eviction::Flush, dropped);
            }
        }
    }

    /// How many entries are held (approximate between maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, store::Store::len)
    }
}

/// A notification payload: the hex SHA-256 of the changed token, or `*` (everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    One(Key),
    All,
}

impl Change {
    /// Parses a payload; `None` for anything else (ignored, with a log line).
    pub(crate) fn parse(payload: &str) -> Option<Change> {
        if payload == "*" {
            return Some(Change::All);
        }
        let bytes = payload.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok()?;
            key[i] = u8::from_str_radix(hex, 16).ok()?;
        }
        Some(Change::One(key))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::renewal::TokenRecord;

    fn entry(user: &str) -> Arc<Entry> {
        let record = TokenRecord {
            id: Uuid::nil(),
            user_id: user.into(),
            name: "n".into(),
            scopes: vec![],
            created_at: DateTime::UNIX_EPOCH,
            expires_at: None,
            revoked_at: None,
        };
        let now = Utc::now();
        Arc::new(Entry::new(Some(&record), now, now))
    }

    fn user(cache: &TokenCache, key: &Key) -> String {
        let entry = cache.get(key).unwrap();
        entry.judge(Utc::now()).unwrap().user_id.to_owned()
    }

    /// A cache whose listener listens and has just heard a heartbeat.
    fn listening_cache() -> TokenCache {
        let cache = TokenCache::new(CacheSettings::default(), Arc::new(Metrics::new()));
        cache.resume();
        cache.heard(cache.clock_us());
        cache
    }

    #[test]
    fn nothing_is_served_or_kept_while_not_listening() {
        let cache = TokenCache::new(CacheSettings::default(), Arc::new(Metrics::new()));
        let t = cache.ticket();
        assert!(!cache.insert(t, [1; 32], entry("a")));
        assert!(cache.get(&[1; 32]).is_none());
        cache.resume();
        cache.heard(cache.clock_us());
        let t = cache.ticket();
        assert!(cache.insert(t, [1; 32], entry("a")));
        assert!(cache.get(&[1; 32]).is_some());
        cache.flush();
        assert!(cache.get(&[1; 32]).is_none());
        cache.resume();
        assert!(
            cache.get(&[1; 32]).is_none(),
            "a resumed cache starts empty"
        );
    }

    #[test]
    fn a_change_announced_during_a_lookup_discards_what_it_read() {
        let cache = listening_cache();
        let ticket = cache.ticket();
        // The token is revoked (and announced) while the lookup's query runs.
        cache.evict(&[2; 32]);
        assert!(!cache.insert(ticket, [2; 32], entry("stale")));
        assert!(cache.get(&[2; 32]).is_none());
        // A lookup that starts afterwards caches normally.
        let ticket = cache.ticket();
        assert!(cache.insert(ticket, [2; 32], entry("fresh")));
        assert_eq!(user(&cache, &[2; 32]), "fresh");
    }

    #[test]
    fn entries_are_served_only_within_the_bound_of_the_newest_heartbeat() {
        let metrics = Arc::new(Metrics::new());
        let cache = TokenCache::new(CacheSettings::default(), metrics.clone());
        cache.resume();
        let bound = u64::try_from(DEFAULT_MAX_STALENESS.as_micros()).unwrap();
        assert!(!cache.current(), "listening, but no heartbeat heard yet");
        assert!(cache.insert(cache.ticket(), [5; 32], entry("a")));
        assert!(
            cache.get(&[5; 32]).is_none(),
            "not served before a heartbeat"
        );
        // A heartbeat sent longer ago than the bound proves too little.
        cache.heard(cache.clock_us().saturating_sub(bound + 1000));
        assert!(cache.get(&[5; 32]).is_none());
        assert_eq!(cache.entry_count(), 1, "bypassed, not flushed");
        // A recent one: served again, the same entry.
        cache.heard(cache.clock_us());
        assert_eq!(user(&cache, &[5; 32]), "a");
        // An older heartbeat heard late does not move the newest back.
        cache.heard(1);
        assert!(cache.current());
        let state = cache.state();
        assert!(state.listening && state.lag < DEFAULT_MAX_STALENESS);
        // A new connection must prove itself with a heartbeat of its own.
        cache.flush();
        cache.resume();
        assert!(!cache.current());
        let pool = deadpool_postgres::Status {
            max_size: 1,
            size: 0,
            available: 0,
            waiting: 0,
        };
        let db = crate::metrics::DbState {
            pool,
            open_connections: 0,
            max_connections: 12,
        };
        let text = metrics.encode(&db, &cache.state());
        for line in [
            r#"auth_cache_bypasses_total{cause="stale"} 2"#,
            r#"auth_cache_requests_total{result="hit"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }

    #[tokio::test]
    async fn concurrent_misses_load_once_and_a_change_forces_a_new_load() {
        let cache = Arc::new(listening_cache());
        let loads = Arc::new(AtomicU64::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let load = {
            let (loads, released) = (loads.clone(), released.clone());
            move || {
                loads.fetch_add(1, Ordering::SeqCst);
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    Ok(Arc::try_unwrap(entry("loaded")).unwrap())
                }
            }
        };
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (cache, load) = (cache.clone(), load.clone());
                tokio::spawn(async move { cache.get_or_load(&[6; 32], load).await })
            })
            .collect();
        while cache.flights.is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for c in callers {
            assert!(c.await.unwrap().unwrap().cached);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(user(&cache, &[6; 32]), "loaded");
        cache.evict(&[6; 32]);
        let again = cache.get_or_load(&[6; 32], load).await.unwrap();
        assert!(again.cached);
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_spray_of_unknown_tokens_cannot_push_out_live_ones() {
        // A tenth of the default sizes: 10,000 entries, 2.4 MiB.
        let cache = TokenCache::new(
            CacheSettings {
                capacity: 10_000,
                max_bytes: DEFAULT_MAX_BYTES / 10,
                ..CacheSettings::default()
            },
            Arc::new(Metrics::new()),
        );
        cache.resume();
        let now = Utc::now();
        let live: Vec<Key> = (0..1000u32)
            .map(|i| {
                let mut key = [1u8; 32];
                key[..4].copy_from_slice(&i.to_le_bytes());
                key
            })
            .collect();
        for key in &live {
            assert!(cache.insert(cache.ticket(), *key, entry("alive")));
        }
        let (mut hits, mut asked) = (0, 0);
        // 30,000 made-up tokens (a tenth of 300,000), each looked up and cached as
        // unknown, while the live ones are validated in a loop.
        for i in 0..30_000u32 {
            let mut unknown = [2u8; 32];
            unknown[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(
                cache.ticket(),
                unknown,
                Arc::new(Entry::new(None, now, now)),
            );
            if i % 10 == 0 {
                cache.heard(cache.clock_us());
                let key = &live[(i as usize / 10) % live.len()];
                asked += 1;
                hits += usize::from(cache.get(key).is_some());
            }
        }
        let ratio = hits as f64 / asked as f64;
        assert!(ratio >= 0.95, "live hit ratio {ratio}");
        let store = cache.entries.as_ref().unwrap();
        assert!(
            store.bytes() <= DEFAULT_MAX_BYTES / 10,
            "{} bytes",
            store.bytes()
        );
        assert!(
            store.negative_len() <= 1250,
            "{} negative entries",
            store.negative_len()
        );
    }

    #[test]
    fn a_disabled_cache_holds_nothing() {
        let cache = TokenCache::new(
            CacheSettings {
                capacity: 0,
                ..CacheSettings::default()
            },
            Arc::new(Metrics::new()),
        );
        cache.resume();
        assert!(!cache.insert(cache.ticket(), [4; 32], entry("a")));
        assert!(!cache.enabled());
        assert!(cache.get(&[4; 32]).is_none());
    }

    #[test]
    fn payloads() {
        let hex = "ab".repeat(32);
        assert_eq!(Change::parse(&hex), Some(Change::One([0xab; 32])));
        assert_eq!(Change::parse("*"), Some(Change::All));
        for bad in ["", "zz", &"g".repeat(64), &"ab".repeat(31)] {
            assert_eq!(Change::parse(bad), None, "{bad}");
        }
    }
}
