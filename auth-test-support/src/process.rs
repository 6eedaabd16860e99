//! Child processes: started with an environment of the test's own, and measured as the
//! attacks and the benchmark measure them (CPU time, a limit on open files).
use std::{os::unix::process::CommandExt, process::Command, time::Duration};

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
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100);
    Ok(Duration::from_secs_f64(
        (user + system) as f64 / hz.max(1) as f64,
    ))
}

/// Starts `cmd` with at most `limit` open files (soft and hard).
pub fn limit_open_files(cmd: &mut Command, limit: u64) {
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let rl = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
