//! Benchmark of the real `auth-service serve` binary (release build) against a
//! throwaway PostgreSQL, reporting ratios measured in one run on the same server:
//!
//! ```sh
//! cargo build --release -p auth-service -p auth-test-support --bins
//! target/release/auth-bench                 # --seconds 5 --concurrency 64 ...
//! ```
//!
//! - warm `ValidateToken` (one token, and 10k distinct tokens) ÷ `Health/Check`, with
//!   p50 and p99, from an in-process load generator and from `h2load` when installed;
//! - warm Envoy ext_authz `Check` ÷ `Health/Check` the same ways, and HTTP
//!   forward-auth ÷ `/healthz` on the HTTP port with `h2load --h1`;
//! - cold `ValidateToken` (a server with `--cache-capacity 0`) ÷ the database's own rate
//!   for the same statement (a raw tokio-postgres loop over as many connections as the
//!   pool, without and with pipelining);
//! - how long a revoke and a renewal take to show on the other two of three replicas;
//! - the server's RSS before and after 100k distinct tokens are cached (only this with
//!   `--memory-only`);
//! - with `--via-pgbouncer`, cold `ValidateToken` through a real PgBouncer in
//!   transaction mode ÷ the direct cold rate;
//! - with `--tokens 10000,1000000,10000000`, only the cost curve (see `curve.rs`), and
//!   with `--plot FILE.svg` its chart;
//! - with `--baseline BIN` (a build from before), only the comparisons with it: the
//!   cold path at low load, and what traces cost (see `baseline.rs`).
//!
//! Everything runs on this machine: the load generators, PostgreSQL and the servers
//! share its cores, so the absolute figures say more about the machine than about the
//! service; the ratios are the result. With `--pin SUT:GENERATORS` (for example
//! `--pin 0:1`) they share no core: the system under test runs on the first CPUs, the
//! generators on the others (see `pin.rs`).
#![forbid(unsafe_code)]

mod baseline;
mod curve;
mod h2load;
mod load;
mod pgbench;
mod pin;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use auth_api::v1::{
    RenewCurrentTokenRequest, RevokeCurrentTokenRequest, ValidateTokenRequest,
    auth_service_client::AuthServiceClient,
};
use auth_service::{
    db::sql,
    token::{self, Prefix},
};
use auth_test_support::{
    cluster,
    grpc::{authed, envoy_check},
    http,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, authorization_client::AuthorizationClient,
};
use prost::Message;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone)]
struct Options {
    seconds: u64,
    concurrency: usize,
    connections: usize,
    tokens: usize,
    cached: usize,
    propagation: usize,
    /// Interleaved rounds of the h2load phases.
    rounds: usize,
    /// Also measure the cold path through a real PgBouncer in transaction mode.
    via_pgbouncer: bool,
    /// Also measure the cold path with several --db-max-batch values.
    batch_sweep: bool,
    /// Table sizes of the cost curve (`--tokens 10000,1000000`): more than one runs the
    /// curve instead of the other phases.
    sizes: Vec<u64>,
    /// Where `--plot` writes the curve as SVG.
    plot: Option<PathBuf>,
    /// `--baseline BIN`: only the comparisons with this build from before.
    baseline: Option<PathBuf>,
    /// `--cold-only`: only the cold path against pgbench, with where the CPU goes.
    cold_only: bool,
    /// `--memory-only`: only the RSS of `--cached` tokens.
    memory_only: bool,
    /// `--pin SUT:GENERATORS`: the system under test and the generators on CPUs of
    /// their own (see `pin.rs`).
    pin: Option<pin::Pin>,
}

fn options() -> Result<Options, BoxError> {
    let mut o = Options {
        seconds: 5,
        concurrency: 64,
        connections: 4,
        tokens: 10_000,
        cached: 100_000,
        propagation: 200,
        rounds: 3,
        via_pgbouncer: false,
        batch_sweep: false,
        sizes: Vec::new(),
        plot: None,
        baseline: None,
        cold_only: false,
        memory_only: false,
        pin: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--via-pgbouncer" {
            o.via_pgbouncer = true;
            continue;
        }
        if flag == "--batch-sweep" {
            o.batch_sweep = true;
            continue;
        }
        if flag == "--cold-only" {
            o.cold_only = true;
            continue;
        }
        if flag == "--memory-only" {
            o.memory_only = true;
            continue;
        }
        let value = args
            .next()
            .ok_or("every flag but --via-pgbouncer, --batch-sweep, --cold-only and --memory-only takes a value")?;
        match flag.as_str() {
            "--seconds" => o.seconds = value.parse()?,
            "--concurrency" => o.concurrency = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--tokens" => {
                o.sizes = value
                    .split(',')
                    .map(|v| v.trim().replace('_', "").parse::<u64>())
                    .collect::<Result<_, _>>()?;
                if let [one] = o.sizes[..] {
                    o.tokens = usize::try_from(one)?;
                }
            }
            "--plot" => o.plot = Some(PathBuf::from(value)),
            "--baseline" => o.baseline = Some(PathBuf::from(value)),
            "--cached" => o.cached = value.parse()?,
            "--propagation" => o.propagation = value.parse()?,
            "--rounds" => o.rounds = value.parse::<usize>()?.max(1),
            "--pin" => o.pin = Some(pin::parse(&value)?),
            other => {
                return Err(format!(
                    "unknown flag {other}; use --seconds S --concurrency N --connections C \
                     --tokens T[,T2,...] --cached M --propagation P --rounds R [--via-pgbouncer] [--batch-sweep] \
                     [--plot FILE.svg] [--baseline BIN] [--cold-only] [--memory-only] [--pin SUT:GENERATORS]"
                )
                .into());
            }
        }
    }
    Ok(o)
}

