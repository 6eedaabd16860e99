//! The change feed: what the listener learns, in the order it learns it, for the
//! `WatchTokenInvalidations` streams of callers that cache answers themselves.
//!
//! The [`TokenCache`](super::TokenCache) publishes on it from the same calls that
//! change the cache, so that a watcher hears exactly what this replica's own cache
//! hears, in the same order: a heartbeat is published only after every change that
//! PostgreSQL delivered before it. A subscriber that falls more than [`CAPACITY`]
//! events behind is told so by `broadcast` (`Lagged`), and must make its watcher flush
//! rather than skip what it missed.
use tokio::sync::broadcast;

use super::Key;

/// Events a subscriber may fall behind by before it must flush.
pub(crate) const CAPACITY: usize = 4096;

/// One thing the listener learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// This token changed (or was created or deleted): forget it.
    Changed(Key),
    /// A heartbeat sent at this time (the cache's clock, µs) was heard: every change
    /// committed before then has been published before this event.
    Heard(u64),
    /// Changes may have been missed (the listener connected again, or a TRUNCATE):
    /// forget everything.
    Reset,
    /// The listener is gone: nothing published from now on can be trusted to be
    /// complete until the next [`Event::Reset`].
    Lost,
}

/// The sending side, held by the cache.
#[derive(Debug)]
pub(crate) struct Feed(broadcast::Sender<Event>);

impl Default for Feed {
    fn default() -> Self {
        Feed(broadcast::Sender::new(CAPACITY))
    }
}

impl Feed {
    /// Publishes `event` to every subscriber (none: nothing happens).
    pub(crate) fn publish(&self, event: Event) {
        let _ = self.0.send(event);
    }

    /// A new subscriber, which hears every event published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }
}
