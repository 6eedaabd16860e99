//! `last_used_at`, written off the request path: handlers hand token ids to a
//! background task that batches them into one UPDATE, at most about once a minute
//! per token. A full queue drops the stamp rather than slowing a caller down.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use uuid::Uuid;

use crate::db::Db;

/// How often one token's `last_used_at` is written at most.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(60);
const QUEUE: usize = 4096;
const BATCH: usize = 512;

/// The handlers' side: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct Toucher {
    tx: mpsc::Sender<Uuid>,
    // A std Mutex: held for a map lookup only, never across an await.
    recent: Arc<Mutex<HashMap<Uuid, Instant>>>,
}

impl Toucher {
    /// Queues a stamp for a token whose caller already keeps it to about once a minute
    /// (a cache entry does).
    pub(crate) fn send(&self, token_id: Uuid) {
        if self.tx.try_send(token_id).is_err() {
            tracing::debug!("last-used queue full; stamp dropped");
        }
    }

    /// Notes that the token was just used.
    pub(crate) fn touch(&self, token_id: Uuid) {
        let now = Instant::now();
        {
            let Ok(mut recent) = self.recent.lock() else {
                return;
            };
            if recent
                .get(&token_id)
                .is_some_and(|t| now.duration_since(*t) < MIN_INTERVAL)
            {
                return;
            }
            if recent.len() >= 100_000 {
                recent.retain(|_, t| now.duration_since(*t) < MIN_INTERVAL);
            }
            recent.insert(token_id, now);
        }
        self.send(token_id);
    }
}

/// Starts the writer. It ends, after writing what is queued, once every `Toucher`
/// clone is dropped or `stop` resolves (a connection still open after the shutdown
/// grace period may keep a clone alive).
pub(crate) fn spawn(
    db: Db,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Toucher, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Uuid>(QUEUE);
    let task = tokio::spawn(async move {
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let first = if stopping {
                match rx.try_recv() {
                    Ok(id) => id,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    id = rx.recv() => match id {
                        Some(id) => id,
                        None => return,
                    },
                    () = &mut stop => {
                        stopping = true;
                        continue;
                    }
                }
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(id) => batch.push(id),
                    Err(_) => break,
                }
            }
            batch.sort_unstable();
            batch.dedup();
            if let Err(error) = db.touch(&batch).await {
                tracing::warn!(%error, tokens = batch.len(), "could not record last use");
            }
        }
    });
    (
        Toucher {
            tx,
            recent: Arc::default(),
        },
        task,
    )
}
