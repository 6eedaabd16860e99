//! Where the entries live: two compact concurrent caches (quick_cache, an S3-FIFO-like
//! policy that resists scans), bounded by bytes.
//!
//! - **Memory is the bound.** Each entry weighs its estimated bytes (the entry, its
//!   strings, the key and the cache's own slot), and the caches hold at most
//!   `--cache-max-bytes` between them. No entry weighs less than its part's bytes over
//!   its part's share of `--cache-capacity`, so that still bounds the count.
//! - **Negative answers cannot push out live tokens.** Unknown, revoked and expired
//!   answers live in a cache of their own, an eighth of the bytes: a spray of made-up
//!   tokens evicts other made-up tokens, never a live one.
//! - **The TTL** (`--cache-ttl`, a safety net behind invalidation) is checked on read
//!   against when the entry was loaded.
use std::sync::Arc;

use quick_cache::{Lifecycle, Weighter, sync::Cache};

use super::{Entry, Key};
use crate::metrics::{Eviction, Metrics};

/// The share of the bytes kept for negative answers: an eighth.
const NEGATIVE_SHARE: u64 = 8;
/// What the cache keeps per entry besides the entry: the key, the `Arc`'s header and
/// pointer, and quick_cache's slot and table index.
const SLOT_BYTES: u64 = 32 + 16 + 8 + 24;

/// An entry's weight: its bytes, and no less than the floor that bounds the count.
#[derive(Clone)]
struct Bytes {
    floor: u64,
}

impl Weighter<Key, Arc<Entry>> for Bytes {
    fn weight(&self, _key: &Key, entry: &Arc<Entry>) -> u64 {
        (entry.bytes() + SLOT_BYTES).max(self.floor)
    }
}

/// Counts what the caches evict for room.
#[derive(Clone)]
struct Evictions(Arc<Metrics>);

impl Lifecycle<Key, Arc<Entry>> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: Key, _entry: Arc<Entry>) {
        self.0.evicted(Eviction::Capacity, 1);
    }
}

type Part = Cache<Key, Arc<Entry>, Bytes, std::collections::hash_map::RandomState, Evictions>;

/// The two caches, and when an entry is too old to serve.
pub(crate) struct Store {
    live: Part,
    negative: Part,
    ttl_us: u64,
    metrics: Arc<Metrics>,
}

impl Store {
    /// At most `capacity` entries and `max_bytes` bytes (both above 0); entries older
    /// than `ttl_us` (on the cache's clock) are not served.
    pub(crate) fn new(capacity: u64, max_bytes: u64, ttl_us: u64, metrics: Arc<Metrics>) -> Store {
        // Each part holds at most its share of both bounds.
        let part = |bytes: u64, items: u64| {
            let items = items.max(1);
            Cache::with(
                usize::try_from(items).unwrap_or(usize::MAX),
                bytes.max(1),
                Bytes {
                    floor: bytes / items,
                },
                Default::default(),
                Evictions(metrics.clone()),
            )
        };
        let negative_bytes = max_bytes / NEGATIVE_SHARE;
        Store {
            live: part(max_bytes - negative_bytes, capacity),
            negative: part(negative_bytes, capacity / NEGATIVE_SHARE),
            ttl_us,
            metrics,
        }
    }

    fn part(&self, entry: &Entry) -> &Part {
        if entry.is_negative() {
            &self.negative
        } else {
            &self.live
        }
    }

    /// The entry for `key`, unless it is older than the TTL at `now_us` (then it goes).
    pub(crate) fn get(&self, key: &Key, now_us: u64) -> Option<Arc<Entry>> {
        let entry = self.live.get(key).or_else(|| self.negative.get(key))?;
        if now_us.saturating_sub(entry.loaded_at_us()) >= self.ttl_us {
            if self.part(&entry).remove(key).is_some() {
                self.metrics.evicted(Eviction::Ttl, 1);
            }
            return None;
        }
        Some(entry)
    }

    /// Caches `entry` for `key` in its part, replacing any other answer for `key`.
    pub(crate) fn insert(&self, key: Key, entry: Arc<Entry>) {
        if entry.is_negative() {
            self.live.remove(&key);
            self.negative.insert(key, entry);
        } else {
            self.negative.remove(&key);
            self.live.insert(key, entry);
        }
    }

    /// Removes `key`; whether it was there.
    pub(crate) fn remove(&self, key: &Key) -> bool {
        // Both, always: no short-circuit.
        let live = self.live.remove(key).is_some();
        let negative = self.negative.remove(key).is_some();
        live || negative
    }

    /// Removes everything; how many entries went.
    pub(crate) fn clear(&self) -> u64 {
        let n = self.len();
        self.live.clear();
        self.negative.clear();
        n
    }

    pub(crate) fn len(&self) -> u64 {
        (self.live.len() + self.negative.len()) as u64
    }

    /// The estimated bytes held.
    pub(crate) fn bytes(&self) -> u64 {
        self.live.weight() + self.negative.weight()
    }

    /// Entries held in the negative part (tests).
    #[cfg(test)]
    pub(crate) fn negative_len(&self) -> u64 {
        self.negative.len() as u64
    }
}
