//! `--pin SUT:GENERATORS`: the system under test (PostgreSQL and the servers) on some
//! CPUs, the load generators (this process, h2load and pgbench) on the others, as two
//! machines would have them. Unpinned, on a machine of few cores, the generators'
//! processes take turns with the server and the database on the same cores: what a
//! ratio then measures is partly the generators' own cost (64 h2load processes cost
//! about as much per call as the server), and the scheduler's noise.
//!
//! Done with util-linux's `taskset` (on every Debian machine): this process and its
//! threads move to the system's CPUs before the cluster starts (so that PostgreSQL
//! and every backend it forks stay there), then to the generators' CPUs; each server
//! starts under `taskset -c SUT`. h2load and pgbench inherit the generators' CPUs.
use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Stdio},
    sync::OnceLock,
};

/// The two CPU lists, as `taskset -c` takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// PostgreSQL and the servers.
    pub system: String,
    /// This process, h2load and pgbench.
    pub generators: String,
}

static PIN: OnceLock<Pin> = OnceLock::new();

/// Parses `SUT:GENERATORS`, two CPU lists (`0`, `0-3`, `0,2`) that must not overlap.
pub fn parse(value: &str) -> Result<Pin, String> {
    let usage =
        || format!("--pin {value}: expected SUT:GENERATORS, two CPU lists such as 0:1 or 0-3:4-7");
    let (system, generators) = value.split_once(':').ok_or_else(usage)?;
    let (a, b) = (
        cpus(system).ok_or_else(usage)?,
        cpus(generators).ok_or_else(usage)?,
    );
    if let Some(both) = a.intersection(&b).next() {
        return Err(format!(
            "--pin {value}: CPU {both} is in both lists; the system under test and the generators need CPUs of their own"
        ));
    }
    Ok(Pin {
        system: system.to_owned(),
        generators: generators.to_owned(),
    })
}

/// The CPUs of a list such as `0-2,5`; `None` if it is not one.
fn cpus(list: &str) -> Option<BTreeSet<u32>> {
    let mut all = BTreeSet::new();
    for part in list.split(',') {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let (from, to) = (from.parse::<u32>().ok()?, to.parse::<u32>().ok()?);
        if from > to {
            return None;
        }
        all.extend(from..=to);
    }
    Some(all)
}

/// Moves this process to the system's CPUs (before the cluster starts) and remembers
/// the pinning for [`server`] and [`generators`].
pub fn start(pin: Pin) -> Result<(), String> {
    move_self(&pin.system)?;
    println!(
        "pinned: PostgreSQL and the servers on CPUs {}; this process, h2load and pgbench on CPUs {}",
        pin.system, pin.generators
    );
    PIN.set(pin).map_err(|_| "--pin applied twice".to_owned())
}

/// Moves this process to the generators' CPUs (once the cluster is up).
pub fn generators() -> Result<(), String> {
    let Some(pin) = PIN.get() else {
        return Ok(());
    };
    move_self(&pin.generators)?;
    println!(
        "pinned: this process now on CPUs {}",
        allowed(std::process::id())
    );
    Ok(())
}

/// The command that starts the server `bin`: under `taskset -c SUT` when pinned.
pub fn server(bin: &Path) -> Command {
    match PIN.get() {
        Some(pin) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(&pin.system).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// The CPUs process `pid` may run on (`Cpus_allowed_list` in `/proc/PID/status`), to
/// show that the pinning took.
pub fn allowed(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// Whether the run is pinned.
pub fn pinned() -> bool {
    PIN.get().is_some()
}

/// Every thread of this process onto `cpus`; threads and processes it starts later
/// inherit them.
fn move_self(cpus: &str) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus])
        .arg(std::process::id().to_string())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("--pin needs taskset (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskset -c {cpus}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_disjoint_cpu_lists() {
        let pin = parse("0-1,4:2").map_err(|e| e.to_string());
        assert_eq!(
            pin,
            Ok(Pin {
                system: "0-1,4".into(),
                generators: "2".into()
            })
        );
        assert!(parse("0:0-1").is_err_and(|e| e.contains("CPU 0 is in both")));
        for bad in ["0", "0:", ":1", "a:1", "2-1:3", "0:1:2"] {
            assert!(parse(bad).is_err(), "{bad} parsed");
        }
    }
}
