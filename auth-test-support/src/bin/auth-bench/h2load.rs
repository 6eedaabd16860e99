//! The independent load generator: nghttp2's `h2load` (Debian: nghttp2-client), driving
//! one gRPC method with a fixed request body over HTTP/2 cleartext.
use std::{path::Path, process::Command, time::Duration};

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

/// Requests per second that h2load measured calling the gRPC method `path` on `addr`
/// for `duration` with `connections` connections of `streams` concurrent streams, and
/// how many responses were not HTTP 2xx.
pub fn run(
    addr: &str,
    path: &str,
    body: &Path,
    connections: usize,
    streams: usize,
    duration: Duration,
) -> Result<(f64, u64), String> {
    let mut cmd = timed(connections, streams, duration);
    cmd.args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(format!("http://{addr}{path}"));
    measure(cmd)
}

/// [`run`] for a plain HTTP/1.1 GET with `headers` (one request at a time on each
/// connection, as a proxy's auth subrequests arrive).
pub fn run_http1(
    addr: &str,
    path: &str,
    headers: &[&str],
    connections: usize,
    duration: Duration,
) -> Result<(f64, u64), String> {
    let mut cmd = timed(connections, 1, duration);
    cmd.arg("--h1");
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{addr}{path}"));
    measure(cmd)
}

/// h2load with the load shape and duration (after a second of warm-up).
fn timed(connections: usize, streams: usize, duration: Duration) -> Command {
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        .args(["-D", &duration.as_secs().max(1).to_string()])
        .args(["--warm-up-time", "1"]);
    cmd
}

/// Runs h2load; (requests per second, responses that were not 2xx).
fn measure(mut cmd: Command) -> Result<(f64, u64), String> {
    let out = cmd.output().map_err(|e| format!("h2load: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 5.00s, 99832.40 req/s, 8.66MB/s"
    let rate = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("unexpected h2load output:\n{text}"))?;
    // "status codes: 499660 2xx, 0 3xx, 0 4xx, 0 5xx"
    let non_2xx = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .map(|l| {
            l.split(", ")
                .skip(1)
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok((rate, non_2xx))
}
