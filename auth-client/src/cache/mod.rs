//! The caller's cache of `ValidateToken` answers, keyed by the token's SHA-256, kept
//! correct by the service's `WatchTokenInvalidations` stream ([`watch`]) under the
//! service's own rules:
//!
//! - **Invalidation, not expiry.** Every change to a token (created, renewed, revoked,
//!   deleted) arrives on the stream, in the order the service heard it, and evicts the
//!   entry. The TTL is a safety net.
//! - **A bound on staleness, enforced.** Each heartbeat of the stream says how far
//!   behind the database it is (`lag`): hearing it proves every change committed before
//!   `receipt - lag` has arrived. Entries are served only while that point is less than
//!   the service's `--cache-max-staleness` (sent with the heartbeats) ago; otherwise
//!   the call goes to the service, and the cache resumes with the next heartbeat.
//! - **No stream, no cache.** A stream that breaks, falls silent, or says the service
//!   itself is not current stops the cache at once. A new stream starts from an empty
//!   cache, and so does a `flush` (the service reconnected to its database, a
//!   TRUNCATE, or the stream fell behind).
//! - **No stale insert.** An answer is cached only if no change to its token (and no
//!   flush) arrived from the bound before the request was sent until after the insert:
//!   the [`Ticket`] is the request's start, and the window reaches back because the
//!   answering replica may itself answer from a cache up to the bound behind, so a
//!   change heard here just before the request may not be in the answer yet.
//! - **One clock.** Expiry is judged on the service's clock: each answer carries the
//!   service's `now`, and the entry keeps its offset from the local clock (taken at the
//!   request's start, so that a token expires here no later than there).
//! - **An outage.** While the service cannot answer at all, a live token seen current
//!   at most [`CacheSettings::outage_grace`] ago (30 s by default) is still accepted,
//!   and an expired or revoked one still refused; everything else is unavailable. See
//!   docs/client.md for why this bound and not "no stream, no cache" there too.
//!
//! Concurrent misses of one token share one call ([`flight`]), within the same bound.
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use crate::outcome::{Identity, Outcome, Rejection};

pub(crate) mod flight;
mod stats;
pub(crate) mod watch;

use stats::Stat;

/// A token's SHA-256: the cache key, and what the stream names.
pub type Key = [u8; 32];

/// A cached answer.
pub(crate) type Answer = Result<Identity, Rejection>;

/// The bound applied before the service has said its own (its default).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(250);

/// The cache's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Most bytes the entries take (estimated): 16 MiB holds about 50,000 tokens.
    pub max_bytes: u64,
    /// Longest an entry is kept (a safety net on top of invalidation).
    pub ttl: Duration,
    /// How long after the stream was last current a cached live token is still
    /// accepted when the service cannot answer (0: never).
    pub outage_grace: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 16 << 20,
            ttl: Duration::from_secs(300),
            outage_grace: Duration::from_secs(30),
        }
    }
}

/// What the cache is doing, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheState {
    /// Entries are answered from memory now.
    pub serving: bool,
    /// Entries held.
    pub entries: u64,
    /// How old the newest proven knowledge is (`None`: none since the last flush).
    pub knowledge_age: Option<Duration>,
    /// Answers from memory, calls made, calls made because the cache could not serve,
    /// answers given from memory during an outage, and flushes, since the start.
    pub hits: u64,
    /// See `hits`.
    pub misses: u64,
    /// See `hits`.
    pub bypasses: u64,
    /// See `hits`.
    pub grace_answers: u64,
    /// See `hits`.
    pub flushes: u64,
}

/// Noted when a request starts; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

struct Entry {
    answer: Answer,
    /// The service's clock's lead over the local wall clock, µs.
    offset_us: i64,
    /// When it was inserted, on the cache's clock (for the TTL).
    loaded_us: u64,
}

impl Entry {
    fn bytes(&self) -> u32 {
        let answer = match &self.answer {
            Ok(identity) => identity.bytes(),
            Err(_) => 16,
        };
        // The key, the Arc, moka's own bookkeeping (about 200 bytes).
        u32::try_from(answer + 32 + 16 + 200).unwrap_or(u32::MAX)
    }

    /// The answer now, on the service's clock: a live token past its expiry is expired.
    fn judge(&self) -> Answer {
        if let Ok(identity) = &self.answer
            && let Some(expires_at) = identity.expires_at
            && shifted(SystemTime::now(), self.offset_us) >= expires_at
        {
            return Err(Rejection::TokenExpired);
        }
        self.answer.clone()
    }
}

