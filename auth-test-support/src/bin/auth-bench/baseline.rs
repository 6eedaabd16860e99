//! This build against one from before (`auth-bench --baseline BIN`), in one run:
//!
//! 1. **The cold path at low load**, before and after single-flight and batching: cold
//!    `ValidateToken` (`--cache-capacity 0`, distinct tokens) from 1 and from 8 callers,
//!    p50 and p99, in interleaved rounds. The target: p99 no worse than 1.5x before.
//! 2. **What traces cost**: warm `ValidateToken` through h2load, in interleaved rounds,
//!    on four servers: `BIN` (a build from before traces existed: the commit before they
//!    were added); this build with traces off (no `--otlp-endpoint`: the spans are
//!    disabled callsites); this build exporting to a real OTLP receiver with
//!    `parentbased_traceidratio` 0.01 (h2load sends no `traceparent`, so 1 % of the calls
//!    start a sampled trace); and the same at 100 % (`always_on`). Each server's median
//!    rate and CPU per call, and each round's ratio to the build from before (median).
//!    The target: traces off within 3 % of before, in CPU per call (the rate on this
//!    shared machine moves by more than that from round to round).
//!
//! The build from before has a database of its own, migrated only as far as it knows
//! (it refuses a schema it does not know), holding the same tokens.
use std::{path::Path, sync::Arc, time::Duration};

use auth_api::v1::ValidateTokenRequest;
use auth_test_support::{cluster, otlp::Collector};
use prost::Message;

use super::{
    BoxError, Options, Server, bulk_tokens, h2load, load, store_tokens, validate_load, verdict,
};

pub async fn run(
    bin: &Path,
    baseline: &Path,
    config: &tokio_postgres::Config,
    o: &Options,
) -> Result<(), BoxError> {
    if !h2load::available() {
        return Err("--baseline measures with h2load: apt-get install nghttp2-client".into());
    }
    let tokens = bulk_tokens(config, o.tokens, 60.0 * 86400.0).await?;
    let conninfo = cluster::conninfo(config);
    let old_conninfo = old_database(&tokens).await?;
    cold_at_low_load(bin, baseline, &conninfo, &old_conninfo, &tokens, o).await?;
    let token = tokens.first().ok_or("no token")?;
    traces(bin, baseline, &conninfo, &old_conninfo, token, o).await
}

