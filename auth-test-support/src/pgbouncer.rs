//! A real PgBouncer on loopback in front of a test cluster, in `pool_mode =
//! transaction`: what CloudNativePG's `Pooler` and most managed PostgreSQL offerings put
//! between a service and its database. Started in the foreground from a generated
//! configuration (as the cluster's user when we are root: PgBouncer refuses root), and
//! killed when dropped.
use std::{
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use auth_service::embedded::account;

use crate::Result;

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction pooling mode on a free loopback port, in front
    /// of the Unix-socket cluster `upstream` points at: every database name maps to the
    /// same name there, as `upstream`'s user, with `pool_size` server connections per
    /// database.
    pub async fn start(upstream: &tokio_postgres::Config, pool_size: usize) -> Result<PgBouncer> {
        PgBouncer::start_ignoring(upstream, pool_size, "extra_float_digits").await
    }

    /// [`PgBouncer::start`] with `ignore_startup_parameters = ignore`: with `options`
    /// among them, PgBouncer accepts a session's startup options and drops them, where
    /// it otherwise refuses the connection.
    pub async fn start_ignoring(
        upstream: &tokio_postgres::Config,
        pool_size: usize,
        ignore: &str,
    ) -> Result<PgBouncer> {
        let dir = crate::cluster::scratch_dir("pgbouncer");
        std::fs::create_dir_all(&dir)?;
        let socket_dir = match upstream.get_hosts().first() {
            Some(tokio_postgres::config::Host::Unix(path)) => path.clone(),
            _ => return Err("PgBouncer fronts a Unix-socket cluster here".into()),
        };
        let port = crate::nginx::free_port()?;
        let d = dir.display();
        let config = format!(
            "[databases]\n\
             * = host={socket} port={upstream_port} user={user}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             max_client_conn = 4000\n\
             default_pool_size = {pool_size}\n\
             max_db_connections = {pool_size}\n\
             server_reset_query =\n\
             ignore_startup_parameters = {ignore}\n\
             logfile = {d}/pgbouncer.log\n\
             pidfile = {d}/pgbouncer.pid\n",
            socket = socket_dir.display(),
            upstream_port = upstream.get_ports().first().copied().unwrap_or(5432),
            user = upstream.get_user().unwrap_or("postgres"),
        );
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(&ini, config)?;
        let mut cmd = Command::new(crate::process::find_program(
            "pgbouncer",
            "PGBOUNCER",
            "the PgBouncer tests need a real pgbouncer (apt-get install pgbouncer)",
        )?);
        cmd.arg(&ini)
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(who) = account::cluster_account()? {
            std::os::unix::fs::chown(&dir, Some(who.uid), Some(who.gid))?;
            std::os::unix::fs::chown(&ini, Some(who.uid), Some(who.gid))?;
            cmd.uid(who.uid).gid(who.gid);
        }
        let mut child = cmd.spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(PgBouncer { child, addr, dir });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
                return Err(format!("pgbouncer exited ({status}):\n{log}").into());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(format!("pgbouncer did not listen on {addr}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection config for database `dbname` through PgBouncer.
    pub fn config(&self, upstream: &tokio_postgres::Config) -> tokio_postgres::Config {
        crate::cluster::via(upstream, self.addr)
    }

    /// PgBouncer's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
