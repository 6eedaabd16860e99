//! Running the cluster as an unprivileged user when we are root (PostgreSQL refuses
//! to run as root), and checking that this user can reach the data directory.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// The system account the cluster runs as when auth-service runs as root.
pub(crate) const SYSTEM_USER: &str = "postgres";

/// An account to run the server programs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The account for the cluster: `None` (ourselves) unless we are root.
pub fn cluster_account() -> Result<Option<RunAs>> {
    if !running_as_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    lookup(&passwd, SYSTEM_USER).map(Some).ok_or_else(|| {
        Error::Config(format!(
            "running as root, and PostgreSQL refuses to run as root; there is no `{SYSTEM_USER}` \
             system user to run the embedded cluster as. Create one (`useradd --system \
             --home-dir /var/lib/postgresql {SYSTEM_USER}`, or install PostgreSQL from your \
             distribution, which creates it), run auth-service as a non-root user, or use \
             --database-url."
        ))
    })
}

fn lookup(passwd: &str, name: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| {
            Some(RunAs {
                name: name.to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })?
    })
}

/// The first ancestor of `dir` (an absolute path) that `who` cannot traverse, if any.
pub fn blocking_ancestor(dir: &Path, who: &RunAs) -> Option<PathBuf> {
    dir.ancestors().find_map(|d| {
        let meta = std::fs::metadata(d).ok()?;
        let mode = meta.mode();
        let can = if meta.uid() == who.uid {
            mode & 0o100 != 0
        } else if meta.gid() == who.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!can).then(|| d.to_path_buf())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            lookup(passwd, "postgres"),
            Some(RunAs {
                name: "postgres".into(),
                uid: 101,
                gid: 104
            })
        );
        assert_eq!(lookup(passwd, "nobody"), None);
    }

    #[test]
    fn a_private_directory_blocks_others() {
        let dir = std::env::temp_dir().join(format!("auth-blocking-{}", std::process::id()));
        let inner = dir.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let stranger = RunAs {
            name: "x".into(),
            uid: 54321,
            gid: 54321,
        };
        assert_eq!(blocking_ancestor(&inner, &stranger), Some(dir.clone()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(blocking_ancestor(&inner, &stranger), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
