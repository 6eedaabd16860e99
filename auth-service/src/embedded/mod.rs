//! The embedded default: a private PostgreSQL cluster under the data directory,
//! reachable only through a Unix socket inside it (no TCP port).
//!
//! `initdb` on first use, `pg_ctl start` when it is not running, `pg_ctl stop` only
//! by the process that owns it, so `auth-service token ...` works against the same
//! data directory while `serve` runs. Every one of these decisions is taken under a
//! lock in the data directory ([`lock`]), so processes started together agree. When
//! we are root the programs run as the `postgres` system user, since PostgreSQL
//! refuses to run as root.
//!
//! Errors exit 2 (systemd does not restart) only when the operator must change
//! something: the programs, the account, the data directory's path or ownership. A full
//! or failing disk, or a server program that ran and failed, exits 1 ([`Error::io`],
//! `checked`).
use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::error::{Error, Result};

pub mod account;
pub(crate) mod binaries;
pub(crate) mod lock;

pub(crate) use account::RunAs;
pub(crate) use binaries::PgBinaries;
pub(crate) use lock::{ClusterLock, ServeLock};

/// The socket path must fit in `sockaddr_un.sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
const SOCKET_NAME: &str = ".s.PGSQL.5432";

/// Tuning for a cluster; tests turn durability off for speed (`fsync: false` also
/// creates the cluster with `initdb --no-sync`).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub fsync: bool,
    pub max_connections: u32,
    /// Take ownership of a server that is already running (`serve` does: it may be
    /// left over from a crash, or started by a `token` command), so it is stopped
    /// when this process shuts down. Only one process may own it: this also claims
    /// the data directory for as long as the `Cluster` lives ([`ServeLock`]), and
    /// fails if another process has claimed it.
    pub adopt_running: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            fsync: true,
            max_connections: 100,
            adopt_running: false,
        }
    }
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct Cluster {
    bins: PgBinaries,
    /// The data directory (canonical), where the lock files are.
    data_dir: PathBuf,
    pgdata: PathBuf,
    run_as: Option<RunAs>,
    /// Whether this process started or adopted the server (and so stops it).
    owned: bool,
    /// `serve`'s claim on the data directory, released after the server is stopped.
    serve_lock: Option<ServeLock>,
}

impl Cluster {
    /// Initialises the cluster under `data_dir` if needed and makes sure it runs.
    pub fn start(
        data_dir: &Path,
        bindir: Option<&Path>,
        options: &ClusterOptions,
    ) -> Result<Cluster> {
        let (cluster, _deciding) = Cluster::start_locked(data_dir, bindir, options)?;
        Ok(cluster)
    }

    /// Like [`Cluster::start`], but returns with the cluster lock still held, so the
    /// caller can connect before any other process decides to stop the server.
    pub(crate) fn start_locked(
        data_dir: &Path,
        bindir: Option<&Path>,
        options: &ClusterOptions,
    ) -> Result<(Cluster, ClusterLock)> {
        let bins = PgBinaries::locate(bindir)?;
        let run_as = account::cluster_account()?;
        let data_dir = create_data_dir(data_dir, run_as.as_ref())?;
        // The claim first, so a second `serve` is refused at once rather than after
        // waiting for the first one's initdb.
        let serve_lock = if options.adopt_running {
            Some(ServeLock::acquire(&data_dir)?)
        } else {
            None
        };
        let deciding = ClusterLock::acquire(&data_dir)?;
        let pgdata = cluster_dir(&data_dir, run_as.as_ref())?;
        let mut cluster = Cluster {
            bins,
            data_dir,
            pgdata,
            run_as,
            owned: false,
            serve_lock,
        };
        if !cluster.pgdata.join("PG_VERSION").is_file() {
            cluster.initdb(options)?;
        }
        cluster.write_settings(options)?;
        cluster.start_server()?;
        if options.adopt_running {
            cluster.owned = true;
        }
        Ok((cluster, deciding))
    }

    /// Waits for the right to decide about the server (stop it or leave it running).
    pub(crate) fn lock(&self) -> Result<ClusterLock> {
        ClusterLock::acquire(&self.data_dir)
    }

    /// Whether a `serve` has claimed this data directory (and so owns the server).
    pub(crate) fn serve_running(&self, deciding: &ClusterLock) -> Result<bool> {
        ServeLock::held(&self.data_dir, deciding)
    }

    /// Where clients connect: the socket directory, as the `postgres` superuser.
    pub fn client_config(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.pgdata)
            .port(5432)
            .user("postgres")
            .dbname(dbname);
        config.application_name("auth-service");
        config
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Stops the server if this process owns it; otherwise leaves it to its owner.
    pub fn stop(self) -> Result<()> {
        let deciding = self.lock()?;
        self.stop_locked(&deciding)
    }

    /// [`Cluster::stop`] for a caller that already holds the cluster lock.
    pub(crate) fn stop_locked(mut self, _deciding: &ClusterLock) -> Result<()> {
        let stopped = if self.owned {
            self.stop_server()
        } else {
            Ok(())
        };
        // Only once the server is down: a `serve` waiting for the cluster lock then
        // finds the data directory free and the server stopped, and starts it afresh.
        drop(self.serve_lock.take());
        stopped
    }