/// Stores `n` tokens (expiring in `expires_in_secs`) in one statement per 5000, and
/// returns them raw.
async fn bulk_tokens(
    config: &tokio_postgres::Config,
    n: usize,
    expires_in_secs: f64,
) -> Result<Vec<String>, BoxError> {
    let prefix = Prefix::default();
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        raw.push(token::generate(&prefix)?.expose().to_owned());
    }
    store_tokens(config, &raw, expires_in_secs).await?;
    Ok(raw)
}

/// Stores the `raw` tokens (expiring in `expires_in_secs`), one statement per 5000.
async fn store_tokens(
    config: &tokio_postgres::Config,
    raw: &[String],
    expires_in_secs: f64,
) -> Result<(), BoxError> {
    const INSERT: &str = "
        INSERT INTO tokens (user_id, name, token_hash, display_prefix, scopes, expires_at)
        SELECT 'bench-' || i, 'bench', h, 'pat_bnch', ARRAY['read'],
               now() + make_interval(secs => $2::float8)
        FROM unnest($1::bytea[]) WITH ORDINALITY AS u(h, i)";
    let (client, task) = cluster::connect(config).await?;
    let prefix = Prefix::default();
    for chunk in raw.chunks(5000) {
        let hashes: Vec<Vec<u8>> = chunk
            .iter()
            .filter_map(|t| token::parse(&prefix, t).ok())
            .map(|d| d.hash.to_vec())
            .collect();
        client.execute(INSERT, &[&hashes, &expires_in_secs]).await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// A running `auth-service serve`.
struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Server {
    fn spawn(bin: &Path, conninfo: &str, extra: &[&str]) -> Result<Server, BoxError> {
        let mut child = pin::server(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(["--database-url", conninfo])
            .args(extra)
            .env("AUTH_SERVICE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: {e} (build it: cargo build --release -p auth-service -p auth-test-support --bins)",
                    bin.display()
                )
            })?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let field = |line: &str, key: &str| -> Option<SocketAddr> {
            line.split(key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        let (mut grpc, mut http, mut seen) = (None, None, Vec::new());
        for line in lines.by_ref() {
            let line = line?;
            http = http.or_else(|| field(&line, " http="));
            if line.contains("auth-service listening") {
                grpc = field(&line, " addr=");
                break;
            }
            seen.push(line);
        }
        if grpc.is_none() {
            return Err(format!("{} did not start:\n{}", bin.display(), seen.join("\n")).into());
        }
        if pin::pinned() {
            println!(
                "  (server pid {} on CPUs {})",
                child.id(),
                pin::allowed(child.id())
            );
        }
        // Keep draining, so that the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server {
            child,
            grpc: grpc.ok_or("the server did not start")?,
            http: http.ok_or("the server has no HTTP port")?,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    async fn metric(&self, series: &str) -> f64 {
        match http::get(self.http, "/metrics").await {
            Ok((_, text)) => http::metric(&text, series),
            Err(_) => 0.0,
        }
    }

    /// Connections to the server, ready (health reports SERVING).
    async fn channels(&self, n: usize) -> Result<Vec<Channel>, BoxError> {
        let mut channels = Vec::new();
        for _ in 0..n {
            channels.push(Channel::from_shared(self.url())?.connect().await?);
        }
        let mut health = HealthClient::new(channels[0].clone());
        for _ in 0..200 {
            let status = health
                .check(HealthCheckRequest {
                    service: auth_api::SERVICE_NAME.into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.ok() == Some(1) {
                return Ok(channels);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("the server never became SERVING".into())
    }

    fn stop(mut self) {
        let _ = auth_test_support::process::terminate(self.child.id());
        let _ = self.child.wait();
    }
}

/// A row of the results table.
fn row(what: &str, s: &load::Stats) {
    println!(
        "  {what:<44} {:>10.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} errors)  client CPU {:.1} us/call",
        s.rate(),
        s.ms(0.50),
        s.ms(0.99),
        s.failed,
        s.client_cpu.as_secs_f64() * 1e6
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets the target"
    } else {
        "MISSES the target"
    }
}

async fn validate_load(channels: &[Channel], tokens: Arc<Vec<String>>, o: &Options) -> load::Stats {
    let channels = Arc::new(channels.to_vec());
    load::run(
        o.concurrency,
        Duration::from_secs(o.seconds),
        move |w, i| {
            let channels = channels.clone();
            let tokens = tokens.clone();
            async move {
                let mut client = AuthServiceClient::new(channels[w % channels.len()].clone());
                let token = &tokens[(w as u64 * 7919 + i * 7) as usize % tokens.len()];
                client
                    .validate_token(ValidateTokenRequest {
                        token: token.clone(),
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// A CheckRequest as Envoy sends it for a typical API call: the token among a dozen
/// ordinary request headers.
fn typical_check(token: &str) -> CheckRequest {
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/billing/invoices?page=2"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("authorization", &format!("Bearer {token}")),
        ("user-agent", "billing-cli/2.4.1"),
        ("x-forwarded-for", "10.12.0.7"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6f1c1e7e-3b0c-4f0e-9d53-2a1b7f1de0c4"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ];
    envoy_check(&headers, Some("read"))
}

/// Warm ext_authz Checks of `token`; a call counts as good only when it is allowed.
/// Validates each of `tokens` once; how many were answered OK.
async fn validate_each(
    channels: &[Channel],
    tokens: Arc<Vec<String>>,
    concurrency: usize,
) -> usize {
    let channels = Arc::new(channels.to_vec());
    load::each(concurrency, tokens.len(), move |i| {
        let token = tokens[i].clone();
        let mut client = AuthServiceClient::new(channels[i % channels.len()].clone());
        async move {
            client
                .validate_token(ValidateTokenRequest { token })
                .await
                .is_ok()
        }
    })
    .await
}

async fn check_load(channels: &[Channel], token: &str, o: &Options) -> load::Stats {
    let channels = Arc::new(channels.to_vec());
    let request = Arc::new(typical_check(token));
    load::run(
        o.concurrency,
        Duration::from_secs(o.seconds),
        move |w, _| {
            let channels = channels.clone();
            let request = request.clone();
            async move {
                let mut client = AuthorizationClient::new(channels[w % channels.len()].clone());
                client
                    .check((*request).clone())
                    .await
                    .is_ok_and(|r| r.into_inner().status.is_some_and(|s| s.code == 0))
            }
        },
    )
    .await
}

async fn health_load(channels: &[Channel], o: &Options) -> load::Stats {
    let channels = Arc::new(channels.to_vec());
    load::run(
        o.concurrency,
        Duration::from_secs(o.seconds),
        move |w, _| {
            let channels = channels.clone();
            async move {
                let mut client = HealthClient::new(channels[w % channels.len()].clone());
                client
                    .check(HealthCheckRequest {
                        service: auth_api::SERVICE_NAME.into(),
                    })
                    .await
                    .is_ok()
            }
        },
    )
    .await
}

/// The database's own rate for the lookup statement: `connections` connections, each
/// with `depth` queries in flight (tokio-postgres pipelines them).
async fn db_load(
    config: &tokio_postgres::Config,
    connections: usize,
    depth: usize,
    hashes: Arc<Vec<Vec<u8>>>,
    o: &Options,
) -> Result<load::Stats, BoxError> {
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (client, _task) = cluster::connect(config).await?;
        let stmt = client.prepare(sql::LOOKUP.sql).await?;
        clients.push((client, stmt));
    }
    let clients = Arc::new(clients);
    Ok(load::run(
        connections * depth,
        Duration::from_secs(o.seconds),
        move |w, i| {
            let clients = clients.clone();
            let hashes = hashes.clone();
            async move {
                let (client, stmt) = &clients[w % clients.len()];
                let hash = &hashes[(w as u64 * 7919 + i * 7) as usize % hashes.len()];
                client.query_one(stmt, &[hash]).await.is_ok()
            }
        },
    )
    .await)
}

/// The cold path with `--db-max-batch` 1 (no batching), 16, 64 (the default) and 256:
/// the rate at the run's concurrency, and p50/p99 with 1 and 8 callers.
async fn batch_sweep(
    bin: &Path,
    conninfo: &str,
    tokens: Arc<Vec<String>>,
    o: &Options,
) -> Result<(), BoxError> {
    println!("\ncold ValidateToken by --db-max-batch (server with --cache-capacity 0):");
    for batch in [1, 16, 64, 256] {
        let arg = batch.to_string();
        let server = Server::spawn(
            bin,
            conninfo,
            &["--cache-capacity", "0", "--db-max-batch", &arg],
        )?;
        let channels = server.channels(o.connections).await?;
        for concurrency in [o.concurrency, 8, 1] {
            if batch != 1 && batch != 64 && concurrency != o.concurrency {
                continue;
            }
            let at = Options {
                concurrency,
                ..o.clone()
            };
            let s = validate_load(&channels, tokens.clone(), &at).await;
            row(
                &format!("--db-max-batch {batch:<3}, {concurrency:>2} callers"),
                &s,
            );
        }
        server.stop();
    }
    Ok(())
}

/// The cold path under h2load: one process per token, each with one connection and one
/// stream (h2load sends a fixed body, so that no two concurrent calls carry the same
/// token and single-flight merges nothing; the lookup count shows it). `None` without
/// h2load.
async fn cold_h2load(
    server: &Server,
    tokens: &[String],
    o: &Options,
    dir: &Path,
) -> Result<Option<h2load::Run>, BoxError> {
    if !h2load::available() {
        return Ok(None);
    }
    let bodies: Vec<PathBuf> = tokens
        .iter()
        .take(o.concurrency)
        .enumerate()
        .map(|(i, token)| {
            let file = dir.join(format!("validate-{i}.bin"));
            let body = h2load::grpc_frame(
                &ValidateTokenRequest {
                    token: token.clone(),
                }
                .encode_to_vec(),
            );
            std::fs::write(&file, body).map(|()| file)
        })
        .collect::<Result<_, _>>()?;
    let lookups = "auth_db_lookups_total";
    let before = server.metric(lookups).await;
    let run = h2load::run_each(
        &server.grpc.to_string(),
        server.child.id(),
        "/auth.v1.AuthService/ValidateToken",
        &bodies,
        Duration::from_secs(o.seconds),
    )?;
    let looked_up = server.metric(lookups).await - before;
    println!(
        "  h2load, {} processes of 1 connection, 1 stream, a token each {:>10.0} req/s  ({} non-2xx; {looked_up} lookups, server CPU {:.1} us/call, machine {:.1} us/call)",
        bodies.len(),
        run.rate,
        run.non_2xx,
        run.server_cpu.as_secs_f64() * 1e6,
        run.machine_cpu.as_secs_f64() * 1e6,
    );
    Ok(Some(run))
}

/// The cold path and pgbench at the same concurrency, rounds interleaved, with the
/// machine's CPU per call and the server's share of it.
async fn cold_only(
    bin: &Path,
    config: &tokio_postgres::Config,
    tokens: Arc<Vec<String>>,
    o: &Options,
) -> Result<(), BoxError> {
    let hashes: Vec<Vec<u8>> = tokens
        .iter()
        .filter_map(|t| token::parse(&Prefix::default(), t).ok())
        .map(|d| d.hash.to_vec())
        .collect();
    pgbench::prepare(config, &hashes).await?;
    let bench_dir = std::env::temp_dir().join(format!("auth-bench-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&bench_dir)?;
    let server = Server::spawn(bin, &cluster::conninfo(config), &["--cache-capacity", "0"])?;
    let channels = server.channels(o.connections).await?;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut ratios = Vec::new();
    let mut h2_ratios = Vec::new();
    // Connections and statements prepared, caches warm: the first round measures no
    // start-up.
    validate_load(
        &channels,
        tokens.clone(),
        &Options {
            seconds: 1,
            ..o.clone()
        },
    )
    .await;
    for _ in 0..o.rounds {
        let h2 = cold_h2load(&server, &tokens, o, &bench_dir).await?;
        let server_before = auth_test_support::process::cpu_time(server.child.id())?;
        let cold = validate_load(&channels, tokens.clone(), o).await;
        let server_cpu = auth_test_support::process::cpu_time(server.child.id())?
            .saturating_sub(server_before)
            .as_secs_f64()
            / (cold.ok + cold.failed).max(1) as f64;
        row("ValidateToken, cold", &cold);
        println!(
            "    CPU per call: machine {:.1} us = server {:.1} + this generator {:.1} + the rest (PostgreSQL) {:.1}",
            us(cold.machine_cpu),
            server_cpu * 1e6,
            us(cold.client_cpu),
            us(cold.machine_cpu) - server_cpu * 1e6 - us(cold.client_cpu)
        );
        let mut pgbench_tps = Vec::new();
        for protocol in [pgbench::Protocol::Simple, pgbench::Protocol::Prepared] {
            let before = load::machine_busy();
            let tps = pgbench::run(
                config,
                hashes.len(),
                o.concurrency,
                o.seconds,
                &bench_dir,
                protocol,
            )?;
            let per = (load::machine_busy().saturating_sub(before)).as_secs_f64()
                / (tps * o.seconds as f64).max(1.0);
            println!(
                "  pgbench {protocol:?}, {} clients {tps:>10.0} tps; machine CPU per transaction {:.1} us",
                o.concurrency,
                per * 1e6
            );
            pgbench_tps.push(tps);
        }
        let (simple, prepared) = (pgbench_tps[0], pgbench_tps[1]);
        ratios.push((cold.rate() / simple, cold.rate() / prepared));
        if let Some(h2) = h2 {
            h2_ratios.push((h2.rate / simple, h2.rate / prepared));
        }
    }
    let _ = std::fs::remove_dir_all(&bench_dir);
    server.stop();
    let shown = |rs: &[(f64, f64)]| -> String {
        let each: Vec<String> = rs
            .iter()
            .map(|(simple, prepared)| format!("{simple:.2} ({prepared:.2})"))
            .collect();
        each.join(" ")
    };
    println!(
        "cold ValidateToken / pgbench (-M prepared) by round: {}",
        shown(&ratios)
    );
    println!(
        "cold ValidateToken (h2load) / pgbench (-M prepared) by round: {}",
        shown(&h2_ratios)
    );
    Ok(())
}

/// The cold path through a real PgBouncer 1.18 in transaction mode (20 server
/// connections), against the direct cold rate measured in the same run.
async fn via_pgbouncer(
    bin: &Path,
    config: &tokio_postgres::Config,
    tokens: Arc<Vec<String>>,
    direct: f64,
    o: &Options,
) -> Result<(), BoxError> {
    let bouncer = auth_test_support::pgbouncer::PgBouncer::start(config, 20).await?;
    let pooled = cluster::conninfo(&bouncer.config(config));
    let server = Server::spawn(bin, &pooled, &["--cache-capacity", "0"])?;
    let channels = server.channels(o.connections).await?;
    println!("\nthrough PgBouncer 1.18, pool_mode = transaction (server with --cache-capacity 0):");
    let through = validate_load(&channels, tokens.clone(), o).await;
    row(
        &format!(
            "ValidateToken, cold, {} tokens, via PgBouncer",
            tokens.len()
        ),
        &through,
    );
    println!(
        "  cold through PgBouncer / cold direct               {:>5.2}x  ({} errors)",
        through.rate() / direct,
        through.failed
    );
    server.stop();
    Ok(())
}

/// Warms `token` on every replica, changes it through `change` on the first, and
/// measures how long each other replica takes to answer `seen` for it.
async fn propagation<C, CF, S>(
    replicas: &[Vec<Channel>],
    tokens: &[String],
    change: C,
    seen: S,
) -> Result<Vec<Duration>, BoxError>
where
    C: Fn(AuthServiceClient<Channel>, String) -> CF,
    CF: std::future::Future<Output = Result<(), BoxError>>,
    S: Fn(Result<tonic::Response<auth_api::v1::ValidateTokenResponse>, tonic::Status>) -> bool
        + Copy,
{
    let mut samples = Vec::new();
    for token in tokens {
        for channels in replicas {
            let mut client = AuthServiceClient::new(channels[0].clone());
            for _ in 0..2 {
                client
                    .validate_token(ValidateTokenRequest {
                        token: token.clone(),
                    })
                    .await?;
            }
        }
        change(
            AuthServiceClient::new(replicas[0][0].clone()),
            token.clone(),
        )
        .await?;
        let changed = Instant::now();
        for channels in &replicas[1..] {
            let mut client = AuthServiceClient::new(channels[0].clone());
            loop {
                let answer = client
                    .validate_token(ValidateTokenRequest {
                        token: token.clone(),
                    })
                    .await;
                if seen(answer) {
                    samples.push(changed.elapsed());
                    break;
                }
                if changed.elapsed() > Duration::from_secs(10) {
                    return Err("a change never reached a replica".into());
                }
            }
        }
    }
    samples.sort_unstable();
    Ok(samples)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} cores ({cpu})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let o = options()?;
    let bin: PathBuf = std::env::current_exe()?
        .parent()
        .ok_or("no target dir")?
        .join("auth-service");
    println!("auth-bench: {}", machine());
    if let Some(p) = &o.pin {
        pin::start(p.clone())?;
    }
    // The cluster starts here, on the system's CPUs when pinned; then this process
    // moves to the generators'.
    let config = cluster::fresh_database().await?;
    pin::generators()?;
    if o.sizes.len() > 1 {
        let points = curve::run(&bin, &config, &o.sizes, &o).await?;
        if let Some(file) = &o.plot {
            curve::plot(&points, file)?;
            println!("wrote {}", file.display());
        }
        return Ok(());
    }
    println!(
        "load: {} concurrent calls over {} connections, {} s per phase; {}",
        o.concurrency,
        o.connections,
        o.seconds,
        if o.pin.is_some() {
            "the system under test and the load generators on CPUs of their own"
        } else {
            "PostgreSQL, the servers and the load generators share the machine"
        }
    );

    let conninfo = cluster::conninfo(&config);
    if let Some(baseline) = &o.baseline {
        return baseline::run(&bin, baseline, &config, &o).await;
    }
    if o.cold_only {
        let tokens = Arc::new(bulk_tokens(&config, o.tokens, 60.0 * 86400.0).await?);
        return cold_only(&bin, &config, tokens, &o).await;
    }
    if o.memory_only {
        let one = Arc::new(bulk_tokens(&config, 1, 60.0 * 86400.0).await?);
        let cached = bulk_tokens(&config, o.cached, 60.0 * 86400.0).await?;
        return memory(&bin, &conninfo, one, cached, &o).await;
    }
    let started = Instant::now();
    let tokens = bulk_tokens(&config, o.tokens, 60.0 * 86400.0).await?;
    let revoked = bulk_tokens(&config, o.propagation, 60.0 * 86400.0).await?;
    let renewed = bulk_tokens(&config, o.propagation, 3.0 * 86400.0).await?;
    let cached = bulk_tokens(&config, o.cached, 60.0 * 86400.0).await?;
    println!(
        "stored {} tokens in {:.1} s",
        tokens.len() + revoked.len() + renewed.len() + cached.len(),
        started.elapsed().as_secs_f64()
    );

    // --- Throughput and latency on one server, cache on; and one with it off. ---
    let warm = Server::spawn(&bin, &conninfo, &[])?;
    let cold = Server::spawn(&bin, &conninfo, &["--cache-capacity", "0"])?;
    let warm_channels = warm.channels(o.connections).await?;
    let cold_channels = cold.channels(o.connections).await?;
    let one = Arc::new(vec![tokens[0].clone()]);
    let many = Arc::new(tokens.clone());
    // Fill the cache with the 10k tokens first: each one validated once.
    validate_each(&warm_channels, many.clone(), o.concurrency).await;

    let hit = r#"auth_cache_requests_total{result="hit"}"#;
    let miss = r#"auth_cache_requests_total{result="miss"}"#;
    let (hits_before, misses_before) = (warm.metric(hit).await, warm.metric(miss).await);
    println!("\nin-process load generator (tonic client), server with the cache on:");
    let health = health_load(&warm_channels, &o).await;
    row("grpc.health.v1.Health/Check", &health);
    let warm_one = validate_load(&warm_channels, one.clone(), &o).await;
    row("ValidateToken, warm, 1 token", &warm_one);
    let warm_many = validate_load(&warm_channels, many.clone(), &o).await;
    row(
        &format!("ValidateToken, warm, {} tokens", tokens.len()),
        &warm_many,
    );
    let check = check_load(&warm_channels, &tokens[0], &o).await;
    row("ext_authz Check, warm, 1 token", &check);
    let (hits, misses) = (
        warm.metric(hit).await - hits_before,
        warm.metric(miss).await - misses_before,
    );
    let hashes: Arc<Vec<Vec<u8>>> = Arc::new(
        tokens
            .iter()
            .filter_map(|t| token::parse(&Prefix::default(), t).ok())
            .map(|d| d.hash.to_vec())
            .collect(),
    );
    println!(
        "database and cold path (server with --cache-capacity 0, the default --db-max-connections):"
    );
    let cold_many = validate_load(&cold_channels, many.clone(), &o).await;
    row(
        &format!("ValidateToken, cold, {} tokens", tokens.len()),
        &cold_many,
    );
    let cold_dir = std::env::temp_dir().join(format!("auth-bench-cold-{}", std::process::id()));
    std::fs::create_dir_all(&cold_dir)?;
    let cold_h2 = cold_h2load(&cold, &tokens, &o, &cold_dir).await?;
    let _ = std::fs::remove_dir_all(&cold_dir);
    let db_plain = db_load(&config, 16, 1, hashes.clone(), &o).await?;
    row("the lookup SELECT: 16 connections, 1 in flight", &db_plain);
    let db_piped = db_load(&config, 16, 4, hashes.clone(), &o).await?;
    row("the lookup SELECT: 16 connections, 4 pipelined", &db_piped);
    let db_best = db_plain.rate().max(db_piped.rate());
    pgbench::prepare(&config, &hashes).await?;
    let bench_dir = std::env::temp_dir().join(format!("auth-bench-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&bench_dir)?;
    let pgbench_same = pgbench::run(
        &config,
        hashes.len(),
        o.concurrency,
        o.seconds,
        &bench_dir,
        pgbench::Protocol::Simple,
    )?;
    println!(
        "  pgbench, the lookup SELECT, {} clients (simple protocol)  {pgbench_same:>10.0} tps",
        o.concurrency
    );
    let pgbench_prepared = pgbench::run(
        &config,
        hashes.len(),
        o.concurrency,
        o.seconds,
        &bench_dir,
        pgbench::Protocol::Prepared,
    )?;
    println!(
        "  pgbench, the lookup SELECT, {} clients (-M prepared)  {pgbench_prepared:>12.0} tps",
        o.concurrency
    );
    let pgbench_16 = pgbench::run(
        &config,
        hashes.len(),
        16,
        o.seconds,
        &bench_dir,
        pgbench::Protocol::Simple,
    )?;
    println!("  pgbench, the lookup SELECT, 16 clients (simple protocol)  {pgbench_16:>10.0} tps");
    let _ = std::fs::remove_dir_all(&bench_dir);

    let r1 = warm_one.rate() / health.rate();
    let r10k = warm_many.rate() / health.rate();
    let p99 = warm_one.ms(0.99) / health.ms(0.99);
    let rcold = cold_many.rate() / db_best;
    println!("\nratios (same run, same server):");
    println!(
        "  warm ValidateToken (1 token) / Health/Check        {r1:>5.2}x  p99 {p99:.2}x Health's  [target >= 0.8x, p99 <= 1.5x: {}]",
        verdict(r1 >= 0.8 && p99 <= 1.5)
    );
    println!(
        "  warm ValidateToken ({} tokens) / Health/Check   {r10k:>5.2}x  [target >= 0.8x: {}]",
        tokens.len(),
        verdict(r10k >= 0.8)
    );
    let rc = check.rate() / health.rate();
    println!(
        "  warm ext_authz Check / Health/Check                {rc:>5.2}x  p99 {:.2}x Health's  [target >= 0.8x: {}]",
        check.ms(0.99) / health.ms(0.99),
        verdict(rc >= 0.8)
    );
    // This generator builds and encodes every request on the cores the server uses; a
    // CheckRequest (a dozen headers in a map) costs it far more than a HealthCheckRequest.
    println!(
        "  (this client's own CPU per call: Check {:.1} us, Health {:.1} us; h2load below sends a fixed body)",
        check.client_cpu.as_secs_f64() * 1e6,
        health.client_cpu.as_secs_f64() * 1e6
    );
    println!(
        "  cold ValidateToken / the database's own rate      {rcold:>5.2}x  (tokio-postgres, prepared, pipelined)"
    );
    let rpg = cold_many.rate() / pgbench_same;
    println!(
        "  cold ValidateToken / pgbench, {} clients           {rpg:>5.2}x  [target >= 1.0x: {}]",
        o.concurrency,
        verdict(rpg >= 1.0)
    );
    println!(
        "  cold ValidateToken / pgbench -M prepared, {} clients {:>5.2}x",
        o.concurrency,
        cold_many.rate() / pgbench_prepared
    );
    println!(
        "  cold ValidateToken / pgbench, 16 clients           {:>5.2}x",
        cold_many.rate() / pgbench_16
    );
    if let Some(h2) = &cold_h2 {
        let r = h2.rate / pgbench_same;
        println!(
            "  cold ValidateToken (h2load) / pgbench, {} clients  {r:>5.2}x  [target >= 1.0x: {}]",
            o.concurrency,
            verdict(r >= 1.0)
        );
    }
    println!("  the measured warm phases: {hits} cache hits, {misses} misses");

    // --- The independent load generator. ---
    if h2load::available() {
        let dir = std::env::temp_dir().join(format!("auth-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let health_body = dir.join("health.bin");
        std::fs::write(
            &health_body,
            h2load::grpc_frame(
                &HealthCheckRequest {
                    service: auth_api::SERVICE_NAME.into(),
                }
                .encode_to_vec(),
            ),
        )?;
        let validate_body = dir.join("validate.bin");
        std::fs::write(
            &validate_body,
            h2load::grpc_frame(
                &ValidateTokenRequest {
                    token: tokens[0].clone(),
                }
                .encode_to_vec(),
            ),
        )?;
        let check_body = dir.join("check.bin");
        std::fs::write(
            &check_body,
            h2load::grpc_frame(&typical_check(&tokens[0]).encode_to_vec()),
        )?;
        let (addr, pid) = (warm.grpc.to_string(), warm.child.id());
        let http_addr = warm.http.to_string();
        let bearer = format!("authorization: Bearer {}", tokens[0]);
        let duration = Duration::from_secs(o.seconds);
        let grpc = |path: &str, body: &Path| h2load::run(&addr, pid, path, body, 16, 8, duration);
        // The phases are interleaved, round after round, so that a slow moment of this
        // shared machine lands on every method alike; each ratio is the median of its
        // rounds' ratios.
        let mut rounds: Vec<[h2load::Run; 5]> = Vec::new();
        for _ in 0..o.rounds {
            rounds.push([
                grpc("/grpc.health.v1.Health/Check", &health_body)?,
                grpc("/auth.v1.AuthService/ValidateToken", &validate_body)?,
                grpc("/envoy.service.auth.v3.Authorization/Check", &check_body)?,
                h2load::run_http1(&http_addr, pid, "/healthz", &[], 16, duration)?,
                h2load::run_http1(
                    &http_addr,
                    pid,
                    "/authz/forward-auth?scope=read",
                    &[&bearer],
                    16,
                    duration,
                )?,
            ]);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let rates = |i: usize| -> String {
            let r: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r[i].rate)).collect();
            r.join(" / ")
        };
        let bad = |i: usize| -> u64 { rounds.iter().map(|r| r[i].non_2xx).sum() };
        let ratio = |i: usize, base: usize| -> (f64, String) {
            let each: Vec<f64> = rounds.iter().map(|r| r[i].rate / r[base].rate).collect();
            let shown: Vec<String> = each.iter().map(|x| format!("{x:.2}")).collect();
            (median(each), shown.join(" "))
        };
        let cpu_us = |i: usize| -> f64 {
            median(
                rounds
                    .iter()
                    .map(|r| r[i].server_cpu.as_secs_f64() * 1e6)
                    .collect(),
            )
        };
        println!(
            "\nh2load (16 connections x 8 streams), same server, {} interleaved rounds (req/s per round):",
            o.rounds
        );
        let names = [
            "grpc.health.v1.Health/Check",
            "ValidateToken, warm, 1 token",
            "ext_authz Check, warm, 1 token",
            "GET /healthz (--h1, 16 connections)",
            "GET /authz/forward-auth, warm (--h1)",
        ];
        for (i, name) in names.iter().enumerate() {
            if i == 3 {
                println!("h2load --h1 (16 connections, 1 request each at a time), the HTTP port:");
            }
            println!(
                "  {name:<40} {}  ({} non-2xx)  server CPU {:.1} us/call",
                rates(i),
                bad(i),
                cpu_us(i)
            );
        }
        println!("ratios (median of the rounds; each round's in brackets):");
        for (i, base, name, target) in [
            (1, 0, "ValidateToken / Health/Check", true),
            (2, 0, "ext_authz Check / Health/Check", true),
            (4, 3, "forward-auth / healthz", false),
        ] {
            let (m, each) = ratio(i, base);
            let cpu = cpu_us(base) / cpu_us(i);
            let judged = if target {
                format!("  [target >= 0.8x: {}]", verdict(m >= 0.8))
            } else {
                String::new()
            };
            println!(
                "  {name:<36} {m:>5.2}x  ({each}); server CPU per call, base ÷ this: {cpu:.2}x{judged}"
            );
        }
    } else {
        println!(
            "\nh2load not installed (apt-get install nghttp2-client): independent figures skipped"
        );
    }
    if o.via_pgbouncer {
        via_pgbouncer(&bin, &config, many.clone(), cold_many.rate(), &o).await?;
    }
    if o.batch_sweep {
        batch_sweep(&bin, &conninfo, many.clone(), &o).await?;
    }
    cold.stop();

    // --- Propagation across three replicas. ---
    let r2 = Server::spawn(&bin, &conninfo, &[])?;
    let r3 = Server::spawn(&bin, &conninfo, &[])?;
    let replicas = vec![
        warm_channels.clone(),
        r2.channels(1).await?,
        r3.channels(1).await?,
    ];
    let revocations = propagation(
        &replicas,
        &revoked,
        |mut client, token| async move {
            client
                .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &token))
                .await?;
            Ok(())
        },
        |answer| matches!(answer, Err(s) if s.code() == Code::Unauthenticated),
    )
    .await?;
    let renewals = propagation(
        &replicas,
        &renewed,
        |mut client, token| async move {
            let r = client
                .renew_current_token(authed(RenewCurrentTokenRequest {}, &token))
                .await?
                .into_inner();
            if r.renewed {
                Ok(())
            } else {
                Err("the token was not renewed".into())
            }
        },
        |answer| {
            answer.is_ok_and(|r| {
                r.into_inner()
                    .expires_at
                    .is_some_and(|t| t.seconds > chrono::Utc::now().timestamp() + 80 * 86400)
            })
        },
    )
    .await?;
    println!(
        "\npropagation to the other 2 of 3 replicas (from the changing call's answer to the replica's):"
    );
    for (what, samples) in [("revoke", &revocations), ("renewal", &renewals)] {
        let p99 = load::quantile_ms(samples, 0.99);
        println!(
            "  {what:<8} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} samples)  [target p99 <= 100 ms: {}]",
            load::quantile_ms(samples, 0.50),
            p99,
            load::quantile_ms(samples, 1.0),
            samples.len(),
            verdict(p99 <= 100.0)
        );
    }
    r2.stop();
    r3.stop();
    warm.stop();

    memory(&bin, &conninfo, one, cached, &o).await
}

/// The server's RSS before and after `cached` distinct tokens are validated, on a fresh
/// server whose cache holds them all; `one` is validated first, under load, so that what
/// the connections, buffers and allocator take is in the baseline.
async fn memory(
    bin: &Path,
    conninfo: &str,
    one: Arc<Vec<String>>,
    cached: Vec<String>,
    o: &Options,
) -> Result<(), BoxError> {
    let fresh = Server::spawn(
        bin,
        conninfo,
        &["--cache-capacity", &cached.len().to_string()],
    )?;
    let fresh_channels = fresh.channels(o.connections).await?;
    // The same traffic first, on one token: what the connections, buffers and allocator
    // take under this load is in the baseline, so the difference is the cache's.
    validate_load(
        &fresh_channels,
        one,
        &Options {
            seconds: 5,
            ..o.clone()
        },
    )
    .await;
    let before = fresh.rss_mib();
    let all = Arc::new(cached);
    let filled = Instant::now();
    let validated = validate_each(&fresh_channels, all.clone(), o.concurrency).await;
    let entries = fresh.metric("auth_cache_entries").await;
    let after = fresh.rss_mib();
    println!(
        "\nmemory: RSS {before:.1} MiB -> {after:.1} MiB after {validated} distinct tokens were validated ({entries} cached, {:.0} s): +{:.1} MiB  [target <= 24 MiB per 100,000: {}]",
        filled.elapsed().as_secs_f64(),
        after - before,
        verdict((after - before) * 100_000.0 / (validated.max(1) as f64) <= 24.0)
    );
    fresh.stop();
    Ok(())
}
