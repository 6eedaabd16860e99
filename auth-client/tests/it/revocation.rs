//! A revocation reaches callers' caches within milliseconds: three replicas on one
//! database, and two caller **processes** (this test binary run again, as the ignored
//! test [`caller_process`]), each with its own client, cache and invalidation stream on
//! a different replica. 200 tokens are warm in both caches and revoked one by one
//! through the third replica. For each, the time from sending the revocation to each
//! caller's report of its first refusal, measured on this process's clock.
use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Stdio},
    time::{Duration, Instant},
};

use auth_api::v1::RevokeCurrentTokenRequest;
use auth_client::{AuthClient, ClientOptions, Rejection};
use auth_test_support::grpc::authed;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

use crate::{replicas, token_with, warm};

const REVOCATIONS: usize = 200;
/// The variable that tells [`caller_process`] its server.
const SERVER_ENV: &str = "AUTH_CLIENT_TEST_CALLER_SERVER";
/// What starts the caller's lines (libtest writes its own to the same stdout).
const LINE: &str = "CALLER ";

/// A caller process: its stdin and its protocol lines.
struct Caller {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: UnboundedReceiver<String>,
}

impl Caller {
    /// This test binary again, running only [`caller_process`], against `server`.
    fn spawn(server: &str, tokens: &[String]) -> Caller {
        let exe = std::env::current_exe().unwrap();
        let mut child = auth_test_support::process::clean(exe)
            .args(["revocation::caller_process", "--exact", "--ignored"])
            .args(["--nocapture", "--test-threads", "1"])
            .env(SERVER_ENV, server)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest's "test caller_process ... " has no newline before the first.
                if let Some((_, line)) = line.split_once(LINE)
                    && tx.send(line.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        // The tokens go through the pipe: never on a command line or in the environment.
        for token in tokens {
            writeln!(stdin, "{token}").unwrap();
        }
        writeln!(stdin).unwrap();
        Caller {
            child,
            stdin: Some(stdin),
            lines,
        }
    }

    /// Waits for the caller's next line (without blocking the runtime, which serves
    /// the replicas) and checks it.
    async fn expect(&mut self, wanted: &str) {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.recv()).await;
        assert_eq!(line.unwrap().as_deref(), Some(wanted));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_two_caller_processes_within_100_ms_at_p99() {
    let (_config, servers) = replicas(3).await;
    let mut tokens = Vec::new();
    for i in 0..REVOCATIONS {
        tokens.push(token_with(&servers[0].db, &format!("user{i}"), &["read"]).await);
    }
    let mut callers = [
        Caller::spawn(&servers[1].url(), &tokens),
        Caller::spawn(&servers[2].url(), &tokens),
    ];
    for caller in &mut callers {
        caller.expect("warm").await;
    }
    let mut revoker = servers[0].client().await.unwrap();
    let mut delays = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let sent = Instant::now();
        revoker
            .revoke_current_token(authed(RevokeCurrentTokenRequest {}, token))
            .await
            .unwrap();
        for caller in &mut callers {
            writeln!(caller.stdin.as_mut().unwrap(), "{i}").unwrap();
        }
        for caller in &mut callers {
            caller.expect(&format!("refused {i}")).await;
            delays.push(sent.elapsed());
        }
    }
    for caller in &mut callers {
        // Its stdin closed, the caller reports and ends.
        caller.stdin.take();
        caller.expect("done").await;
        assert!(caller.child.wait().unwrap().success());
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let (p50, p99, max) = (at(0.50), at(0.99), delays[delays.len() - 1]);
    eprintln!(
        "revocation to refusal in 2 caller processes' caches, {REVOCATIONS} revocations: \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
}

/// The caller process of the test above (run by it, not on its own): reads tokens
/// from stdin up to an empty line, warms its cache with them, says `warm`; then for
/// each index read, validates that token until it is refused as revoked, and says
/// `refused <index>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a caller process of a_revocation_reaches_two_caller_processes_within_100_ms_at_p99"]
async fn caller_process() {
    let server = std::env::var(SERVER_ENV).expect("run by the revocation test");
    let client =
        AuthClient::connect_lazy(&server.parse().unwrap(), ClientOptions::default()).unwrap();
    // stdin, line by line, read on a thread of its own.
    let (tx, mut input) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut tokens = Vec::new();
    while let Some(line) = input.recv().await {
        if line.is_empty() {
            break;
        }
        tokens.push(line);
    }
    for token in &tokens {
        warm(&client, token).await;
    }
    println!("{LINE}warm");
    while let Some(line) = input.recv().await {
        let i: usize = line.parse().unwrap();
        let started = Instant::now();
        loop {
            match client.validate(&tokens[i]).await.unwrap() {
                Ok(_) => tokio::time::sleep(Duration::from_micros(200)).await,
                Err(rejection) => {
                    assert_eq!(rejection, Rejection::TokenRevoked);
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(5), "never refused");
        }
        println!("{LINE}refused {i}");
    }
    let state = client.cache_state().unwrap();
    eprintln!("caller cache: {state:?}");
    println!("{LINE}done");
}
