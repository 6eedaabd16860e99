//! The cost curve (`auth-bench --tokens 10000,1000000,10000000`): one table grown to each
//! size with `generate_series` in SQL, and at each size the cold ValidateToken rate and
//! latency, RenewCurrentToken latency, the notify scan (1 % of the tokens due within
//! `--notify-before 7d`), `token prune` of 1 % long-dead tokens, the table's and its
//! indexes' size, and the plans of the statements that could stop scaling. `--plot
//! FILE.svg` draws it.
use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use auth_api::v1::{RenewCurrentTokenRequest, auth_service_client::AuthServiceClient};
use auth_service::db::{Db, sql};
use auth_test_support::{cluster, grpc::authed};
use tonic::transport::Channel;

use super::{BoxError, Options, Server, bulk_tokens, load, row, validate_load};

/// The measurements at one size.
#[derive(Debug, Clone)]
pub struct Point {
    pub tokens: u64,
    pub cold_rate: f64,
    pub cold_p50_ms: f64,
    pub cold_p99_ms: f64,
    pub renew_p50_ms: f64,
    pub renew_p99_ms: f64,
    pub scan_ms: f64,
    pub prune_ms: f64,
    pub pruned: u64,
    pub table_mib: f64,
    pub indexes_mib: f64,
}

/// Grows `tokens` to `n` rows with one statement per million: filler tokens (whose
/// secrets nobody knows) with hashes from `sha256`, 1 % due within 7 days, 1 % dead
/// for 100 days, the rest expiring in 60 days.
async fn grow(client: &tokio_postgres::Client, from: u64, to: u64) -> Result<(), BoxError> {
    const FILL: &str = "
        INSERT INTO tokens (user_id, name, token_hash, display_prefix, scopes, expires_at,
                            revoked_at)
        SELECT 'fill-' || (i % 50000), 'fill', sha256(('fill-' || i)::bytea), 'pat_fill',
               ARRAY['read'],
               CASE WHEN i % 100 = 0 THEN now() + interval '3 days'
                    WHEN i % 100 = 1 THEN now() - interval '100 days'
                    ELSE now() + interval '60 days' END,
               NULL
        FROM generate_series($1::int8, $2::int8) AS i";
    let mut start = from + 1;
    while start <= to {
        let end = (start + 999_999).min(to);
        client
            .execute(FILL, &[&i64::try_from(start)?, &i64::try_from(end)?])
            .await?;
        start = end + 1;
    }
    client.batch_execute("VACUUM ANALYZE tokens").await?;
    Ok(())
}

/// p50 and p99 of `n` renewals of `tokens` (each inside its renewal window, renewed
/// once), `concurrency` at a time.
async fn renewals(
    channels: &[Channel],
    tokens: &[String],
    concurrency: usize,
) -> Result<(f64, f64), BoxError> {
    let tokens = Arc::new(tokens.to_vec());
    let channels = Arc::new(channels.to_vec());
    let mut latencies = Vec::new();
    for chunk in (0..tokens.len()).collect::<Vec<_>>().chunks(concurrency) {
        let calls: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let (tokens, channels) = (tokens.clone(), channels.clone());
                tokio::spawn(async move {
                    let mut client = AuthServiceClient::new(channels[i % channels.len()].clone());
                    let started = Instant::now();
                    let ok = client
                        .renew_current_token(authed(RenewCurrentTokenRequest {}, &tokens[i]))
                        .await
                        .is_ok();
                    (ok, started.elapsed())
                })
            })
            .collect();
        for c in calls {
            let (ok, took) = c.await?;
            if !ok {
                return Err("a renewal failed".into());
            }
            latencies.push(took);
        }
    }
    latencies.sort();
    Ok((
        load::quantile_ms(&latencies, 0.50),
        load::quantile_ms(&latencies, 0.99),
    ))
}

