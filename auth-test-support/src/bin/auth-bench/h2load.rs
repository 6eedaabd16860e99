//! The independent load generator: nghttp2's `h2load` (Debian: nghttp2-client), driving
//! one gRPC method with a fixed request body over HTTP/2 cleartext.
use auth_test_support::process::cpu_time;
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

/// A unary gRPC request body: the 5-byte frame header, then the message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// Whether h2load is installed.
pub fn available() -> bool {
    Command::new("h2load").arg("--version").output().is_ok()
}

/// What one h2load run measured.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Requests per second, after the warm-up.
    pub rate: f64,
    /// Responses that were not HTTP 2xx.
    pub non_2xx: u64,
    /// The server's CPU time (user + system) per completed request, after the warm-up.
    pub server_cpu: Duration,
    /// The whole machine's busy CPU time per completed request (h2load's own included).
    pub machine_cpu: Duration,
}

/// h2load calling the gRPC method `path` on `addr` (the server process `pid`) for
/// `duration` with `connections` connections of `streams` concurrent streams.
pub fn run(
    addr: &str,
    pid: u32,
    path: &str,
    body: &Path,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<Run, String> {
    measure(
        grpc(timed(connections, streams, duration), addr, path, body),
        pid,
    )
}

/// One h2load process per body in `bodies`, all at once, each with one connection and
/// one stream calling the gRPC method `path`: as many concurrent calls as bodies, and
/// no two of them ever carry the same body (so that the server cannot merge them, as
/// it merges concurrent lookups of one token). Their rates add up.
pub fn run_each(
    addr: &str,
    pid: u32,
    path: &str,
    bodies: &[std::path::PathBuf],
    duration: Duration,
) -> Result<Run, String> {
    let mut children = Vec::new();
    for body in bodies {
        children.push(
            grpc(timed(1, 1, duration), addr, path, body)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("h2load: {e}"))?,
        );
    }
    std::thread::sleep(WARM_UP);
    let cpu_before = cpu_time(pid)?;
    let machine_before = crate::load::machine_busy();
    let mut outputs = Vec::new();
    for child in children {
        outputs.push(
            child
                .wait_with_output()
                .map_err(|e| format!("h2load: {e}"))?,
        );
    }
    let cpu_after = cpu_time(pid)?;
    let machine = crate::load::machine_busy().saturating_sub(machine_before);
    let (mut rate, mut done, mut non_2xx) = (0.0, 0, 0);
    for out in outputs {
        let (r, d, n) = parse(&String::from_utf8_lossy(&out.stdout))?;
        rate += r;
        done += d;
        non_2xx += n;
    }
    Ok(Run {
        rate,
        non_2xx,
        server_cpu: per(cpu_after.saturating_sub(cpu_before), done),
        machine_cpu: per(machine, done),
    })
}

/// [`run`] for a plain HTTP/1.1 GET with `headers` (one request at a time on each
/// connection, as a proxy's auth subrequests arrive).
pub fn run_http1(
    addr: &str,
    pid: u32,
    path: &str,
    headers: &[&str],
    connections: usize,
    duration: Duration,
) -> Result<Run, String> {
    let mut cmd = timed(connections, 1, duration);
    cmd.arg("--h1");
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    measure(cmd, pid)
}

/// `cmd` posting `body` to the gRPC method `path` on `addr`.
fn grpc(mut cmd: Command, addr: &str, path: &str, body: &Path) -> Command {
    cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(format!("http://{addr}{path}"));
    cmd
}

/// The warm-up before h2load starts counting.
const WARM_UP: Duration = Duration::from_secs(1);

/// h2load with the load shape and duration (after the warm-up).
fn timed(connections: usize, streams: usize, duration: Duration) -> Command {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-D", &duration.as_secs().max(1).to_string()])
        .args(["--warm-up-time", &WARM_UP.as_secs().to_string()]);
    cmd
}

/// Runs h2load, and reads the server's CPU time when the warm-up ends and when h2load
/// is done.
fn measure(mut cmd: Command, pid: u32) -> Result<Run, String> {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("h2load: {e}"))?;
    std::thread::sleep(WARM_UP);
    let cpu_before = cpu_time(pid)?;
    let machine_before = crate::load::machine_busy();
    let out = child
        .wait_with_output()
        .map_err(|e| format!("h2load: {e}"))?;
    let cpu_after = cpu_time(pid)?;
    let machine = crate::load::machine_busy().saturating_sub(machine_before);
    let (rate, done, non_2xx) = parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Run {
        rate,
        non_2xx,
        server_cpu: per(cpu_after.saturating_sub(cpu_before), done),
        machine_cpu: per(machine, done),
    })
}

/// `total` over `n` requests.
fn per(total: Duration, n: u64) -> Duration {
    total
        .checked_div(u32::try_from(n).unwrap_or(u32::MAX))
        .unwrap_or_default()
}

/// The rate, the requests done and the non-2xx responses in h2load's report.
fn parse(text: &str) -> Result<(f64, u64, u64), String> {
    let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix));
    // "finished in 5.00s, 99832.40 req/s, 8.66MB/s"
    let rate = line("finished in")
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("unexpected h2load output:\n{text}"))?;
    // "requests: 499660 total, 499660 started, 499660 done, ..."
    let done: u64 = line("requests:")
        .and_then(|l| l.split(", ").nth(2))
        .and_then(|d| d.strip_suffix(" done"))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("unexpected h2load output:\n{text}"))?;
    // "status codes: 499660 2xx, 0 3xx, 0 4xx, 0 5xx"
    let non_2xx = line("status codes:")
        .map(|l| {
            l.split(", ")
                .skip(1)
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok((rate, done, non_2xx))
}
