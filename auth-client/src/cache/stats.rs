//! The cache's counters, striped: a hit is counted on every request the cache answers,
//! from every worker thread, and one shared counter would bounce its cache line between
//! cores on each of them.
use std::{
    cell::Cell,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

/// What is counted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stat {
    Hit,
    Miss,
    Bypass,
    Grace,
    Flush,
}

const KINDS: usize = 5;
const STRIPES: usize = 16;

/// One stripe's counters, alone on their cache line.
#[derive(Default)]
#[repr(align(128))]
struct Stripe([AtomicU64; KINDS]);

/// Counters that threads add to on stripes of their own, summed when read.
#[derive(Default)]
pub(crate) struct Stats([Stripe; STRIPES]);

/// This thread's stripe, given out round-robin on first use.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|mine| {
        if mine.get() == usize::MAX {
            mine.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        mine.get()
    })
}

impl Stats {
    pub(crate) fn count(&self, stat: Stat) {
        self.0[stripe()].0[stat as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self, stat: Stat) -> u64 {
        self.0
            .iter()
            .map(|s| s.0[stat as usize].load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread_add_up() {
        let stats = std::sync::Arc::new(Stats::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let stats = stats.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| stats.count(Stat::Hit)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap_or(()));
        assert_eq!(stats.get(Stat::Hit), 4000);
        assert_eq!(stats.get(Stat::Miss), 0);
    }
}
