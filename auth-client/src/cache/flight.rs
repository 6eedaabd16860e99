//! Single-flight: concurrent misses of one token share one `ValidateToken`.
//!
//! The first miss of a key leads a flight; later misses of that key wait for its answer.
//! Joining must not weaken the staleness bound: a caller joins only a flight that
//! started less than the bound ago, and a change announced for the key detaches its
//! flight ([`Flights::detach`]), so that whoever arrives after the change asks afresh.
//! A leader that is cancelled (its caller went away) ends its flight without an answer;
//! its waiters then race to lead a new one.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::Key;

struct Flight<V> {
    id: u64,
    started: Instant,
    answer: watch::Receiver<Option<V>>,
}

/// The flights in the air, by key.
pub(crate) struct Flights<V> {
    flights: Mutex<HashMap<Key, Flight<V>>>,
    next_id: AtomicU64,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            flights: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

enum Role<V> {
    Lead(watch::Sender<Option<V>>, u64),
    Wait(watch::Receiver<Option<V>>),
}

/// Ends the leader's flight when it is done or cancelled, unless it was detached (and
/// perhaps replaced by a newer flight, which must stay).
struct Landing<'a, V> {
    flights: &'a Flights<V>,
    key: Key,
    id: u64,
}

impl<V> Drop for Landing<'_, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

impl<V> Flights<V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Flight<V>>> {
        // The map stays consistent whatever panicked while holding it.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Later callers for `key` start a flight of their own.
    pub(crate) fn detach(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Every later caller starts a flight of its own.
    pub(crate) fn detach_all(&self) {
        self.lock().clear();
    }

    /// Flights in the air (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<V: Clone> Flights<V> {
    /// `lead`'s answer for `key`, shared with every concurrent caller for the same key
    /// whose flight started less than `max_age` ago.
    pub(crate) async fn run<F, Fut>(&self, key: Key, max_age: Duration, lead: F) -> V
    where
        F: Fn() -> Fut,
        Fut: Future<Output = V>,
    {
        loop {
            let role = {
                let mut flights = self.lock();
                match flights.get(&key) {
                    Some(f) if f.started.elapsed() < max_age => Role::Wait(f.answer.clone()),
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        flights.insert(
                            key,
                            Flight {
                                id,
                                started: Instant::now(),
                                answer: rx,
                            },
                        );
                        Role::Lead(tx, id)
                    }
                }
            };
            match role {
                Role::Lead(tx, id) => {
                    let _landing = Landing {
                        flights: self,
                        key,
                        id,
                    };
                    let answer = lead().await;
                    let _ = tx.send(Some(answer.clone()));
                    return answer;
                }
                Role::Wait(mut rx) => {
                    if let Ok(answer) = rx.wait_for(Option::is_some).await
                        && let Some(answer) = answer.clone()
                    {
                        return answer;
                    }
                    // The leader went away without an answer: lead (or join) anew.
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicUsize};

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_a_detach_starts_another() {
        let flights = Arc::new(Flights::<u32>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let lead = {
            let (calls, released) = (calls.clone(), released.clone());
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|r| *r).await;
                    7
                }
            }
        };
        let callers: Vec<_> = (0..20)
            .map(|_| {
                let (flights, lead) = (flights.clone(), lead.clone());
                tokio::spawn(
                    async move { flights.run([1; 32], Duration::from_secs(1), lead).await },
                )
            })
            .collect();
        while flights.len() == 0 {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for c in callers {
            assert_eq!(c.await.unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0, "landed");
        flights.detach(&[1; 32]);
        assert_eq!(flights.run([1; 32], Duration::from_secs(1), lead).await, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waiters_of_a_cancelled_leader_lead_anew() {
        let flights = Arc::new(Flights::<u32>::default());
        let leader = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run([2; 32], Duration::from_secs(1), std::future::pending)
                    .await
            }
        });
        while flights.len() == 0 {
            tokio::task::yield_now().await;
        }
        let waiter = tokio::spawn({
            let flights = flights.clone();
            async move {
                flights
                    .run([2; 32], Duration::from_secs(1), || async { 9 })
                    .await
            }
        });
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(waiter.await.unwrap(), 9);
    }
}
