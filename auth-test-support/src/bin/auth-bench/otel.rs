//! What traces cost (`auth-bench --otel-baseline BIN`): warm `ValidateToken` through
//! h2load on four servers of the same database, in interleaved rounds:
//!
//! - `BIN`, a build from before traces existed (the commit before they were added);
//! - this build with traces off (no `--otlp-endpoint`: the spans are disabled callsites);
//! - this build exporting to a real OTLP receiver with `parentbased_traceidratio` 0.01
//!   (h2load sends no `traceparent`, so 1 % of the calls start a sampled trace);
//! - the same at 100 % (`always_on`), to show what a sampled call costs.
//!
//! The result is each server's median rate and server CPU per call, and the ratios to
//! the build from before; the target is traces off within 3 % of it.
use std::{path::Path, time::Duration};

use auth_api::v1::ValidateTokenRequest;
use auth_test_support::{cluster, otlp::Collector};
use prost::Message;

use super::{BoxError, Options, Server, h2load, store_tokens, verdict};

pub async fn run(
    bin: &Path,
    baseline: &Path,
    conninfo: &str,
    token: &[String],
    o: &Options,
) -> Result<(), BoxError> {
    if !h2load::available() {
        return Err("--otel-baseline measures with h2load: apt-get install nghttp2-client".into());
    }
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
    // The build from before has a database of its own, without the migrations that
    // came after it (it refuses a schema it does not know), holding the same token.
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
    store_tokens(&old, token, 60.0 * 86400.0).await?;
    let old_conninfo = cluster::conninfo(&old);
    let token = token.first().ok_or("no token")?;
    let servers = [
        (
            "before traces (baseline build)",
            Server::spawn(baseline, &old_conninfo, &[])?,
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
    let duration = Duration::from_secs(o.seconds);
    // A first call on each fills its cache; the rounds then measure the warm path.
    for (_, server) in &servers {
        h2load::run(
            &server.grpc.to_string(),
            server.child.id(),
            "/auth.v1.AuthService/ValidateToken",
            &body,
            1,
            1,
            Duration::from_secs(1),
        )?;
    }
    let mut rounds: Vec<Vec<h2load::Run>> = Vec::new();
    for _ in 0..o.rounds {
        let mut round = Vec::new();
        for (_, server) in &servers {
            round.push(h2load::run(
                &server.grpc.to_string(),
                server.child.id(),
                "/auth.v1.AuthService/ValidateToken",
                &body,
                16,
                8,
                duration,
            )?);
        }
        rounds.push(round);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "\ntraces: warm ValidateToken, h2load (16 connections x 8 streams), {} interleaved rounds:",
        o.rounds
    );
    for (i, (name, _)) in servers.iter().enumerate() {
        let rates: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r[i].rate)).collect();
        let cpu = median(
            rounds
                .iter()
                .map(|r| r[i].server_cpu.as_secs_f64() * 1e6)
                .collect(),
        );
        let bad: u64 = rounds.iter().map(|r| r[i].non_2xx).sum();
        println!(
            "  {name:<34} {}  ({bad} non-2xx)  server CPU {cpu:.1} us/call",
            rates.join(" / ")
        );
    }
    // Each round's ratio to the baseline measured in that round, then their median.
    let to_base = |i: usize| median(rounds.iter().map(|r| r[i].rate / r[0].rate).collect());
    let cpu_to_base = |i: usize| {
        median(
            rounds
                .iter()
                .map(|r| r[i].server_cpu.as_secs_f64() / r[0].server_cpu.as_secs_f64())
                .collect(),
        )
    };
    let off = to_base(1);
    println!(
        "  traces off / before traces          rate {off:.3}x  CPU per call {:.3}x  [target: within 3 %: {}]",
        cpu_to_base(1),
        verdict(off >= 0.97)
    );
    println!(
        "  1 % sampled / before traces         rate {:.3}x  CPU per call {:.3}x",
        to_base(2),
        cpu_to_base(2)
    );
    println!(
        "  100 % sampled / before traces       rate {:.3}x  CPU per call {:.3}x",
        to_base(3),
        cpu_to_base(3)
    );
    // Give the last batches their second to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = collector.spans();
    let server_spans = |method: &str| spans.iter().filter(|s| s.name.ends_with(method)).count();
    println!(
        "  spans received: {} ValidateToken server spans in all (both exporting servers)",
        server_spans("ValidateToken")
    );
    for (_, server) in servers {
        server.stop();
    }
    Ok(())
}
