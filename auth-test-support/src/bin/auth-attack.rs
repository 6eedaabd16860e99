//! The transport attacks of the robustness review, against the real release binary,
//! with the figures the targets are stated in:
//!
//! ```sh
//! cargo build --release -p auth-service -p auth-test-support --bins
//! target/release/auth-attack
//! ```
//!
//! 1. **Streams that never finish.** 60,000 HTTP/2 streams (HEADERS plus a partial gRPC
//!    frame, never ended) on 3 connections, written as raw frames by a client that
//!    ignores the server's SETTINGS. Reports the server's RSS during and after, and
//!    whether a normal call still works meanwhile. Target: RSS under 150 MB.
//! 2. **Descriptor exhaustion.** The server limited to 512 descriptors, 700 idle sockets
//!    held open. Reports how long until a normal call succeeds, and the server's CPU use
//!    meanwhile. Target: within 40 s, under 25% of a core.
#![forbid(unsafe_code)]
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use auth_api::v1::{ValidateTokenRequest, auth_service_client::AuthServiceClient};
use auth_test_support::{cluster, process};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn spawn(bin: &Path, conninfo: &str, fd_limit: Option<u64>) -> Result<Server, BoxError> {
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            conninfo,
        ])
        .env("AUTH_SERVICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(limit) = fd_limit {
            process::limit_open_files(&mut cmd, limit);
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p auth-service -p auth-test-support --bins)",
                bin.display()
            )
        })?;
        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("auth-service listening") {
                addr = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned);
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            addr: addr.ok_or("the server did not start")?,
        })
    }

    fn status_field(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn rss_mib(&self) -> f64 {
        self.status_field("VmRSS:")
    }

    fn cpu(&self) -> Duration {
        process::cpu_time(self.child.id()).unwrap_or_default()
    }

    /// Whether a normal ValidateToken call is answered within `within`.
    async fn answers(&self, within: Duration) -> bool {
        let call = async {
            let mut client = AuthServiceClient::connect(format!("http://{}", self.addr))
                .await
                .ok()?;
            let answer = client
                .validate_token(ValidateTokenRequest {
                    token: "pat_probe".into(),
                })
                .await;
            Some(matches!(answer, Err(s) if s.code() == tonic::Code::Unauthenticated))
        };
        matches!(tokio::time::timeout(within, call).await, Ok(Some(true)))
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A literal HPACK header without indexing, its name from the static table.
fn indexed_name(name_index: u8, value: &str) -> Vec<u8> {
    let mut out = vec![name_index & 0x0f, u8::try_from(value.len()).unwrap_or(0)];
    out.extend_from_slice(value.as_bytes());
    out
}

/// A literal HPACK header without indexing, with a new name.
fn new_name(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, u8::try_from(name.len()).unwrap_or(0)];
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap_or(0));
    out.extend_from_slice(value.as_bytes());
    out
}

/// The header block of a ValidateToken call to `authority`.
fn headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    block.extend(indexed_name(4, "/auth.v1.AuthService/ValidateToken")); // :path
    block.extend(indexed_name(1, authority)); // :authority
    block.extend(new_name("content-type", "application/grpc"));
    block.extend(new_name("te", "trailers"));
    block
}

/// Opens `streams` never-finished calls on one connection, as raw frames, reading and
/// discarding whatever the server answers. The returned half keeps the connection open.
async fn flood(addr: &str, streams: u32) -> Result<OwnedWriteHalf, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut reader, mut writer) = tcp.into_split();
    tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x4, 0x1, 0, &[])); // SETTINGS ACK (of the server's)
    writer.write_all(&out).await?;
    let block = headers(addr);
    let mut batch = Vec::new();
    for i in 0..streams {
        let id = 1 + 2 * i;
        batch.extend(frame(0x1, 0x4, id, &block)); // HEADERS, END_HEADERS, stream open
        batch.extend(frame(0x0, 0, id, &[0, 0, 0, 0, 100, 1, 2, 3, 4, 5])); // DATA, partial
        if batch.len() > 64 * 1024 {
            if writer.write_all(&batch).await.is_err() {
                break;
            }
            batch.clear();
        }
    }
    let _ = writer.write_all(&batch).await;
    Ok(writer)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bin: PathBuf = std::env::current_exe()?
        .parent()
        .ok_or("no target dir")?
        .join("auth-service");
    let conninfo = cluster::conninfo(&cluster::fresh_database().await?);

    // 1. Streams that never finish.
    let server = Server::spawn(&bin, &conninfo, None)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss_mib();
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(flood(&server.addr, 20_000).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = server.rss_mib();
    let works = server.answers(Duration::from_secs(5)).await;
    drop(held);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_mib();
    println!(
        "1. 60,000 never-finished streams on 3 connections ({:.1} s to send): RSS {idle:.1} MiB idle, {during:.1} MiB during, {after:.1} MiB after the client left; a normal call {} [target: RSS < 150 MB and calls work: {}]",
        started.elapsed().as_secs_f64(),
        if works { "works" } else { "FAILS" },
        if during < 150.0 && works {
            "met"
        } else {
            "MISSED"
        }
    );
    server.stop();

    // 2. Descriptor exhaustion.
    let server = Server::spawn(&bin, &conninfo, Some(512))?;
    let mut idle = Vec::new();
    for _ in 0..700 {
        match TcpStream::connect(&server.addr).await {
            Ok(s) => idle.push(s),
            Err(e) => return Err(format!("opening idle sockets: {e}").into()),
        }
    }
    let cpu_before = server.cpu();
    let started = Instant::now();
    let mut answered = None;
    while started.elapsed() < Duration::from_secs(40) {
        if server.answers(Duration::from_secs(2)).await {
            answered = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // CPU is measured over a fixed 10 s window (or more, until the call worked), while
    // the attacker still holds every socket.
    let window = Duration::from_secs(10).max(started.elapsed());
    tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
    let cpu = server.cpu() - cpu_before;
    let share = cpu.as_secs_f64() / started.elapsed().as_secs_f64();
    println!(
        "2. 512 descriptors, 700 idle sockets held: a normal call {} ; server CPU {:.1}% of a core over {:.0} s [target: within 40 s, under 25%: {}]",
        answered.map_or("never succeeded".to_owned(), |t| format!(
            "succeeded after {:.1} s",
            t.as_secs_f64()
        )),
        share * 100.0,
        started.elapsed().as_secs_f64(),
        if answered.is_some() && share < 0.25 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(idle);
    server.stop();
    Ok(())
}