    /// Whether this process will stop the server when done.
    pub(crate) fn owned(&self) -> bool {
        self.owned
    }

    /// Leaves the server running when this process is done (others still use it).
    pub fn disown(&mut self) {
        self.owned = false;
    }

    /// Stops the server now (fast shutdown: clients are disconnected).
    pub fn stop_server(&mut self) -> Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])?;
        self.owned = false;
        tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL stopped");
        Ok(())
    }

    /// Starts the server unless one already runs on this data directory. Processes
    /// that share the data directory call it under the cluster lock.
    pub fn start_server(&mut self) -> Result<()> {
        if self.is_running() {
            tracing::info!(pgdata = %self.pgdata.display(), "using the embedded PostgreSQL that is already running");
            return Ok(());
        }
        let log = self.pgdata.join("server.log");
        let log = log.to_string_lossy();
        match self.pg_ctl(&["start", "-w", "-t", "60", "-l", &log]) {
            Ok(()) => {
                self.owned = true;
                tracing::info!(pgdata = %self.pgdata.display(), "embedded PostgreSQL started");
                Ok(())
            }
            Err(e) => {
                let said = format!(
                    "{e}\n--- last lines of {log} ---\n{}",
                    tail(&self.pgdata.join("server.log"), 15)
                );
                // Exit 2 or 1 as `checked` decided: a server that did not start for
                // want of disk is a runtime failure.
                Err(match e {
                    Error::Config(_) => Error::Config(said),
                    _ => Error::Runtime(said),
                })
            }
        }
    }

    /// Whether a server runs on this data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.pgdata)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// A program of this PostgreSQL installation (a server program, or a client such
    /// as `pg_basebackup`), run the way the cluster's own programs are: as the
    /// cluster's user when we are root, from `/`, in the C locale. Tests use it to
    /// work on a cluster (clone it into a standby, promote one).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bins.program(program));
        // The cluster user may not be able to enter our working directory.
        cmd.current_dir("/").env("LC_ALL", "C");
        if let Some(who) = &self.run_as {
            cmd.uid(who.uid)
                .gid(who.gid)
                .env("HOME", "/")
                .env("USER", &who.name);
        }
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(&self.pgdata).args(args);
        checked(cmd.output(), "pg_ctl", args.first().copied().unwrap_or(""))
    }

    /// `initdb` into a scratch directory renamed into place, so a crash halfway
    /// never leaves a half-made cluster behind. Under the cluster lock, so the
    /// scratch directory is ours to clear.
    fn initdb(&mut self, options: &ClusterOptions) -> Result<()> {
        let scratch = self.pgdata.with_extension("init");
        let _ = fs::remove_dir_all(&scratch);
        make_dir(&scratch, 0o700, self.run_as.as_ref())?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&scratch).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        ]);
        if !options.fsync {
            // A throwaway cluster (tests): skip the fsync of every file initdb writes.
            cmd.arg("--no-sync");
        }
        checked(cmd.output(), "initdb", "")?;
        // Our settings come last so they win; the included file is rewritten at each start.
        let mut conf = fs::read_to_string(scratch.join("postgresql.conf"))
            .map_err(io("reading postgresql.conf"))?;
        conf.push_str(
            "\n# Added by auth-service: no TCP, a private socket, our own settings.\n\
             listen_addresses = ''\nunix_socket_permissions = 0700\n\
             include_if_exists = 'auth-service.conf'\n",
        );
        fs::write(scratch.join("postgresql.conf"), conf).map_err(io("writing postgresql.conf"))?;
        if self.pgdata.exists() {
            fs::remove_dir(&self.pgdata).map_err(|e| match e.kind() {
                std::io::ErrorKind::DirectoryNotEmpty => Error::Config(format!(
                    "{} exists but holds no PostgreSQL cluster ({e}); move it away or choose another --data-dir",
                    self.pgdata.display()
                )),
                _ => Error::io(
                    format_args!("removing the empty {}", self.pgdata.display()),
                    &e,
                ),
            })?;
        }
        fs::rename(&scratch, &self.pgdata).map_err(io("moving the new cluster into place"))?;
        tracing::info!(pgdata = %self.pgdata.display(), "initialised embedded PostgreSQL cluster");
        Ok(())
    }

    fn write_settings(&self, options: &ClusterOptions) -> Result<()> {
        let socket_dir = self.pgdata.to_string_lossy().replace('\'', "''");
        let body = format!(
            "# Written by auth-service at every start.\nunix_socket_directories = '{socket_dir}'\n\
             max_connections = {}\nfsync = {}\nsynchronous_commit = {}\nfull_page_writes = {}\n",
            options.max_connections,
            on_off(options.fsync),
            on_off(options.fsync),
            on_off(options.fsync),
        );
        let path = self.pgdata.join("auth-service.conf");
        fs::write(&path, body).map_err(io("writing auth-service.conf"))?;
        if let Some(who) = &self.run_as {
            std::os::unix::fs::chown(&path, Some(who.uid), Some(who.gid))
                .map_err(io("chown auth-service.conf"))?;
        }
        Ok(())
    }
}

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Creates the data directory if need be, and returns its canonical path.
fn create_data_dir(data_dir: &Path, run_as: Option<&RunAs>) -> Result<PathBuf> {
    let fresh = !data_dir.exists();
    fs::create_dir_all(data_dir).map_err(|e| {
        Error::io(
            format_args!("cannot create --data-dir {}", data_dir.display()),
            &e,
        )
    })?;
    let data_dir = fs::canonicalize(data_dir).map_err(io("resolving --data-dir"))?;
    // A directory we made is private (the cluster user may pass through it when we
    // are root); one the user already had keeps its permissions.
    if fresh {
        let mode = if run_as.is_some() { 0o711 } else { 0o700 };
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(mode))
            .map_err(io("chmod --data-dir"))?;
    }
    Ok(data_dir)
}

