//! Load benchmark of the real `auth-service serve` binary over loopback.
//!
//! ```sh
//! cargo build --release -p auth-service -p auth-test-support --bins
//! target/release/auth-bench --concurrency 32 --seconds 10
//! ```
//!
//! Starts the test harness's throwaway PostgreSQL, creates tokens, runs the server as
//! a separate process (the `auth-service` binary next to this one), and drives
//! ValidateToken, a no-op RenewCurrentToken and a malformed-token call (the path that
//! never touches the database) with concurrent clients. Prints requests per second,
//! latency percentiles and the server's peak resident memory.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use auth_api::v1::{
    RenewCurrentTokenRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use auth_service::db::Db;
use auth_test_support::{cluster, fixtures};
use tonic::{Request, transport::Channel};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug)]
enum Call {
    Validate,
    RenewNoOp,
    Malformed,
}

struct Options {
    concurrency: usize,
    seconds: u64,
    tokens: usize,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        concurrency: 32,
        seconds: 10,
        tokens: 1000,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let value = pair.get(1).ok_or("every flag takes a value")?;
        match pair[0].as_str() {
            "--concurrency" => o.concurrency = value.parse()?,
            "--seconds" => o.seconds = value.parse()?,
            "--tokens" => o.tokens = value.parse()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; use --concurrency N --seconds S --tokens T"
                )
                .into());
            }
        }
    }
    Ok(o)
}

async fn one(
    client: &mut AuthServiceClient<Channel>,
    call: Call,
    token: &str,
) -> Result<(), tonic::Status> {
    match call {
        Call::Validate => client
            .validate_token(ValidateTokenRequest {
                token: token.to_string(),
            })
            .await
            .map(|_| ()),
        Call::RenewNoOp | Call::Malformed => {
            let mut r = Request::new(RenewCurrentTokenRequest {});
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("metadata"))?;
            r.metadata_mut().insert("authorization", value);
            client.renew_current_token(r).await.map(|_| ())
        }
    }
}

async fn load(
    channels: &[Channel],
    call: Call,
    tokens: &[String],
    o: &Options,
) -> Result<(usize, usize, Vec<u64>, Duration), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..o.concurrency {
        let mut client = AuthServiceClient::new(channels[w % channels.len()].clone());
        let tokens = tokens.to_vec();
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut micros) = (0usize, 0usize, Vec::new());
            let mut i = w;
            while Instant::now() < deadline {
                let token = match call {
                    Call::Malformed => "pat_not-a-real-token",
                    _ => tokens[i % tokens.len()].as_str(),
                };
                let t = Instant::now();
                let result = one(&mut client, call, token).await;
                micros.push(t.elapsed().as_micros() as u64);
                // A malformed token is *supposed* to be refused.
                let good = match call {
                    Call::Malformed => {
                        result.is_err_and(|s| s.code() == tonic::Code::Unauthenticated)
                    }
                    _ => result.is_ok(),
                };
                if good {
                    ok += 1
                } else {
                    failed += 1
                }
                // Walk the token set so the database sees many different rows.
                i += 7;
            }
            (ok, failed, micros)
        }));
    }
    let (mut ok, mut failed, mut micros) = (0, 0, Vec::new());
    for w in workers {
        let (a, b, mut m) = w.await?;
        ok += a;
        failed += b;
        micros.append(&mut m);
    }
    micros.sort_unstable();
    Ok((ok, failed, micros, started.elapsed()))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn memory_kib(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.trim_start_matches(field).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let o = options()?;
    let config = cluster::fresh_database().await?;
    let db = Db::new(config.clone(), 4, Duration::from_secs(10))?;
    let mut tokens = Vec::with_capacity(o.tokens);
    for i in 0..o.tokens {
        let (_, raw) = fixtures::create_token(
            &db,
            &format!("user{i}"),
            Some(Duration::from_secs(60 * 86400)),
        )
        .await?;
        tokens.push(raw);
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let server_bin = exe.parent().ok_or("no target dir")?.join("auth-service");
    let mut server = Command::new(&server_bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &cluster::conninfo(&config),
        ])
        .env("AUTH_SERVICE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release -p auth-service -p auth-test-support --bins)",
                server_bin.display()
            )
        })?;
    let url = format!("http://127.0.0.1:{port}");
    let mut channels = Vec::new();
    for _ in 0..4 {
        let mut attempt = 0;
        loop {
            match Channel::from_shared(url.clone())?.connect().await {
                Ok(c) => break channels.push(c),
                Err(_) if attempt < 100 => attempt += 1,
                Err(e) => return Err(e.into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!(
        "server pid {} | {} tokens | concurrency {} | {} s per call | machine: {} cores",
        server.id(),
        o.tokens,
        o.concurrency,
        o.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<12} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "call", "req/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for call in [Call::Validate, Call::RenewNoOp, Call::Malformed] {
        let (ok, failed, micros, took) = load(&channels, call, &tokens, &o).await?;
        println!(
            "{:<12} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            format!("{call:?}"),
            ok as f64 / took.as_secs_f64(),
            failed,
            pct(&micros, 0.50),
            pct(&micros, 0.90),
            pct(&micros, 0.99),
            pct(&micros, 1.0),
        );
    }
    println!(
        "server memory: peak RSS (VmHWM) {}, now (VmRSS) {}",
        memory_kib(server.id(), "VmHWM:"),
        memory_kib(server.id(), "VmRSS:")
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    Ok(())
}
