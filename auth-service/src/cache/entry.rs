//! A cache entry: what a lookup found, packed small (a replica may hold 100k of them),
//! the database clock's offset when it was read, and when the token was last stamped
//! as used from this entry.
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    error::Result,
    renewal::{TokenRecord, check_live},
};

/// PostgreSQL text cannot hold a NUL, so it safely separates the packed strings.
const SEP: char = '\0';

/// Most bytes of strings kept inside the entry itself, without an allocation of their
/// own: a short user id, name and scope or two (`bench-12345`, `ci`, `read`) fit, which
/// saves a heap block (32 bytes or more with the allocator's header) per entry.
const INLINE: usize = 22;

/// The packed strings: inside the entry when short, else on the heap. 24 bytes either
/// way, as large as the `Box<str>` alone was with its padding.
#[derive(Debug)]
enum Text {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl Text {
    fn new(text: &str) -> Text {
        match u8::try_from(text.len()) {
            Ok(len) if text.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..text.len()].copy_from_slice(text.as_bytes());
                Text::Inline { len, bytes }
            }
            _ => Text::Heap(text.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole, so always UTF-8; never "" in practice.
            Text::Inline { len, bytes } => {
                std::str::from_utf8(bytes.get(..usize::from(*len)).unwrap_or_default())
                    .unwrap_or_default()
            }
            Text::Heap(text) => text,
        }
    }

    /// The bytes it holds outside the entry.
    fn heap_bytes(&self) -> usize {
        match self {
            Text::Inline { .. } => 0,
            Text::Heap(text) => text.len(),
        }
    }
}

/// A token's record, packed: times as microseconds, the strings in one [`Text`].
#[derive(Debug)]
struct Packed {
    id: Uuid,
    /// `i64::MAX`: never expires.
    expires_us: i64,
    /// `i64::MIN`: not revoked.
    revoked_us: i64,
    /// `user_id`, then `name`, then the scopes, separated by NUL.
    text: Text,
    user_end: u16,
    name_end: u16,
    /// Revoked or expired when it was read (in the padding after the ends).
    negative: bool,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Packed {
    fn new(r: &TokenRecord, negative: bool) -> Packed {
        let mut text = String::with_capacity(
            r.user_id.len() + r.name.len() + r.scopes.iter().map(|s| s.len() + 1).sum::<usize>(),
        );
        text.push_str(&r.user_id);
        let user_end = text.len();
        text.push_str(&r.name);
        let name_end = text.len();
        for (i, scope) in r.scopes.iter().enumerate() {
            if i > 0 {
                text.push(SEP);
            }
            text.push_str(scope);
        }
        Packed {
            id: r.id,
            expires_us: r.expires_at.map_or(i64::MAX, micros),
            revoked_us: r.revoked_at.map_or(i64::MIN, micros),
            // The database limits user ids and names to 255 characters (1020 bytes).
            user_end: u16::try_from(user_end).unwrap_or(u16::MAX),
            name_end: u16::try_from(name_end).unwrap_or(u16::MAX),
            text: Text::new(&text),
            negative,
        }
    }

    fn view(&self) -> TokenView<'_> {
        let (user_end, name_end) = (usize::from(self.user_end), usize::from(self.name_end));
        let text = self.text.as_str();
        TokenView {
            id: self.id,
            user_id: text.get(..user_end).unwrap_or(""),
            name: text.get(user_end..name_end).unwrap_or(""),
            scopes: text.get(name_end..).unwrap_or(""),
            expires_at: (self.expires_us != i64::MAX).then(|| time(self.expires_us)),
            revoked_at: (self.revoked_us != i64::MIN).then(|| time(self.revoked_us)),
        }
    }
}

/// A live token as the handlers read it, borrowed from an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenView<'a> {
    pub(crate) id: Uuid,
    pub(crate) user_id: &'a str,
    pub(crate) name: &'a str,
    scopes: &'a str,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) revoked_at: Option<DateTime<Utc>>,
}

impl<'a> TokenView<'a> {
    /// The scopes granted to the token.
    pub(crate) fn scopes(&self) -> impl Iterator<Item = &'a str> + 'a {
        let scopes = self.scopes;
        scopes.split(SEP).filter(|s| !s.is_empty())
    }
}

/// What one lookup found, as the cache keeps it.
#[derive(Debug)]
pub struct Entry {
    found: Option<Packed>,
    /// The database clock's lead over the local clock when the row was read, in µs.
    offset_us: i64,
    /// When this entry last stamped the token as used (Unix seconds, local clock).
    last_touch: AtomicI64,
    /// When it was loaded, on the cache's clock (for the TTL).
    loaded_at_us: u64,
}

/// How often a token's `last_used_at` is stamped at most, from one entry.
const TOUCH_EVERY_SECS: i64 = 60;

impl Entry {
    /// The lookup's row (`None`: no such token), read when the database said `db_now`
    /// and the local clock said `local_now`.
    pub fn new(
        record: Option<&TokenRecord>,
        db_now: DateTime<Utc>,
        local_now: DateTime<Utc>,
    ) -> Entry {
        Entry {
            found: record
                .map(|r| Packed::new(r, check_live(r.revoked_at, r.expires_at, db_now).is_err())),
            offset_us: (db_now - local_now).num_microseconds().unwrap_or(0),
            last_touch: AtomicI64::new(i64::MIN),
            loaded_at_us: 0,
        }
    }

    /// The same entry, loaded at `at_us` on the cache's clock.
    pub(crate) fn loaded_at(mut self, at_us: u64) -> Entry {
        self.loaded_at_us = at_us;
        self
    }

    /// When it was loaded, on the cache's clock.
    pub(crate) fn loaded_at_us(&self) -> u64 {
        self.loaded_at_us
    }