/// Decides where the cluster lives: `<data_dir>/pgdata`, unless the cluster user
/// cannot reach it (root running in a private home directory), in which case the
/// cluster lives under `/var/lib/auth-service` and `pgdata` links there. Under the
/// cluster lock, since it may replace the link.
fn cluster_dir(data_dir: &Path, run_as: Option<&RunAs>) -> Result<PathBuf> {
    let link = data_dir.join("pgdata");
    let blocked = run_as.and_then(|who| account::blocking_ancestor(data_dir, who));
    let pgdata = match (run_as, blocked) {
        (Some(who), Some(blocked)) => {
            let home = PathBuf::from("/var/lib/auth-service/clusters");
            fs::create_dir_all(&home).map_err(io("creating /var/lib/auth-service/clusters"))?;
            let target = home.join(format!(
                "{:016x}",
                fnv1a(data_dir.as_os_str().as_encoded_bytes())
            ));
            if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
                let _ = fs::remove_file(&link);
                std::os::unix::fs::symlink(&target, &link).map_err(io("linking pgdata"))?;
            }
            tracing::info!(
                blocked = %blocked.display(), cluster = %target.display(),
                "the `{}` user cannot enter the data directory, so the cluster lives elsewhere (linked from {})",
                who.name, link.display()
            );
            target
        }
        _ => link,
    };
    let socket = pgdata.join(SOCKET_NAME);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::Config(format!(
            "the data directory path is too long for a Unix socket ({} > {MAX_SOCKET_PATH} bytes): \
             choose a shorter --data-dir",
            socket.as_os_str().len()
        )));
    }
    Ok(pgdata)
}

fn make_dir(dir: &Path, mode: u32, owner: Option<&RunAs>) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("creating the cluster directory"))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .map_err(io("chmod the cluster directory"))?;
    if let Some(who) = owner {
        std::os::unix::fs::chown(dir, Some(who.uid), Some(who.gid))
            .map_err(io("chown the cluster directory"))?;
    }
    Ok(())
}

/// A stable, dependency-free hash for naming a relocated cluster directory.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An I/O failure while doing `what`: exit 2 only if the operator must fix it (see
/// [`Error::io`]).
fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::io(what, &e)
}

/// `Ok` if the program succeeded; otherwise an error naming it (and `action`, if any)
/// with everything it printed.
///
/// A program that could not be started is classified by why ([`Error::io`]: not there,
/// not executable: exit 2). One that ran and failed is a runtime failure (exit 1): what
/// the operator controls (the programs, the account, the data directory and its
/// ownership) has been checked before it runs, and what is left (a full or failing
/// disk, shared memory used up) may pass, so systemd should try again. A restart loop
/// on the odd failure that will not pass costs less than a service that stays down
/// after the disk was freed.
fn checked(output: std::io::Result<Output>, program: &str, action: &str) -> Result<()> {
    let out = output.map_err(|e| Error::io(format_args!("could not run {program}"), &e))?;
    if out.status.success() {
        return Ok(());
    }
    let what = match action {
        "" => program.to_string(),
        action => format!("{program} {action}"),
    };
    let printed: Vec<String> = [&out.stderr, &out.stdout]
        .iter()
        .map(|b| String::from_utf8_lossy(b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Err(Error::Runtime(format!(
        "{what} failed ({}): {}",
        out.status,
        printed.join("\n")
    )))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn failed_with(stderr: &str, stdout: &str) -> Output {
        Output {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_failed_program_is_named_once_without_stray_spaces() {
        let err = checked(Ok(failed_with("initdb: error: no\n", "")), "initdb", "")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("initdb failed (exit status: 1): initdb: error: no"),
            "{err}"
        );
        let err = checked(Ok(failed_with("", "")), "pg_ctl", "stop")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("pg_ctl stop failed (exit status: 1)"),
            "{err}"
        );
    }

    #[test]
    fn stderr_and_stdout_of_a_failed_program_stay_apart() {
        let err = checked(
            Ok(failed_with("hint: remove it.", "The files")),
            "initdb",
            "",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("hint: remove it.\nThe files"), "{err}");
    }
}
