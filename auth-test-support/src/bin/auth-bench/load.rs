//! The in-process load generator: `concurrency` tasks calling as fast as they can for a
//! fixed time, each recording every call's latency.
use std::{
    future::Future,
    time::{Duration, Instant},
};

/// What one load phase measured.
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    pub elapsed: Duration,
    /// Every successful call's latency, in microseconds, sorted.
    pub micros: Vec<u32>,
    /// This process's CPU time (the load generator's) per call.
    pub client_cpu: Duration,
}

impl Stats {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-quantile latency in milliseconds.
    pub fn ms(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let i = ((self.micros.len() - 1) as f64 * p).round() as usize;
        f64::from(self.micros[i]) / 1000.0
    }
}

/// Runs `call(worker, i)` from `concurrency` tasks for `duration`. A call returns
/// whether it got the expected answer.
pub async fn run<F, Fut>(concurrency: usize, duration: Duration, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let cpu_before = auth_test_support::process::cpu_time(std::process::id()).unwrap_or_default();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let call = call.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut micros) = (0u64, 0u64, Vec::with_capacity(1 << 16));
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if call(w, i).await {
                        ok += 1;
                        micros.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    } else {
                        failed += 1;
                    }
                    i += 1;
                }
                (ok, failed, micros)
            })
        })
        .collect();
    let mut stats = Stats {
        ok: 0,
        failed: 0,
        elapsed: Duration::ZERO,
        micros: Vec::new(),
        client_cpu: Duration::ZERO,
    };
    for w in workers {
        if let Ok((ok, failed, mut micros)) = w.await {
            stats.ok += ok;
            stats.failed += failed;
            stats.micros.append(&mut micros);
        }
    }
    stats.elapsed = started.elapsed();
    let cpu = auth_test_support::process::cpu_time(std::process::id()).unwrap_or_default();
    stats.client_cpu = cpu
        .saturating_sub(cpu_before)
        .checked_div(u32::try_from(stats.ok + stats.failed).unwrap_or(u32::MAX))
        .unwrap_or_default();
    stats.micros.sort_unstable();
    stats
}

/// Quantiles of a sample of durations, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Calls `call(i)` once for every `i` in `0..n`, from `concurrency` tasks; returns how
/// many answered as expected.
pub async fn each<F, Fut>(concurrency: usize, n: usize, call: F) -> usize
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (call, next) = (call.clone(), next.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return ok;
                    }
                    if call(i).await {
                        ok += 1;
                    }
                }
            })
        })
        .collect();
    let mut ok = 0;
    for w in workers {
        ok += w.await.unwrap_or(0);
    }
    ok
}
