//! PostgreSQL's own load generator, `pgbench` (the test cluster's installation), running
//! the service's lookup statement on its own, for the cold path's yardstick.
use std::path::Path;

use auth_test_support::cluster;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fills `bench_hashes (i, h)` with `hashes`, numbered from 1, so that a pgbench script
/// can pick a real token's hash by a random number.
pub async fn prepare(config: &tokio_postgres::Config, hashes: &[Vec<u8>]) -> Result<(), BoxError> {
    let (client, task) = cluster::connect(config).await?;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS bench_hashes;
             CREATE TABLE bench_hashes (i int PRIMARY KEY, h bytea NOT NULL)",
        )
        .await?;
    client
        .execute(
            "INSERT INTO bench_hashes SELECT n, h FROM unnest($1::bytea[]) WITH ORDINALITY AS u(h, n)",
            &[&hashes],
        )
        .await?;
    client.batch_execute("ANALYZE bench_hashes").await?;
    drop(client);
    let _ = task.await;
    Ok(())
}

/// The lookup statement (`auth_service::db::sql::LOOKUP`) for one of `n` real hashes
/// picked at random: its `$1` is the hash, read by primary key in the same statement, so
/// that each transaction is one round trip, as the service's lookup is (the extra
/// primary-key read is pgbench's handicap, a small one).
fn script(n: usize) -> String {
    let lookup = auth_service::db::sql::LOOKUP
        .sql
        .replace("$1", "(SELECT h FROM bench_hashes WHERE i = :i)");
    format!("\\set i random(1, {n})\n{};\n", lookup.trim())
}

/// How pgbench sends its statement (`-M`).
#[derive(Debug, Clone, Copy)]
pub enum Protocol {
    /// Parsed and planned at every call (`-M simple`, pgbench's default).
    Simple,
    /// Prepared once per connection (`-M prepared`), as the service's cold lookups are
    /// on a direct session.
    Prepared,
}

/// `pgbench` with `clients` connections (2 threads), for `seconds`: transactions (one
/// lookup each) per second.
pub fn run(
    config: &tokio_postgres::Config,
    n: usize,
    clients: usize,
    seconds: u64,
    dir: &Path,
    protocol: Protocol,
) -> Result<f64, BoxError> {
    let file = dir.join("lookup.pgbench");
    std::fs::write(&file, script(n))?;
    // The cluster's user runs pgbench (as root, the harness switches to it).
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let out = cluster::client_program("pgbench")?
        .args(["-n", "-j", "2", "-M"])
        .arg(match protocol {
            Protocol::Simple => "simple",
            Protocol::Prepared => "prepared",
        })
        .arg("-c")
        .arg(clients.to_string())
        .arg("-T")
        .arg(seconds.to_string())
        .arg("-f")
        .arg(&file)
        .arg(cluster::conninfo(config))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps in pgbench's output: {text}").into())
}
