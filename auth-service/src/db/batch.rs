//! Cold lookups, batched when they queue: while as many lookup statements are in flight
//! as the shared connections take ([`Batcher::slots`]), further lookups wait in a
//! queue, and whoever gets the next free slot runs everything queued (up to
//! [`MAX_BATCH`]) as one statement, `WHERE token_hash = ANY($1)`.
//!
//! - **No timer.** A lookup that finds a free slot and an empty queue runs at once,
//!   alone, on the caller's task: at low load nothing waits for company or for a hop
//!   to another task. Batches form only from what is already queued.
//! - **The same answers.** Each caller gets its own row and the `now()` of the statement
//!   that read it, exactly as the single statement gives them (property-tested against
//!   it); epoch tickets are taken before the lookup is queued, so a batch is never
//!   cached past a change it missed.
//! - **Cancellation.** A batched statement runs on a task of its own with the callers'
//!   reply channels: a caller that goes away takes nobody's answer with it (a lookup
//!   run alone on its caller's task is nobody else's).
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::{Db, Lookup};
use crate::error::Result;

/// Most lookups in one statement. Measured with `auth-bench --batch-sweep`
/// (docs/benchmarks.md): batching at all is worth 14-39 % of the rate and half the p99
/// at 64 callers; between 16, 64 and 256 the 2-core machine cannot tell (one run put
/// 16 and 256 at 0.80x and 0.85x of 64, the next above it), so 64 bounds a statement's
/// parameters and its answer without a measured cost either way.
pub(crate) const MAX_BATCH: usize = 64;

/// A queued lookup and where its answer goes.
struct Pending {
    hash: [u8; 32],
    reply: oneshot::Sender<Result<Lookup>>,
}

/// The queue and the slots of the cold lookups.
pub(crate) struct Batcher {
    queue: Mutex<VecDeque<Pending>>,
    slots: Arc<Semaphore>,
    max_batch: usize,
}

impl Batcher {
    /// `slots` statements in flight at most, each of up to `max_batch` lookups. With a
    /// `max_batch` of 1 nothing is batched, and nothing is held back either: every
    /// lookup is its own statement at once, pipelined on the shared connections.
    pub(crate) fn new(slots: usize, max_batch: usize) -> Batcher {
        let slots = if max_batch <= 1 {
            Semaphore::MAX_PERMITS
        } else {
            slots.max(1)
        };
        Batcher {
            queue: Mutex::new(VecDeque::new()),
            slots: Arc::new(Semaphore::new(slots)),
            max_batch: max_batch.max(1),
        }
    }

    fn is_idle(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let n = queue.len().min(self.max_batch);
        queue.drain(..n).collect()
    }
}

impl Db {
    /// `hash`'s row and the database's clock, through the batcher.
    pub(super) async fn batched_lookup(&self, hash: [u8; 32]) -> Result<Lookup> {
        let batcher = &self.batcher;
        // A free slot and nobody queued: this lookup runs alone, on this task, without
        // a hop through the queue and a spawned task (the low-load case).
        if let Ok(slot) = batcher.slots.clone().try_acquire_owned() {
            if batcher.is_idle() {
                let answer = self.lookup_one(&hash).await;
                drop(slot);
                return answer;
            }
            drop(slot);
        }
        let (reply, mut answer) = oneshot::channel();
        batcher
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(Pending { hash, reply });
        loop {
            tokio::select! {
                biased;
                answer = &mut answer => {
                    return answer.unwrap_or_else(|_| {
                        Err(crate::error::Error::Internal("a lookup batch was dropped".into()))
                    });
                }
                permit = batcher.slots.clone().acquire_owned() => {
                    let Ok(permit) = permit else {
                        continue;
                    };
                    let batch = batcher.take();
                    if batch.is_empty() {
                        // Someone else's batch took ours: its answer is on the way.
                        drop(permit);
                        return (&mut answer).await.unwrap_or_else(|_| {
                            Err(crate::error::Error::Internal("a lookup batch was dropped".into()))
                        });
                    }
                    // The statement's span joins the trace of the caller that runs it.
                    tokio::spawn(tracing::Instrument::in_current_span(
                        self.clone().run_batch(batch, permit),
                    ));
                }
            }
        }
    }

    /// Runs one statement for `batch` and answers each caller; the slot is free again
    /// when it returns.
    async fn run_batch(self, batch: Vec<Pending>, _slot: OwnedSemaphorePermit) {
        if let [one] = batch.as_slice() {
            let hash = one.hash;
            let answer = self.lookup_one(&hash).await;
            if let Some(p) = batch.into_iter().next() {
                let _ = p.reply.send(answer);
            }
            return;
        }
        let hashes: Vec<[u8; 32]> = batch.iter().map(|p| p.hash).collect();
        match self.lookup_many(&hashes).await {
            Ok(found) => {
                for p in batch {
                    let answer = found
                        .iter()
                        .find(|(h, _)| *h == p.hash)
                        .map(|(_, lookup)| lookup.clone())
                        .ok_or_else(|| {
                            crate::error::Error::Internal("a lookup batch lost a row".into())
                        });
                    let _ = p.reply.send(answer);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_at_most_its_bound_in_arrival_order() {
        let batcher = Batcher::new(1, 3);
        let mut answers = Vec::new();
        for i in 0..5u8 {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            batcher
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(Pending {
                    hash: [i; 32],
                    reply,
                });
        }
        let first: Vec<u8> = batcher.take().iter().map(|p| p.hash[0]).collect();
        assert_eq!(first, [0, 1, 2]);
        let second: Vec<u8> = batcher.take().iter().map(|p| p.hash[0]).collect();
        assert_eq!(second, [3, 4]);
        assert!(batcher.take().is_empty());
    }
}
