//! Connections shared by concurrent read-only lookups.
//!
//! A pooled connection serves one caller at a time, so every lookup costs a round trip
//! of its own and a wake-up for each side. tokio-postgres can pipeline: queries from
//! concurrent callers on one connection are written and answered in batches. The cache
//! misses of `ValidateToken` and `LookupCurrentToken` are read-only, single-row, by a
//! unique index, so they share a few connections this way; everything that writes (or
//! may be cancelled) keeps an exclusive connection from the main pool.
//!
//! The connections come from a small pool of their own and are held in slots; a slot
//! whose connection has closed, or that a read timed out on, is refilled from that pool
//! on next use.
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use deadpool_postgres::{Object, Pool};
use tokio::sync::Mutex;

use crate::error::Result;

/// The shared connections.
pub(crate) struct Shared {
    pool: Pool,
    /// Held only to clone the connection out, or to refill the slot (so that one caller
    /// refills it while the others wait for that, not for connections of their own).
    slots: Box<[Mutex<Option<Arc<Object>>>]>,
    next: AtomicUsize,
}

impl Shared {
    /// `pool` holds as many connections as there are `slots` (the budget is exact): a
    /// closed connection's replacement waits until its last queries let go of it.
    pub(crate) fn new(pool: Pool, slots: usize) -> Shared {
        Shared {
            pool,
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// A connection to run one read on, shared with other readers.
    pub(crate) async fn get(&self) -> Result<Arc<Object>> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let mut slot = slot.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        // Empty, or its connection closed (a restart, a failover): a fresh one.
        *slot = None;
        let fresh = Arc::new(self.pool.get().await?);
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    /// Takes a connection that a read timed out on out of service: its slot is emptied,
    /// so the next reader there gets a fresh connection, and it leaves the pool (closed)
    /// when the last reader lets go of it, rather than going back to fill another slot.
    /// A connection that stopped answering (its server's machine vanished in a
    /// failover, and nothing closed the connection) still looks open, and would
    /// otherwise serve read after read until the kernel gives up on it.
    pub(crate) fn abandon(&self, client: Arc<Object>) {
        for slot in &self.slots {
            // A slot that is locked is being refilled or read from; if it still holds
            // this connection, the next read on it times out and abandons it again.
            if let Ok(mut slot) = slot.try_lock()
                && slot.as_ref().is_some_and(|held| Arc::ptr_eq(held, &client))
            {
                *slot = None;
            }
        }
        // The readers still waiting on it time out too, and the last one closes it. (If
        // one of them is answered after all, the connection was only slow, and it goes
        // back to the pool when that reader lets go.)
        if let Ok(object) = Arc::try_unwrap(client) {
            drop(Object::take(object));
        }
    }

    /// How many connections are shared.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The sessions open now.
    pub(crate) fn open(&self) -> usize {
        self.pool.status().size
    }

    /// Drops every held connection and closes the pool.
    pub(crate) fn close(&self) {
        for slot in &self.slots {
            if let Ok(mut slot) = slot.try_lock() {
                *slot = None;
            }
        }
        self.pool.close();
    }
}
