//! Who decides about the embedded cluster: advisory locks (`flock`) on two files in
//! the data directory, so that processes started together never initialise, start,
//! adopt or stop the cluster under each other.
//!
//! - `cluster.lock` is held by whoever decides: initdb, start or adopt (until its
//!   first connection is open), and stop. Held briefly, waited for.
//! - `serve.lock` is held exclusively by `serve` for its whole life, with its pid
//!   inside; a second `serve` refuses at once, naming that pid. A one-shot command
//!   that started the cluster stops it only if, under `cluster.lock`, it can take a
//!   shared lock on `serve.lock` (no `serve` holds it); otherwise a `serve` has
//!   adopted the cluster, or will as soon as it gets `cluster.lock`.
//!
//! Such a probe holds `serve.lock` for a moment, and a starting `serve` must not
//! mistake it for another `serve`: when its exclusive lock fails but a shared one
//! succeeds, only probes were there, so it waits for `cluster.lock` (under which
//! every probe runs) and tries again.
//!
//! The kernel releases both locks when their process dies, so a crash leaves no stale
//! lock behind.
use std::{
    fs::{File, OpenOptions, TryLockError},
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::Path,
    time::Duration,
};

use crate::error::{Error, Result};

const CLUSTER_LOCK: &str = "cluster.lock";
const SERVE_LOCK: &str = "serve.lock";

/// The right to decide about the cluster under one data directory; released on drop.
#[derive(Debug)]
pub(crate) struct ClusterLock {
    _file: File,
}

impl ClusterLock {
    /// Waits until no other process is deciding about the cluster under `data_dir`.
    pub(crate) fn acquire(data_dir: &Path) -> Result<ClusterLock> {
        let path = data_dir.join(CLUSTER_LOCK);
        let file = open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                tracing::info!(
                    lock = %path.display(),
                    "waiting for another auth-service process that is starting or stopping the embedded PostgreSQL"
                );
                file.lock().map_err(failed(&path))?;
            }
            Err(TryLockError::Error(e)) => return Err(failed(&path)(e)),
        }
        Ok(ClusterLock { _file: file })
    }
}

/// `serve`'s claim on the data directory, held for its whole life; released on drop.
#[derive(Debug)]
pub(crate) struct ServeLock {
    file: File,
}

impl ServeLock {
    /// Claims the data directory for this `serve`, or names the `serve` that has it.
    pub(crate) fn acquire(data_dir: &Path) -> Result<ServeLock> {
        let path = data_dir.join(SERVE_LOCK);
        let file = open(&path)?;
        if !take(&file, &path)? {
            let another_serve = match file.try_lock_shared() {
                Err(TryLockError::WouldBlock) => true,
                Err(TryLockError::Error(e)) => return Err(failed(&path)(e)),
                // Only one-shot commands probing: none is left once we hold the
                // cluster lock.
                Ok(()) => {
                    file.unlock().map_err(failed(&path))?;
                    let _deciding = ClusterLock::acquire(data_dir)?;
                    !take(&file, &path)?
                }
            };
            if another_serve {
                return Err(Error::Config(format!(
                    "another `auth-service serve` (pid {}) is using --data-dir {}: \
                     stop it first, or give this one its own --data-dir",
                    holder(&file),
                    data_dir.display()
                )));
            }
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| Error::io(format_args!("writing {}", path.display()), &e))?;
        Ok(ServeLock { file })
    }

    /// Whether a `serve` holds the data directory. Probed under the cluster lock (see
    /// the module comment).
    pub(crate) fn held(data_dir: &Path, _deciding: &ClusterLock) -> Result<bool> {
        let path = data_dir.join(SERVE_LOCK);
        let file = open(&path)?;
        match file.try_lock_shared() {
            // Ours for a moment: unlocked again when `file` is closed.
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(e)) => Err(failed(&path)(e)),
        }
    }
}

impl Drop for ServeLock {
    fn drop(&mut self) {
        // The pid leaves with the lock: after a clean exit the file names nobody, and
        // a `serve` that meets the next holder never reads this one's pid instead.
        let _ = self.file.set_len(0);
    }
}

/// Takes the exclusive lock if it is free.
fn take(file: &File, path: &Path) -> Result<bool> {
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(TryLockError::WouldBlock) => Ok(false),
        Err(TryLockError::Error(e)) => Err(failed(path)(e)),
    }
}

/// The pid in a held `serve.lock`. Its holder writes it right after taking the lock,
/// so a `serve` started at the same moment may have to wait an instant for it.
fn holder(file: &File) -> String {
    for _ in 0..100 {
        let mut buf = [0u8; 32];
        let n = file.read_at(&mut buf, 0).unwrap_or(0);
        let pid = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        if !pid.is_empty() {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "unknown".to_string()
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        // Never truncate on open: the pid in `serve.lock` belongs to its holder.
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Error::Config(format!(
                "cannot open {}: {e}; run auth-service as the user that owns --data-dir",
                path.display()
            )),
            _ => Error::io(format_args!("cannot open {}", path.display()), &e),
        })
}

fn failed(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(format_args!("cannot lock {}", path.display()), &e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("auth-lock-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn probe(dir: &Path) -> bool {
        ServeLock::held(dir, &ClusterLock::acquire(dir).unwrap()).unwrap()
    }

    #[test]
    fn a_second_serve_is_refused_with_the_holders_pid() {
        let dir = scratch("serve");
        assert!(!probe(&dir));
        let first = ServeLock::acquire(&dir).unwrap();
        assert!(probe(&dir));
        let err = ServeLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())) && err.contains("--data-dir"),
            "{err}"
        );
        drop(first);
        assert!(!probe(&dir));
        assert_eq!(std::fs::read_to_string(dir.join(SERVE_LOCK)).unwrap(), "");
        drop(ServeLock::acquire(&dir).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_probe_is_not_mistaken_for_another_serve() {
        let dir = scratch("probe");
        // A one-shot command in the middle of its probe: it holds the cluster lock
        // and a shared lock on serve.lock, and lets go of the probe first.
        let deciding = ClusterLock::acquire(&dir).unwrap();
        let probing = open(&dir.join(SERVE_LOCK)).unwrap();
        probing.try_lock_shared().unwrap();
        let serve = std::thread::spawn({
            let dir = dir.clone();
            move || ServeLock::acquire(&dir).map(drop)
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(probing);
        drop(deciding);
        serve.join().unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cluster_lock_is_exclusive() {
        let dir = scratch("cluster");
        let held = ClusterLock::acquire(&dir).unwrap();
        let other = open(&dir.join(CLUSTER_LOCK)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(held);
        other.try_lock().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