fn shifted(t: SystemTime, offset_us: i64) -> SystemTime {
    let by = Duration::from_micros(offset_us.unsigned_abs());
    if offset_us >= 0 { t + by } else { t - by }
}

/// The service's clock's lead over ours: its `now` against when we asked.
pub(crate) fn offset_us(server_now: SystemTime, asked_at: SystemTime) -> i64 {
    match server_now.duration_since(asked_at) {
        Ok(ahead) => i64::try_from(ahead.as_micros()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// "Never": no knowledge proven since the last flush.
const NEVER: u64 = 0;

/// The cache, shared by the client's calls and the stream's task.
pub(crate) struct LocalCache {
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    pub(crate) flights: flight::Flights<Outcome<Identity>>,
    born: Instant,
    /// Every change committed before this point (µs on [`LocalCache::now_us`]) has
    /// arrived; [`NEVER`] since the last flush.
    known_us: AtomicU64,
    /// The active stream vouches for its heartbeats (else entries are not served).
    current: AtomicBool,
    /// The service's bound, µs.
    bound_us: AtomicU64,
    /// The last flush (or stream start), µs.
    reset_us: AtomicU64,
    /// Tokens invalidated lately, and when (µs); pruned to the insert window.
    recent: Mutex<HashMap<Key, u64>>,
    grace: Duration,
    ttl_us: u64,
    stats: stats::Stats,
}

impl LocalCache {
    pub(crate) fn new(settings: CacheSettings) -> LocalCache {
        // The TTL is checked on read against the entry's own insert time, on the clock
        // `serving` has just read: moka's own expiry would read a clock again on every
        // hit, and run a timer wheel.
        let entries = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|_: &Key, entry: &Arc<Entry>| entry.bytes())
            .build();
        LocalCache {
            entries,
            flights: flight::Flights::default(),
            // Aged a minute, so that "a lag before this cache was made" is a time it can
            // name (a fresh cache must not take an old heartbeat for a recent one).
            born: Instant::now()
                .checked_sub(Duration::from_secs(60))
                .unwrap_or_else(Instant::now),
            known_us: AtomicU64::new(NEVER),
            current: AtomicBool::new(false),
            bound_us: AtomicU64::new(micros(DEFAULT_MAX_STALENESS)),
            reset_us: AtomicU64::new(NEVER),
            recent: Mutex::new(HashMap::new()),
            grace: settings.outage_grace,
            ttl_us: micros(settings.ttl),
            stats: Default::default(),
        }
    }

    fn count(&self, stat: Stat) {
        self.stats.count(stat);
    }

    /// Microseconds on the cache's clock (from a minute before it was made), never
    /// [`NEVER`].
    pub(crate) fn now_us(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn bound_us(&self) -> u64 {
        self.bound_us.load(Ordering::Relaxed)
    }

    /// How long a flight may be joined: the bound.
    pub(crate) fn flight_age(&self) -> Duration {
        Duration::from_micros(self.bound_us())
    }

    /// Whether entries may be answered from memory now.
    pub(crate) fn serving(&self) -> bool {
        self.serving_at(self.now_us())
    }

    fn serving_at(&self, now_us: u64) -> bool {
        let known = self.known_us.load(Ordering::Acquire);
        self.current.load(Ordering::Acquire)
            && known != NEVER
            && now_us.saturating_sub(known) < self.bound_us()
    }

    /// The entry for `key`, unless it is older than the TTL at `now_us` (then it goes).
    fn entry(&self, key: &Key, now_us: u64) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key)?;
        if now_us.saturating_sub(entry.loaded_us) >= self.ttl_us {
            self.entries.invalidate(key);
            return None;
        }
        Some(entry)
    }

    /// The answer for `key` from memory, if the cache is serving and holds one.
    pub(crate) fn get(&self, key: &Key) -> Option<Answer> {
        let now = self.now_us();
        if !self.serving_at(now) {
            self.count(Stat::Bypass);
            return None;
        }
        match self.entry(key, now) {
            Some(entry) => {
                self.count(Stat::Hit);
                Some(entry.judge())
            }
            None => {
                self.count(Stat::Miss);
                None
            }
        }
    }

    /// During an outage: the answer for `key` if it was proven at most the grace ago,
    /// and is a live token (still live on the service's clock) or a permanent refusal.
    pub(crate) fn grace(&self, key: &Key) -> Option<Answer> {
        let known = self.known_us.load(Ordering::Acquire);
        if known == NEVER || self.now_us().saturating_sub(known) >= micros(self.grace) {
            return None;
        }
        let answer = self.entry(key, self.now_us())?.judge();
        match &answer {
            Ok(_) => {}
            Err(rejection) if rejection.is_permanent() => {}
            Err(_) => return None,
        }
        self.count(Stat::Grace);
        Some(answer)
    }

    /// Noted before the request for a key that missed.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.now_us())
    }

    /// Whether a change to `key` (or a flush) arrived since the window before `ticket`.
    fn raced(&self, ticket: Ticket, key: &Key) -> bool {
        let since = ticket.0.saturating_sub(2 * self.bound_us());
        let reset = self.reset_us.load(Ordering::SeqCst);
        if !self.serving() || (reset != NEVER && reset >= since) {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.get(key).is_some_and(|at| *at >= since)
    }

    /// Caches the service's answer for `key`, asked for at `ticket`, unless it may be
    /// stale (see the module documentation). Returns whether it is cached.
    pub(crate) fn insert(&self, ticket: Ticket, key: Key, answer: Answer, offset_us: i64) -> bool {
        if self.raced(ticket, &key) {
            return false;
        }
        let entry = Entry {
            answer,
            offset_us,
            loaded_us: self.now_us(),
        };
        self.entries.insert(key, Arc::new(entry));
        // A change that arrived between the check and the insert may have found
        // nothing to evict: look again, and take the entry back if so.
        if self.raced(ticket, &key) {
            self.entries.invalidate(&key);
            return false;
        }
        true
    }

    /// These tokens changed: forget them, and refuse answers about them that may
    /// predate the change.
    pub(crate) fn invalidate(&self, keys: &[Key]) {
        let now = self.now_us();
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            let keep_after = now.saturating_sub(4 * self.bound_us());
            recent.retain(|_, at| *at >= keep_after);
            for key in keys {
                recent.insert(*key, now);
            }
        }
        for key in keys {
            self.flights.detach(key);
            self.entries.invalidate(key);
        }
    }

    /// Everything may be stale: forget it all, and prove nothing until a new heartbeat.
    pub(crate) fn flush(&self) {
        self.reset_us.store(self.now_us(), Ordering::SeqCst);
        self.current.store(false, Ordering::Release);
        self.known_us.store(NEVER, Ordering::Release);
        self.flights.detach_all();
        self.entries.invalidate_all();
        self.count(Stat::Flush);
    }

    /// A heartbeat of the active stream, heard now.
    pub(crate) fn heartbeat(&self, current: bool, lag: Duration, bound: Option<Duration>) {
        if let Some(bound) = bound.filter(|b| !b.is_zero()) {
            self.bound_us.store(micros(bound), Ordering::Relaxed);
        }
        if !current {
            // The service cannot tell: stop serving, but keep what was proven (an
            // outage may still use it, within the grace).
            self.current.store(false, Ordering::Release);
            return;
        }
        let known = self.now_us().saturating_sub(micros(lag)).max(1);
        self.known_us.fetch_max(known, Ordering::AcqRel);
        self.current.store(true, Ordering::Release);
    }

    /// The active stream is gone: stop serving (what was proven stays, for the grace).
    pub(crate) fn lost(&self) {
        self.current.store(false, Ordering::Release);
    }

    /// The newest proven knowledge point (µs), [`NEVER`] if none.
    pub(crate) fn known_us(&self) -> u64 {
        self.known_us.load(Ordering::Acquire)
    }

    /// Drops the entries once the grace is over and nothing can use them.
    pub(crate) fn expire_grace(&self) {
        let known = self.known_us();
        if !self.current.load(Ordering::Acquire)
            && (known == NEVER || self.now_us().saturating_sub(known) >= micros(self.grace))
        {
            self.entries.invalidate_all();
        }
    }

    pub(crate) fn state(&self) -> CacheState {
        self.entries.run_pending_tasks();
        let known = self.known_us();
        let stat = |s: Stat| self.stats.get(s);
        CacheState {
            serving: self.serving(),
            entries: self.entries.entry_count(),
            knowledge_age: (known != NEVER)
                .then(|| Duration::from_micros(self.now_us().saturating_sub(known))),
            hits: stat(Stat::Hit),
            misses: stat(Stat::Miss),
            bypasses: stat(Stat::Bypass),
            grace_answers: stat(Stat::Grace),
            flushes: stat(Stat::Flush),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The SHA-256 of a token: the key the cache and the stream use.
pub fn key(token: &str) -> Key {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests;