    /// Whether the token was unknown, revoked or expired when it was read: kept apart
    /// from live tokens.
    pub(crate) fn is_negative(&self) -> bool {
        self.found.as_ref().is_none_or(|p| p.negative)
    }

    /// The bytes it takes: itself behind its `Arc`, and its strings.
    pub(crate) fn bytes(&self) -> u64 {
        let strings = self.found.as_ref().map_or(0, |p| p.text.heap_bytes());
        (std::mem::size_of::<Entry>() + 16 + strings) as u64
    }

    /// The database's `now()`, estimated from the local clock reading `local_now`.
    pub(crate) fn db_now(&self, local_now: DateTime<Utc>) -> DateTime<Utc> {
        local_now + TimeDelta::microseconds(self.offset_us)
    }

    /// The live token, or why there is none (unknown, revoked, expired), judged at the
    /// database time `now`.
    pub(crate) fn judge(&self, now: DateTime<Utc>) -> Result<TokenView<'_>> {
        let view = self
            .found
            .as_ref()
            .ok_or(crate::error::Error::TokenUnknown)?
            .view();
        check_live(view.revoked_at, view.expires_at, now)?;
        Ok(view)
    }

    /// Whether to stamp the token as used now (local Unix seconds): at most once a
    /// minute per entry, decided by one atomic, off any lock.
    pub(crate) fn should_touch(&self, now_secs: i64) -> bool {
        let last = self.last_touch.load(Ordering::Relaxed);
        now_secs.saturating_sub(last) >= TOUCH_EVERY_SECS
            && self
                .last_touch
                .compare_exchange(last, now_secs, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use auth_api::ErrorReason;

    use super::*;

    fn record() -> TokenRecord {
        TokenRecord {
            id: Uuid::from_u128(7),
            user_id: "alice".into(),
            name: "ci runner".into(),
            scopes: vec!["read".into(), "billing:write".into()],
            created_at: DateTime::UNIX_EPOCH,
            expires_at: DateTime::from_timestamp(2_000_000_000, 123_000),
            revoked_at: None,
        }
    }

    #[test]
    fn packing_keeps_every_field() {
        let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let entry = Entry::new(Some(&record()), now, now);
        let view = entry.judge(now).unwrap();
        assert_eq!(view.id, Uuid::from_u128(7));
        assert_eq!((view.user_id, view.name), ("alice", "ci runner"));
        assert_eq!(view.scopes().collect::<Vec<_>>(), ["read", "billing:write"]);
        assert_eq!(view.expires_at, record().expires_at);
        let mut none = record();
        none.scopes.clear();
        none.expires_at = None;
        let entry = Entry::new(Some(&none), now, now);
        let view = entry.judge(now).unwrap();
        assert_eq!(view.scopes().count(), 0);
        assert_eq!(view.expires_at, None);
    }

    #[test]
    fn short_strings_live_in_the_entry_and_long_ones_on_the_heap() {
        assert_eq!(std::mem::size_of::<Text>(), 24);
        assert_eq!(
            std::mem::size_of::<Entry>(),
            88,
            "one Arc block of 104 bytes"
        );
        let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let short = Entry::new(Some(&record()), now, now);
        assert!(!short.is_negative());
        let mut long = record();
        long.user_id = "a-rather-long-user@example.com".into();
        let long_entry = Entry::new(Some(&long), now, now);
        let (short_view, long_view) = (short.judge(now).unwrap(), long_entry.judge(now).unwrap());
        assert_eq!(short_view.user_id, "alice");
        assert_eq!(long_view.user_id, "a-rather-long-user@example.com");
        assert_eq!(long_view.name, "ci runner");
        assert_eq!(
            long_view.scopes().collect::<Vec<_>>(),
            ["read", "billing:write"]
        );
        let base = Entry::new(None, now, now).bytes();
        // "alice" "ci runner" "read\0billing:write": 32 bytes, on the heap.
        assert_eq!(short.bytes(), base + 32);
        assert_eq!(long_entry.bytes(), base + 57);
        let mut tiny = record();
        tiny.scopes = vec!["read".into()];
        let tiny = Entry::new(Some(&tiny), now, now);
        assert_eq!(tiny.bytes(), base, "18 bytes of strings take no heap");
        assert_eq!(
            tiny.judge(now).unwrap().scopes().collect::<Vec<_>>(),
            ["read"]
        );
    }

    #[test]
    fn judged_like_the_database_would() {
        let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let unknown = Entry::new(None, now, now);
        assert_eq!(
            unknown.judge(now).unwrap_err().reason(),
            Some(ErrorReason::TokenUnknown)
        );
        let mut revoked = record();
        revoked.revoked_at = Some(now);
        let entry = Entry::new(Some(&revoked), now, now);
        assert_eq!(
            entry.judge(now).unwrap_err().reason(),
            Some(ErrorReason::TokenRevoked)
        );
        let entry = Entry::new(Some(&record()), now, now);
        let expiry = record().expires_at.unwrap();
        assert_eq!(
            entry.judge(expiry).unwrap_err().reason(),
            Some(ErrorReason::TokenExpired)
        );
    }

    #[test]
    fn the_offset_carries_the_database_clock() {
        let db_now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let local_now = db_now - TimeDelta::hours(1);
        let entry = Entry::new(None, db_now, local_now);
        let later = local_now + TimeDelta::seconds(5);
        assert_eq!(entry.db_now(later), db_now + TimeDelta::seconds(5));
    }

    #[test]
    fn touched_at_most_once_a_minute() {
        let entry = Entry::new(None, DateTime::UNIX_EPOCH, DateTime::UNIX_EPOCH);
        assert!(entry.should_touch(1000));
        assert!(!entry.should_touch(1030));
        assert!(entry.should_touch(1060));
    }
}