/// The plan of `statement` with its parameters spliced in as literals (EXPLAIN cannot
/// take parameters in the simple protocol).
async fn explain(client: &tokio_postgres::Client, sql: &str) -> Result<String, BoxError> {
    let rows = client
        .simple_query(&format!("EXPLAIN (COSTS OFF) {sql}"))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|l| format!("    {l}")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The curve, on the fresh database `config` (migrated, empty), grown to each of `sizes`.
pub async fn run(
    bin: &Path,
    config: &tokio_postgres::Config,
    sizes: &[u64],
    o: &Options,
) -> Result<Vec<Point>, BoxError> {
    let config = config.clone();
    let conninfo = cluster::conninfo(&config);
    let (client, _task) = cluster::connect(&config).await?;
    // Real tokens to validate and renew (their secrets are known), at every size.
    let probes = bulk_tokens(&config, o.tokens, 60.0 * 86400.0).await?;
    let probes = Arc::new(probes);
    let db = Db::new(config.clone(), 4, Duration::from_secs(600))?;
    let mut points = Vec::new();
    let mut filled = 0u64;
    for &size in sizes {
        let started = Instant::now();
        grow(&client, filled, size.saturating_sub(probes.len() as u64)).await?;
        filled = size.saturating_sub(probes.len() as u64).max(filled);
        println!(
            "\n{size} tokens (filled in {:.0} s):",
            started.elapsed().as_secs_f64()
        );
        let server = Server::spawn(bin, &conninfo, &["--cache-capacity", "0"])?;
        let channels = server.channels(o.connections).await?;
        let cold = validate_load(&channels, probes.clone(), o).await;
        row(&format!("ValidateToken, cold, {size} in the table"), &cold);
        let renewable = bulk_tokens(&config, 2000, 3.0 * 86400.0).await?;
        let (renew_p50, renew_p99) = renewals(&channels, &renewable, 8).await?;
        println!(
            "  RenewCurrentToken, 8 at a time       p50 {renew_p50:>6.2} ms  p99 {renew_p99:>6.2} ms"
        );
        server.stop();
        // One scan claims up to a batch (100) of the due notices.
        let scan_started = Instant::now();
        let claimed = db
            .claim_notices(&[7 * 86400], 100, Duration::from_secs(600))
            .await?;
        let scan = scan_started.elapsed();
        println!(
            "  notify scan (1 % due within 7d)      {:>8.1} ms, {} claimed",
            scan.as_secs_f64() * 1e3,
            claimed.len()
        );
        let prune_started = Instant::now();
        let pruned = db.prune(Duration::from_secs(90 * 86400), 1000).await?;
        let prune = prune_started.elapsed();
        println!(
            "  token prune --older-than 90d         {:>8.1} ms, {pruned} deleted",
            prune.as_secs_f64() * 1e3
        );
        let sizes_row = client
            .query_one(
                "SELECT pg_table_size('tokens')::float8 / 1048576,
                        pg_indexes_size('tokens')::float8 / 1048576",
                &[],
            )
            .await?;
        let (table_mib, indexes_mib): (f64, f64) = (sizes_row.get(0), sizes_row.get(1));
        println!("  table {table_mib:.0} MiB, its indexes {indexes_mib:.0} MiB");
        if size == *sizes.last().unwrap_or(&size) {
            let lookup = sql::LOOKUP.sql.replace("$1", "'\\x00'::bytea");
            let prune_sql = sql::PRUNE
                .sql
                .replace("$1", "7776000")
                .replace("$2", "1000");
            let scan_sql = sql::CLAIM_DUE_NOTICES
                .sql
                .replace("$1", "ARRAY[604800]")
                .replace("$2", "604800")
                .replace("$3", "100");
            println!("  EXPLAIN lookup:\n{}", explain(&client, &lookup).await?);
            println!("  EXPLAIN prune:\n{}", explain(&client, &prune_sql).await?);
            println!(
                "  EXPLAIN notify scan:\n{}",
                explain(&client, &scan_sql).await?
            );
        }
        points.push(Point {
            tokens: size,
            cold_rate: cold.rate(),
            cold_p50_ms: cold.ms(0.50),
            cold_p99_ms: cold.ms(0.99),
            renew_p50_ms: renew_p50,
            renew_p99_ms: renew_p99,
            scan_ms: scan.as_secs_f64() * 1e3,
            prune_ms: prune.as_secs_f64() * 1e3,
            pruned,
            table_mib,
            indexes_mib,
        });
        // The next size starts from what this one left: the pruned and claimed rows go.
    }
    println!(
        "\n| tokens | cold ValidateToken | cold p50 / p99 | renewal p50 / p99 | notify scan | prune 1 % | table + indexes |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for p in &points {
        println!(
            "| {} | {:.0} req/s | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.1} ms | {:.0} ms ({} rows) | {:.0} + {:.0} MiB |",
            p.tokens,
            p.cold_rate,
            p.cold_p50_ms,
            p.cold_p99_ms,
            p.renew_p50_ms,
            p.renew_p99_ms,
            p.scan_ms,
            p.prune_ms,
            p.pruned,
            p.table_mib,
            p.indexes_mib
        );
    }
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        println!(
            "growth from {} to {} tokens: cold p99 {:.2}x, renewal p99 {:.2}x [target <= 1.5x]; notify scan at {}: {:.1} ms [target < 1 s]",
            first.tokens,
            last.tokens,
            last.cold_p99_ms / first.cold_p99_ms,
            last.renew_p99_ms / first.renew_p99_ms,
            last.tokens,
            last.scan_ms
        );
    }
    Ok(points)
}

/// Draws the curve: cold and renewal p99 (ms) and the notify scan (ms) against the
/// number of tokens, on a log scale.
pub fn plot(points: &[Point], file: &Path) -> Result<(), BoxError> {
    use plotters::prelude::*;
    let root = SVGBackend::new(file, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_y = points
        .iter()
        .flat_map(|p| [p.cold_p99_ms, p.renew_p99_ms, p.scan_ms])
        .fold(1.0_f64, f64::max)
        * 1.2;
    let min_x = points.first().map_or(1.0, |p| p.tokens as f64);
    let max_x = points.last().map_or(10.0, |p| p.tokens as f64);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "auth-service: latency against table size",
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((min_x..max_x).log_scale(), 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("tokens in the table")
        .y_desc("ms")
        .draw()?;
    type Series = (&'static str, RGBColor, fn(&Point) -> f64);
    let series: [Series; 3] = [
        ("cold ValidateToken p99", BLUE, |p| p.cold_p99_ms),
        ("RenewCurrentToken p99", RED, |p| p.renew_p99_ms),
        ("notify scan", GREEN, |p| p.scan_ms),
    ];
    for (name, color, value) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.tokens as f64, value(p))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
