//! Single-flight: concurrent misses of one key share one database lookup.
//!
//! After a flush (the listener reconnecting), thousands of callers presenting the same
//! few hundred tokens must cost a few hundred lookups, not thousands. The first miss of
//! a key leads a flight; later misses of that key wait for its answer.
//!
//! Joining must not weaken the cache's staleness bound. A flight's answer reflects
//! every change committed before it started, so a caller joins only a flight that
//! started less than the bound ago, and a change announced for the key detaches its
//! flight ([`Flights::detach`]): whoever arrives after the eviction starts afresh.
//!
//! A leader that is cancelled (its caller went away) ends its flight without an
//! answer; its waiters then race to lead a new one.
//!
//! The same mechanism coalesces renewals and revocations of one token (see
//! `service`), with bounds on the waiters: past them a caller is shed, not queued.
use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::Key;
use crate::error::{Error, Result, Shed};

/// What a flight answers, shared by its leader and waiters.
type Answer<T> = Option<Result<T>>;

struct Flight<T> {
    id: u64,
    started: Instant,
    answer: watch::Receiver<Answer<T>>,
    waiting: usize,
}

/// The flights in the air, by key.
pub(crate) struct Flights<T> {
    flights: Mutex<HashMap<Key, Flight<T>>>,
    next_id: AtomicU64,
    /// Most callers waiting on one flight, and on all of them.
    per_key: usize,
    total: usize,
    waiting: AtomicUsize,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights::bounded(usize::MAX, usize::MAX)
    }
}

/// How long a shed waiter is told to wait before it retries.
const SHED_RETRY: Duration = Duration::from_secs(1);

/// One waiter, counted on its flight and in the total until it is done.
struct Waiting<'a, T> {
    flights: &'a Flights<T>,
    key: Key,
    id: u64,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.flights.waiting.fetch_sub(1, Ordering::Relaxed);
        if let Some(f) = self.flights.lock().get_mut(&self.key)
            && f.id == self.id
        {
            f.waiting = f.waiting.saturating_sub(1);
        }
    }
}

enum Role<T> {
    Lead(watch::Sender<Answer<T>>, u64),
    Wait(watch::Receiver<Answer<T>>, u64),
    Shed,
}

/// Ends the leader's flight when it is done or cancelled, unless it was detached (and
/// perhaps replaced by a newer flight, which must stay).
struct Landing<'a, T> {
    flights: &'a Flights<T>,
    key: Key,
    id: u64,
}

impl<T> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights.get(&self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(&self.key);
        }
    }
}

