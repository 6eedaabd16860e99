//! The real binary under attack: a process limited to 512 descriptors with 700 idle
//! sockets held open must neither spin nor stay unreachable, and SIGTERM with a call
//! stuck in flight must still end in an orderly exit.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use auth_test_support::{cluster, grpc::*, process};
use bytes::Bytes;

/// A served child process, killed when dropped: a failed assertion must not leave a
/// server running after the test.
pub(crate) struct Served(Child);

impl std::ops::Deref for Served {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve` with `args` (on 127.0.0.1:0 unless they say `--listen`), its stderr drained
/// on a thread; returns the child, the bound gRPC address, and the channel of every
/// stderr line (those before the address too).
pub(crate) fn serve(
    args: &[&str],
    fd_limit: Option<u64>,
) -> (Served, String, mpsc::Receiver<String>) {
    let mut cmd = crate::service();
    cmd.arg("serve");
    // On loopback unless the caller says where.
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args)
        .env("AUTH_SERVICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(limit) = fd_limit {
        process::limit_open_files(&mut cmd, limit);
    }
    let mut child = cmd.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let addr = line
            .contains("auth-service listening")
            .then(|| line.split("addr=").nth(1))
            .flatten()
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string);
        seen.push(line);
        if let Some(addr) = addr {
            // The lines read so far, then the rest as they come.
            let (tx, replay) = mpsc::channel();
            std::thread::spawn(move || {
                for line in seen.into_iter().chain(rx.iter()) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            return (Served(child), addr, replay);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("serve did not start:\n{}", seen.join("\n"));
}

/// The HTTP port's address from `serve`'s log (`--http-listen 127.0.0.1:0`): its line
/// comes before the gRPC one, which [`serve`] has already seen. The lines read are kept
/// in `seen`.
pub(crate) fn http_addr(log: &mpsc::Receiver<String>, seen: &mut Vec<String>) -> SocketAddr {
    loop {
        let line = log
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no HTTP address in:\n{}", seen.join("\n")));
        let addr = line
            .contains("HTTP port listening")
            .then(|| line.split("http=").nth(1))
            .flatten()
            .and_then(|rest| rest.split_whitespace().next())
            .map(|addr| addr.parse().unwrap());
        seen.push(line);
        if let Some(addr) = addr {
            return addr;
        }
    }
}

/// The process's user + system CPU time.
fn cpu_time(pid: u32) -> Duration {
    process::cpu_time(pid).unwrap()
}

fn sigterm(child: &Child) {
    process::terminate(child.id()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_exhaustion_neither_spins_nor_locks_callers_out() {
    let url = cluster::conninfo(&cluster::fresh_database().await.unwrap());
    let (mut child, addr, log) = serve(
        &["--database-url", &url, "--handshake-timeout", "2s"],
        Some(512),
    );
    // 700 sockets that never say anything, held open: more than the process can hold.
    let mut idle = Vec::new();
    for _ in 0..700 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let cpu_before = cpu_time(child.id());
    let started = Instant::now();
    let answered = first_answer(
        &addr.to_string(),
        Duration::from_secs(40),
        Duration::from_millis(200),
    )
    .await;
    let wall = started.elapsed();
    let cpu = cpu_time(child.id()) - cpu_before;
    let _ = child.kill();
    let _ = child.wait();
    drop(idle);
    let answered = answered.expect("no call succeeded within 40 s while the sockets were held");
    assert!(
        cpu.as_secs_f64() < 0.25 * wall.as_secs_f64(),
        "the server used {cpu:?} of CPU in {wall:?}"
    );
    eprintln!("answered after {answered:?}; server CPU {cpu:?} over {wall:?}");
    // The sockets over the limit were refused, and said so once, not once each.
    // (The server has exited: the channel ends with its last line.)
    let refusals: Vec<String> = log
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("connection limit reached"))
        .collect();
    assert!(
        (1..=5).contains(&refusals.len()),
        "{} lines:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stuck_call_exits_cleanly_after_the_grace_period() {
    let dir = cluster::scratch_dir("grace");
    let data = dir.to_str().unwrap().to_owned();
    let (mut child, addr, log) = serve(
        &[
            "--data-dir",
            &data,
            "--shutdown-grace",
            "1s",
            "--request-timeout",
            "10m",
            "--http-listen",
            "127.0.0.1:0",
        ],
        None,
    );
    let mut lines = Vec::new();
    let http = http_addr(&log, &mut lines);
    // A call that never finishes.
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/auth.v1.AuthService/ValidateToken"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2]), false)
        .unwrap();
    // The call is in the server (counted as started) before SIGTERM, not merely sent.
    let started = Instant::now();
    loop {
        let (_, metrics) = auth_test_support::http::get(http, "/metrics")
            .await
            .unwrap();
        if auth_test_support::http::metric(
            &metrics,
            r#"grpc_server_started_total{grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="ValidateToken"}"#,
        ) >= 1.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the stuck call never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    sigterm(&child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still running {:?} after SIGTERM",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    lines.extend(log.try_iter());
    let text = lines.join("\n");
    assert!(text.contains("grace period over"), "{text}");
    assert!(text.contains("embedded PostgreSQL stopped"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
