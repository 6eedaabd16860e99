//! The HTTP side port (`/metrics`, `/healthz`, `/readyz`, `/authz/forward-auth`) against
//! hostile clients, as the gRPC port is tested in `robust.rs` and `attack.rs`: a client
//! dribbling its headers is cut off at the header deadline, an idle kept-alive
//! connection is closed, and 2,000 idle connections to it neither exhaust the process's
//! descriptors nor keep callers off the gRPC port.
use std::time::{Duration, Instant};

use auth_service::renewal::RenewalPolicy;
use auth_test_support::{
    cluster,
    grpc::first_answer,
    server::{self, TestServer},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Whether the server has closed `stream`: a read that sees the end (or a reset) within
/// `wait`. Whatever the server says first (an error response) is read past.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_client_dribbling_its_headers_is_cut_off_at_the_deadline() {
    let mut settings = server::settings(RenewalPolicy::default());
    settings.http.header_timeout = Duration::from_secs(1);
    let server = TestServer::start(cluster::test_db().await.unwrap(), settings)
        .await
        .unwrap();
    let addr = server.http_addr.unwrap();
    assert_eq!(server.http_get("/healthz").await.unwrap().0, 200);

    // A request head of 200 bytes, one byte every 50 ms: 10 s to send it whole, against
    // a 1 s deadline. What proves the point is that the server hangs up before the head
    // is complete (before the fix it answered it, 10 s later).
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ".to_vec();
    head.resize(196, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    for byte in &head {
        if slow.write_all(&[*byte]).await.is_err()
            || closed_within(&mut slow, Duration::from_millis(50)).await
        {
            cut = true;
            break;
        }
        sent += 1;
    }
    let after = started.elapsed();
    assert!(
        cut,
        "the whole head went through, one byte at a time, over {after:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "cut off before the deadline: {after:?}"
    );
    eprintln!(
        "slowloris cut off after {after:?}, {sent} of {} bytes",
        head.len()
    );

    // A kept-alive connection that goes quiet after an answer is closed as well.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(20)).await,
        "an idle kept-alive connection stayed open"
    );
    assert!(answered.elapsed() >= Duration::from_millis(900));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_leave_descriptors_and_the_grpc_port_alone() {
    const FD_LIMIT: u64 = 1024;
    let url = cluster::conninfo(&cluster::fresh_database().await.unwrap());
    // A long header deadline: what is under test here is the cap, not the deadline.
    let (mut child, addr, log) = crate::attack::serve(
        &[
            "--database-url",
            &url,
            "--http-listen",
            "127.0.0.1:0",
            "--http-header-timeout",
            "10m",
        ],
        Some(FD_LIMIT),
    );
    let mut lines = Vec::new();
    let http = crate::attack::http_addr(&log, &mut lines);

    // 2,000 connections that never send a byte, opened 100 at a time and held open.
    let mut held = Vec::new();
    let mut unconnected = 0;
    for _ in 0..20 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..100 {
            batch.spawn(tokio::time::timeout(
                Duration::from_secs(2),
                TcpStream::connect(http),
            ));
        }
        while let Some(done) = batch.join_next().await {
            match done.unwrap() {
                Ok(Ok(stream)) => held.push(stream),
                _ => unconnected += 1,
            }
        }
    }

    // The gRPC port still answers a new caller while they are held.
    let answered = first_answer(
        &addr.to_string(),
        Duration::from_secs(30),
        Duration::from_millis(100),
    )
    .await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .count();
    let _ = child.kill();
    let _ = child.wait();
    drop(held);
    lines.extend(log.iter());
    let log = lines.join("\n");
    let answered = answered.unwrap_or_else(|| {
        panic!("the gRPC port did not answer within 30 s while the HTTP port was flooded:\n{log}")
    });
    eprintln!(
        "gRPC answered after {answered:?}; {fds} descriptors open; {unconnected} of 2000 \
         connections not even connected"
    );
    assert!(
        fds < (FD_LIMIT - 32) as usize,
        "{fds} descriptors open, at a limit of {FD_LIMIT}"
    );
    assert!(
        !log.contains("cannot accept a connection"),
        "accept ran out of descriptors:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("connection limit reached (--http-max-connections)")),
        "{log}"
    );
}