impl<T> Flights<T> {
    /// Flights whose waiters are bounded: at most `per_key` on one flight and `total`
    /// on all; a caller past either is answered [`Error::Overloaded`] at once.
    pub(crate) fn bounded(per_key: usize, total: usize) -> Self {
        Flights {
            flights: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            per_key,
            total,
            waiting: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Flight<T>>> {
        // The map stays consistent whatever panicked while holding it.
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Clone> Flights<T> {
    /// `load`'s answer for `key`, shared with every concurrent caller for the same key
    /// whose flight started less than `max_age` ago. Returns the answer and whether this
    /// caller led the flight (ran `load`).
    pub(crate) async fn run<F, Fut>(
        &self,
        key: &Key,
        max_age: Duration,
        load: F,
    ) -> (Result<T>, bool)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        loop {
            let role = {
                let mut flights = self.lock();
                match flights.get_mut(key) {
                    Some(f) if f.started.elapsed() < max_age => {
                        if f.waiting >= self.per_key
                            || self.waiting.load(Ordering::Relaxed) >= self.total
                        {
                            Role::Shed
                        } else {
                            f.waiting += 1;
                            self.waiting.fetch_add(1, Ordering::Relaxed);
                            Role::Wait(f.answer.clone(), f.id)
                        }
                    }
                    _ => {
                        let (tx, rx) = watch::channel(None);
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        flights.insert(
                            *key,
                            Flight {
                                id,
                                started: Instant::now(),
                                answer: rx,
                                waiting: 0,
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
                        key: *key,
                        id,
                    };
                    let answer = load().await;
                    tx.send_replace(Some(answer.clone()));
                    return (answer, true);
                }
                Role::Wait(mut rx, id) => {
                    let _waiting = Waiting {
                        flights: self,
                        key: *key,
                        id,
                    };
                    if let Ok(answer) = rx.wait_for(Option::is_some).await
                        && let Some(answer) = answer.as_ref()
                    {
                        return (answer.clone(), false);
                    }
                    // The leader was cancelled before it had an answer: lead anew.
                }
                Role::Shed => {
                    return (
                        Err(Error::Overloaded {
                            what: "too many calls are already waiting for this token's \
                                   answer"
                                .into(),
                            retry_after: SHED_RETRY,
                            shed: Shed::Waiters,
                        }),
                        false,
                    );
                }
            }
        }
    }

    /// A change to `key` was announced: later callers must not join the flight that
    /// may have read the old row.
    pub(crate) fn detach(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Every flight is suspect (a flush).
    pub(crate) fn detach_all(&self) {
        self.lock().clear();
    }

    /// Flights in the air.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicUsize};

    use super::*;
    use crate::error::Error;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn concurrent_misses_of_one_key_share_one_load() {
        let flights = Arc::new(Flights::<u32>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (flights, loads, released) = (flights.clone(), loads.clone(), released.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run(&[1; 32], LONG, || {
                        loads.fetch_add(1, Ordering::SeqCst);
                        let mut released = released.clone();
                        async move {
                            released.wait_for(|r| *r).await.unwrap();
                            Ok(7)
                        }
                    })
                    .await
                    .0
            }));
        }
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "a landed flight is gone");
    }

    #[tokio::test]
    async fn a_failure_is_shared_and_not_kept() {
        let flights = Flights::<u32>::default();
        let (answer, led) = flights
            .run(&[2; 32], LONG, || async {
                Err(Error::Unavailable("down".into()))
            })
            .await;
        assert!(led);
        assert!(matches!(answer, Err(Error::Unavailable(_))));
        let (answer, led) = flights.run(&[2; 32], LONG, || async { Ok(1) }).await;
        assert!(led, "the failed flight landed; the next caller leads");
        assert_eq!(answer.unwrap(), 1);
    }

    /// A flight for `key` that answers 1 once `released`, led by a task of its own;
    /// returns once it is in the air.
    async fn held(
        flights: &Arc<Flights<u32>>,
        released: &watch::Receiver<bool>,
        key: Key,
    ) -> tokio::task::JoinHandle<(Result<u32>, bool)> {
        let (flights2, released) = (flights.clone(), released.clone());
        let task = tokio::spawn(async move {
            flights2
                .run(&key, LONG, || {
                    let mut released = released.clone();
                    async move {
                        released.wait_for(|r| *r).await.unwrap();
                        Ok(1)
                    }
                })
                .await
        });
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        task
    }

    #[tokio::test]
    async fn a_detached_or_old_flight_is_not_joined() {
        let flights = Arc::new(Flights::<u32>::default());
        let (release, released) = watch::channel(false);
        let slow = held(&flights, &released, [3; 32]).await;
        // Too old to join (a bound of zero): this caller leads its own flight.
        let (answer, led) = flights
            .run(&[3; 32], Duration::ZERO, || async { Ok(2) })
            .await;
        assert_eq!((answer.unwrap(), led), (2, true));
        // Detached by a change: the next caller leads too, and the old leader's landing
        // leaves the newer flight alone.
        let slow2 = held(&flights, &released, [3; 32]).await;
        flights.detach(&[3; 32]);
        assert!(flights.is_empty());
        let (answer, led) = flights.run(&[3; 32], LONG, || async { Ok(3) }).await;
        assert_eq!((answer.unwrap(), led), (3, true));
        release.send(true).unwrap();
        assert_eq!(slow.await.unwrap().0.unwrap(), 1);
        let _ = slow2.await.unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(Flights::<u32>::default());
        let leader = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run(&[4; 32], LONG, std::future::pending::<Result<u32>>)
                    .await
            })
        };
        while flights.is_empty() {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(&[4; 32], LONG, || async { Ok(9) }).await })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        leader.abort();
        let (answer, led) = waiter.await.unwrap();
        assert_eq!((answer.unwrap(), led), (9, true));
    }
}
