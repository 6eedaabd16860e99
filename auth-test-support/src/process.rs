//! Child processes: started with an environment of the test's own, signalled, and
//! measured as the attacks and the benchmark measure them (CPU time, a limit on open
//! files).
use std::{os::unix::process::CommandExt, process::Command, time::Duration};

use rustix::process::{Pid, Resource, Rlimit, Signal, kill_process, setrlimit};

/// An installed program: `$<override_var>` when set, else `name` on the PATH, else in
/// `/usr/sbin` (where Debian puts daemons such as nginx and pgbouncer, off a normal
/// user's PATH). The error says how to install it (`.ci/run` does).
pub fn find_program(
    name: &str,
    override_var: &str,
    install: &str,
) -> Result<std::path::PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(path) = std::env::var_os(override_var) {
        return Ok(path.into());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed: {install} (.ci/run installs it)").into())
}

/// `program` with a cleared environment but for `PATH`, `HOME`, `TMPDIR` and `USER`,
/// so that what a developer's shell exports (`AUTH_SERVICE_DATABASE_URL`, `RUST_LOG`,
/// ...) cannot change what a test sees. Tests add what they mean to set.
pub fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for keep in ["PATH", "HOME", "TMPDIR", "USER"] {
        if let Some(value) = std::env::var_os(keep) {
            cmd.env(keep, value);
        }
    }
    cmd
}

/// Process `pid`'s CPU time so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The fields after the command name (which may hold spaces) in parentheses: utime and
    // stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        return Err(format!("unexpected /proc/{pid}/stat: {stat}"));
    };
    let hz = rustix::param::clock_ticks_per_second();
    Ok(Duration::from_secs_f64(
        (user + system) as f64 / hz.max(1) as f64,
    ))
}

/// Starts `cmd` with at most `limit` open files (soft and hard).
///
/// The limit must hold from the program's first instruction (the server reads it once,
/// at startup), so it is set in the child between fork and exec: `pre_exec` is
/// `unsafe` in std whatever the closure does, and has no safe form.
#[allow(unsafe_code)]
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
    let limit = Rlimit {
        current: Some(limit),
        maximum: Some(limit),
    };
    // SAFETY: the closure only makes the setrlimit system call, which is
    // async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || setrlimit(Resource::Nofile, limit).map_err(Into::into));
    }
}

/// Sends SIGTERM to process `pid` (a child the test started and has not reaped).
pub fn terminate(pid: u32) -> std::io::Result<()> {
    signal(pid, Signal::TERM)
}

/// Sends SIGHUP to process `pid` (a child the test started and has not reaped).
pub fn hang_up(pid: u32) -> std::io::Result<()> {
    signal(pid, Signal::HUP)
}

fn signal(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("not a process id: {pid}")))?;
    kill_process(pid, signal).map_err(Into::into)
}