/// A database for the build from before, migrated only as far as it knows, holding
/// `tokens`; its conninfo.
async fn old_database(tokens: &[String]) -> Result<String, BoxError> {
    let old = cluster::fresh_database().await?;
    let (client, task) = cluster::connect(&old).await?;
    client
        .batch_execute(
            "DROP INDEX IF EXISTS tokens_dead_since_idx;
             DELETE FROM refinery_schema_history WHERE version > 3;",
        )
        .await?;
    drop(client);
    let _ = task.await;
    store_tokens(&old, tokens, 60.0 * 86400.0).await?;
    Ok(cluster::conninfo(&old))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Cold `ValidateToken` from 1 and 8 callers over one connection, before and now.
async fn cold_at_low_load(
    bin: &Path,
    baseline: &Path,
    conninfo: &str,
    old_conninfo: &str,
    tokens: &[String],
    o: &Options,
) -> Result<(), BoxError> {
    let cold = ["--cache-capacity", "0"];
    let servers = [
        ("before", Server::spawn(baseline, old_conninfo, &cold)?),
        ("now", Server::spawn(bin, conninfo, &cold)?),
    ];
    let mut channels = Vec::new();
    for (_, server) in &servers {
        channels.push(server.channels(1).await?);
    }
    let tokens = Arc::new(tokens.to_vec());
    let callers = [1usize, 8];
    // stats[round][callers][server]
    let mut stats: Vec<Vec<Vec<load::Stats>>> = Vec::new();
    for _ in 0..o.rounds {
        let mut by_callers = Vec::new();
        for &n in &callers {
            let shape = Options {
                concurrency: n,
                ..o.clone()
            };
            let mut by_server = Vec::new();
            for ch in &channels {
                by_server.push(validate_load(ch, tokens.clone(), &shape).await);
            }
            by_callers.push(by_server);
        }
        stats.push(by_callers);
    }
    println!(
        "\ncold ValidateToken at low load (--cache-capacity 0, {} distinct tokens, 1 connection), medians of {} interleaved rounds:",
        tokens.len(),
        o.rounds
    );
    for (c, n) in callers.iter().enumerate() {
        let mut p99 = [0.0; 2];
        for (s, (name, _)) in servers.iter().enumerate() {
            let of = |f: &dyn Fn(&load::Stats) -> f64| {
                median(stats.iter().map(|r| f(&r[c][s])).collect())
            };
            p99[s] = of(&|st| st.ms(0.99));
            let failed: u64 = stats.iter().map(|r| r[c][s].failed).sum();
            println!(
                "  {n} caller(s), {name:<7} {:>8.0} req/s  p50 {:>5.2} ms  p99 {:>5.2} ms  ({failed} errors)",
                of(&|st| st.rate()),
                of(&|st| st.ms(0.50)),
                p99[s]
            );
        }
        let ratio = p99[1] / p99[0];
        println!(
            "  {n} caller(s): p99 now / before {ratio:.2}x  [target <= 1.5x: {}]",
            verdict(ratio <= 1.5)
        );
    }
    for (_, server) in servers {
        server.stop();
    }
    Ok(())
}

/// Warm `ValidateToken` through h2load: before, traces off, 1 % and 100 % sampled.
async fn traces(
    bin: &Path,
    baseline: &Path,
    conninfo: &str,
    old_conninfo: &str,
    token: &str,
    o: &Options,
) -> Result<(), BoxError> {
    let collector = Collector::start().await?;
    let endpoint = collector.endpoint();
    let ratio = [
        "--otlp-endpoint",
        &endpoint,
        "--otel-traces-sampler",
        "parentbased_traceidratio",
        "--otel-traces-sampler-arg",
        "0.01",
    ];
    let always = [
        "--otlp-endpoint",
        &endpoint,
        "--otel-traces-sampler",
        "always_on",
    ];
    let servers = [
        (
            "before traces (baseline build)",
            Server::spawn(baseline, old_conninfo, &[])?,
        ),
        ("traces off", Server::spawn(bin, conninfo, &[])?),
        (
            "traces on, 1 % sampled",
            Server::spawn(bin, conninfo, &ratio)?,
        ),
        (
            "traces on, 100 % sampled",
            Server::spawn(bin, conninfo, &always)?,
        ),
    ];
    for (_, server) in &servers {
        server.channels(1).await?;
    }
    let dir = std::env::temp_dir().join(format!("auth-bench-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let body = dir.join("validate.bin");
    std::fs::write(
        &body,
        h2load::grpc_frame(
            &ValidateTokenRequest {
                token: token.to_owned(),
            }
            .encode_to_vec(),
        ),
    )?;
    let call = |server: &Server, connections, streams, duration| {
        h2load::run(
            &server.grpc.to_string(),
            server.child.id(),
            "/auth.v1.AuthService/ValidateToken",
            &body,
            connections,
            streams,
            duration,
        )
    };
    // A first call on each fills its cache; the rounds then measure the warm path.
    for (_, server) in &servers {
        call(server, 1, 1, Duration::from_secs(1))?;
    }
    let mut rounds: Vec<Vec<h2load::Run>> = Vec::new();
    for _ in 0..o.rounds {
        let mut round = Vec::new();
        for (_, server) in &servers {
            round.push(call(server, 16, 8, Duration::from_secs(o.seconds))?);
        }
        rounds.push(round);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\ntraces: warm ValidateToken, h2load (16 connections x 8 streams), {} interleaved rounds (req/s per round):",
        o.rounds
    );
    let cpu_us = |r: &h2load::Run| r.server_cpu.as_secs_f64() * 1e6;
    for (i, (name, _)) in servers.iter().enumerate() {
        let rates: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r[i].rate)).collect();
        let bad: u64 = rounds.iter().map(|r| r[i].non_2xx).sum();
        println!(
            "  {name:<34} {}  ({bad} non-2xx)  server CPU {:.1} us/call",
            rates.join(" / "),
            median(rounds.iter().map(|r| cpu_us(&r[i])).collect())
        );
    }
    // Each round's ratio to the build from before in that round, then their median.
    let rate = |i: usize| median(rounds.iter().map(|r| r[i].rate / r[0].rate).collect());
    let cpu = |i: usize| {
        median(
            rounds
                .iter()
                .map(|r| cpu_us(&r[i]) / cpu_us(&r[0]))
                .collect(),
        )
    };
    println!(
        "  traces off / before traces     CPU per call {:.3}x  rate {:.3}x  [target: CPU within 3 %: {}]",
        cpu(1),
        rate(1),
        verdict(cpu(1) <= 1.03)
    );
    println!(
        "  1 % sampled / before traces    CPU per call {:.3}x  rate {:.3}x",
        cpu(2),
        rate(2)
    );
    println!(
        "  100 % sampled / before traces  CPU per call {:.3}x  rate {:.3}x",
        cpu(3),
        rate(3)
    );
    // Give the last batches their second to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = collector
        .spans()
        .iter()
        .filter(|s| s.name.ends_with("ValidateToken"))
        .count();
    println!(
        "  ValidateToken server spans the receiver got from both exporting servers: {received}"
    );
    for (_, server) in servers {
        server.stop();
    }
    Ok(())
}
