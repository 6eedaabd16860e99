//! The standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`), as Prometheus' client libraries name them, read from
//! `/proc` at each scrape (Linux; elsewhere the series are left out).
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux
/// architecture's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The collector; register it with `Registry::register_collector`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessMetrics;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Reading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

fn read(
    stat: &str,
    status: &str,
    limits: &str,
    proc_stat: &str,
    open_fds: Option<usize>,
) -> Reading {
    let fields = stat_fields(stat);
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // After the name: state is field 0, utime 11, stime 12, starttime 19.
    let cpu_seconds = number(11)
        .zip(number(12))
        .map(|(u, s)| (u + s) / TICKS_PER_SECOND);
    let boot = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let start_time_seconds = boot
        .zip(number(19))
        .map(|(b, ticks)| b + ticks / TICKS_PER_SECOND);
    let resident_bytes = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib * 1024.0);
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<f64>().ok());
    Reading {
        cpu_seconds,
        resident_bytes,
        open_fds: open_fds.map(|n| n as f64),
        max_fds,
        start_time_seconds,
    }
}

fn now() -> Reading {
    let file = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count);
    read(
        &file("/proc/self/stat"),
        &file("/proc/self/status"),
        &file("/proc/self/limits"),
        &file("/proc/stat"),
        open_fds,
    )
}

impl Collector for ProcessMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = now();
        if let Some(v) = r.cpu_seconds {
            let counter = ConstCounter::new(v);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                r.resident_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                r.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                r.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                r.start_time_seconds,
            ),
        ] {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_procfs_as_linux_writes_it() {
        let stat = "4242 (auth (service)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 \
                    20 0 8 0 12345 1000000 2000 18446744073709551615";
        let status = "Name:\tauth-service\nVmRSS:\t   20480 kB\nThreads:\t8\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        let r = read(stat, status, limits, proc_stat, Some(17));
        assert_eq!(r.cpu_seconds, Some(3.0));
        assert_eq!(r.resident_bytes, Some(20480.0 * 1024.0));
        assert_eq!(r.max_fds, Some(1_048_576.0));
        assert_eq!(r.open_fds, Some(17.0));
        assert_eq!(r.start_time_seconds, Some(1_700_000_000.0 + 123.45));
    }

    #[test]
    fn this_process_is_read() {
        let r = now();
        assert!(r.cpu_seconds.is_some() && r.resident_bytes.is_some() && r.open_fds.is_some());
        assert!(r.start_time_seconds.is_some_and(|t| t > 1e9));
    }
}
