//! A primary and its streaming standby (`pg_basebackup -R`), both throwaway, for
//! failover tests: stop the primary at once, promote the standby.
//!
//! Both are embedded clusters ([`Cluster`]) of their own, each listening only on a Unix
//! socket inside its own data directory (so both can use port 5432), run as the
//! `postgres` user when the tests run as root. The standby's data directory is filled by
//! `pg_basebackup` before [`Cluster::start`] looks at it: a data directory that is
//! already there is started, not initialised, and its socket settings are rewritten.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use auth_service::embedded::{Cluster, account};

use crate::{
    Result,
    cluster::{self, Guarded},
};

/// The end of the WAL the primary has produced, as text. The insert position, not the
/// write position (`pg_current_wal_lsn`): test clusters commit without waiting for the
/// WAL to be written (`synchronous_commit = off`), so the last commits may sit in WAL
/// buffers, past the write position, for up to `wal_writer_delay`.
const CURRENT_LSN: &str = "SELECT pg_current_wal_insert_lsn()::text";
/// Whether the standby has replayed the WAL up to $1 (an LSN as text).
const REPLAYED_UP_TO: &str = "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn";

/// A primary and a standby streaming from it; both stopped and deleted when dropped.
pub struct Pair {
    primary: Guarded,
    standby: Guarded,
}

impl Pair {
    /// Starts a fresh primary, clones it into a standby that streams from it, and starts
    /// the standby (a hot standby: it answers reads, and refuses writes with SQLSTATE
    /// 25006).
    pub async fn start() -> Result<Pair> {
        // `wal_level = replica` and `max_wal_senders = 10` are PostgreSQL's defaults, and
        // initdb's pg_hba.conf has `local replication all trust` (the clusters are made
        // with `--auth=trust`): the primary needs no extra settings.
        let primary = Guarded::start("ha-primary").await?;
        tokio::task::spawn_blocking(move || {
            let standby = standby_of(&primary)?;
            Ok(Pair { primary, standby })
        })
        .await?
    }

    pub fn primary(&self) -> &Cluster {
        &self.primary
    }

    pub fn standby(&self) -> &Cluster {
        &self.standby
    }

    /// A libpq key-value connection string naming both servers, primary first, that
    /// only accepts a server that takes writes: what a service survives a failover with.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={},{} port=5432 user=postgres dbname={dbname} target_session_attrs=read-write",
            self.primary.pgdata().display(),
            self.standby.pgdata().display()
        )
    }

    /// A connection string naming the standby alone, with any session accepted: a
    /// service configured with it reaches the read-only standby.
    pub fn standby_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port=5432 user=postgres dbname={dbname}",
            self.standby.pgdata().display()
        )
    }

    /// Waits (up to 10 s) until the standby has replayed everything the primary has
    /// written so far. Replication is asynchronous: what the primary committed reaches
    /// the standby a moment later, and an immediate stop before then loses it.
    pub async fn wait_for_standby(&self) -> Result<()> {
        let (primary, primary_task) =
            cluster::connect(&self.primary.client_config("postgres")).await?;
        let lsn: String = primary.query_one(CURRENT_LSN, &[]).await?.try_get(0)?;
        drop(primary);
        let _ = primary_task.await;
        let (standby, standby_task) =
            cluster::connect(&self.standby.client_config("postgres")).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let caught_up = loop {
            let replayed: Option<bool> = standby
                .query_one(REPLAYED_UP_TO, &[&lsn])
                .await?
                .try_get(0)?;
            if replayed == Some(true) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(standby);
        let _ = standby_task.await;
        if caught_up {
            Ok(())
        } else {
            Err(format!("the standby did not replay up to {lsn} within 10 s").into())
        }
    }

    /// `pg_ctl stop -m immediate` on the primary: every backend is killed at once, with
    /// no checkpoint and no goodbye to clients, as when its machine fails.
    pub async fn stop_primary_immediately(&self) -> Result<()> {
        pg_ctl(&self.primary, &["stop", "-m", "immediate", "-w"]).await
    }

    /// `pg_ctl promote` on the standby, returning once it takes writes.
    pub async fn promote_standby(&self) -> Result<()> {
        pg_ctl(&self.standby, &["promote", "-w", "-t", "30"]).await
    }
}

/// Runs `pg_ctl -D <its data> args` on `cluster`, off the async threads.
async fn pg_ctl(cluster: &Cluster, args: &[&str]) -> Result<()> {
    let mut cmd = cluster.command("pg_ctl");
    cmd.arg("-D").arg(cluster.pgdata()).args(args);
    let out = tokio::process::Command::from(cmd).output().await?;
    succeeded(out, &format!("pg_ctl {}", args.join(" ")))
}

/// Clones `primary` into a new scratch directory with `pg_basebackup -R` (which writes
/// `standby.signal` and the `primary_conninfo` that streams from the primary's socket),
/// and starts it there. Blocking.
fn standby_of(primary: &Cluster) -> Result<Guarded> {
    let dir = cluster::scratch_dir("ha-standby");
    match clone_and_start(primary, &dir) {
        Ok(standby) => Ok(Guarded::adopt(standby, dir)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn clone_and_start(primary: &Cluster, dir: &Path) -> Result<Cluster> {
    std::fs::create_dir_all(dir)?;
    let run_as = account::cluster_account()?;
    // Cluster::start would move a data directory the cluster user cannot reach
    // elsewhere; this one must be where pg_basebackup writes.
    if let Some(who) = &run_as
        && let Some(blocked) = account::blocking_ancestor(dir, who)
    {
        return Err(format!(
            "the `{}` user cannot enter {}: point TMPDIR at a directory it can reach",
            who.name,
            blocked.display()
        )
        .into());
    }
    let pgdata: PathBuf = dir.join("pgdata");
    std::fs::create_dir(&pgdata)?;
    std::fs::set_permissions(&pgdata, std::fs::Permissions::from_mode(0o700))?;
    if let Some(who) = &run_as {
        std::os::unix::fs::chown(&pgdata, Some(who.uid), Some(who.gid))?;
    }
    let mut backup = primary.command("pg_basebackup");
    backup
        .arg("--pgdata")
        .arg(&pgdata)
        .arg("--host")
        .arg(primary.pgdata())
        .args([
            "--port=5432",
            "--username=postgres",
            "--write-recovery-conf",
            "--wal-method=stream",
            // An immediate checkpoint: the default spreads it over minutes.
            "--checkpoint=fast",
            "--no-sync",
        ]);
    succeeded(backup.output()?, "pg_basebackup")?;
    // The copy holds the primary's socket lock file (the socket lives in the data
    // directory), which names the running primary's pid and would stop the standby from
    // starting, and the primary's server log.
    for name in [".s.PGSQL.5432.lock", "server.log"] {
        let _ = std::fs::remove_file(pgdata.join(name));
    }
    // Finds the cloned data directory and starts it, after rewriting the settings the
    // copy brought along (the socket directory among them) for this place.
    Ok(Cluster::start(dir, None, &cluster::options())?)
}

fn succeeded(out: Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
    .into())
}
