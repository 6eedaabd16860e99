//! The in-process cache of token lookups, keyed by the token's SHA-256, that lets
//! `ValidateToken` and `LookupCurrentToken` answer from memory.
//!
//! Correctness rests on three rules:
//! - **Invalidation, not expiry.** Every change to a token is announced by a database
//!   trigger (`pg_notify`), and [`listener`] evicts it on every replica at once. The TTL
//!   is only a safety net.
//! - **No listener, no cache.** While the listening connection is down, a notification
//!   may be missed, so the cache is emptied and bypassed until it listens again.
//! - **No stale insert.** A lookup that raced a change must not insert what it read
//!   before the change. Every notification advances an epoch; a loader notes the epoch
//!   before its query and, after inserting, removes its entry again if the epoch moved.
//!   Either the notification's eviction comes after the insert, or the loader sees the
//!   new epoch: there is no order in which a stale entry survives.
//!
//! Expiry is judged on the database clock: each entry records the offset between the
//! database's `now()` and the local clock when it was loaded, so a replica whose clock is
//! skewed still expires a cached token at the moment the database would.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use moka::{notification::RemovalCause, sync::Cache};

use crate::metrics::{Eviction, Metrics};

mod entry;
pub mod listener;

pub use entry::{Entry, TokenView};

/// A token's SHA-256: the cache key.
pub type Key = [u8; 32];

/// Cache settings (`--cache-capacity`, `--cache-ttl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most entries held; 0 turns the cache off.
    pub capacity: u64,
    /// Longest an entry is kept (a safety net on top of invalidation).
    pub ttl: Duration,
    /// Added to the local clock: lets tests run a replica with a skewed clock.
    pub clock_skew: TimeDelta,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            capacity: 100_000,
            ttl: Duration::from_secs(300),
            clock_skew: TimeDelta::zero(),
        }
    }
}

/// Noted before a lookup's query; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// The cache, shared by the handlers and the listener.
pub struct TokenCache {
    entries: Option<Cache<Key, Arc<Entry>>>,
    epoch: AtomicU64,
    listening: AtomicBool,
    clock_skew: TimeDelta,
    metrics: Arc<Metrics>,
}

impl TokenCache {
    /// A cache that answers nothing until [`TokenCache::resume`] (the listener) says it
    /// is listening.
    pub fn new(settings: CacheSettings, metrics: Arc<Metrics>) -> TokenCache {
        let entries = (settings.capacity > 0).then(|| {
            let evictions = metrics.clone();
            Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl)
                .eviction_listener(move |_key, _value, cause| match cause {
                    RemovalCause::Expired => evictions.evicted(Eviction::Ttl, 1),
                    RemovalCause::Size => evictions.evicted(Eviction::Capacity, 1),
                    // Explicit removals are counted where they are made (notify, flush);
                    // a replaced entry did not leave.
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                })
                .build()
        });
        TokenCache {
            entries,
            epoch: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            clock_skew: settings.clock_skew,
            metrics,
        }
    }

    /// Whether the cache is configured at all (`--cache-capacity` above 0).
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The local clock (plus the test skew).
    pub fn local_now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_skew
    }

    /// The entry for `key`, while the cache is enabled and listening. Counts the hit or
    /// miss.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let entries = self.entries.as_ref()?;
        let found = if self.listening.load(Ordering::Acquire) {
            entries.get(key)
        } else {
            None
        };
        self.metrics.cache_request(found.is_some());
        found
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
            entries.invalidate(&key);
            return false;
        }
        true
    }

    /// A change to `key` was announced (or made here): evict it, and make in-flight
    /// lookups discard what they read.
    pub fn evict(&self, key: &Key) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(entries) = &self.entries
            && entries.remove(key).is_some()
        {
            self.metrics.evicted(Eviction::Notify, 1);
        }
    }

    /// Every entry is suspect (the listener is gone, or a TRUNCATE): evict all, and
    /// answer from the database until [`TokenCache::resume`].
    pub fn flush(&self) {
        self.listening.store(false, Ordering::Release);
        self.clear();
    }

    /// The listener is (again) listening: what was cached before may have missed
    /// notifications, so start empty.
    pub fn resume(&self) {
        self.clear();
        self.listening.store(true, Ordering::Release);
    }

    /// Whether entries may currently be served.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(entries) = &self.entries {
            entries.run_pending_tasks();
            let dropped = entries.entry_count();
            entries.invalidate_all();
            if dropped > 0 {
                self.metrics.evicted(Eviction::Flush, dropped);
            }
        }
    }

    /// How many entries are held (approximate between maintenance runs).
    pub fn entry_count(&self) -> u64 {
        self.entries.as_ref().map_or(0, |e| {
            e.run_pending_tasks();
            e.entry_count()
        })
    }
}

/// A notification payload: the hex SHA-256 of the changed token, or `*` (everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    One(Key),
    All,
}

impl Change {
    /// Parses a payload; `None` for anything else (ignored, with a log line).
    pub fn parse(payload: &str) -> Option<Change> {
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
    #![allow(clippy::unwrap_used)]
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

    fn listening_cache() -> TokenCache {
        let cache = TokenCache::new(CacheSettings::default(), Arc::new(Metrics::new()));
        cache.resume();
        cache
    }

    #[test]
    fn nothing_is_served_or_kept_while_not_listening() {
        let cache = TokenCache::new(CacheSettings::default(), Arc::new(Metrics::new()));
        let t = cache.ticket();
        assert!(!cache.insert(t, [1; 32], entry("a")));
        assert!(cache.get(&[1; 32]).is_none());
        cache.resume();
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
