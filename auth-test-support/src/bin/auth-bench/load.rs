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
    /// The whole machine's busy CPU time per call (every process: this generator, the
    /// server, PostgreSQL, and whatever else runs).
    pub machine_cpu: Duration,
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
    let machine_before = machine_busy();
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
        machine_cpu: Duration::ZERO,
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
    let calls = u32::try_from(stats.ok + stats.failed).unwrap_or(u32::MAX);
    stats.machine_cpu = machine_busy()
        .saturating_sub(machine_before)
        .checked_div(calls)
        .unwrap_or_default();
    stats.micros.sort_unstable();
    stats
}

/// The busy CPU time of the whole machine since boot, all cores (`/proc/stat`).
pub fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    let hz = rustix::param::clock_ticks_per_second();
    Duration::from_secs_f64(busy as f64 / hz.max(1) as f64)
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
