//! Finding the PostgreSQL server programs (`initdb`, `pg_ctl`, `postgres`).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::error::{Error, Result};

const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// The directory holding the server programs.
#[derive(Debug, Clone)]
pub(crate) struct PgBinaries {
    pub(crate) bindir: PathBuf,
}

impl PgBinaries {
    /// `name` from the bindir; for a program that is not there, from the directory
    /// `pg_ctl` really lives in. A bindir found on `PATH` may be a directory of links to
    /// the server programs only (`/usr/local/bin`), while a client program such as
    /// `pg_basebackup` of the same installation sits next to the real `pg_ctl`.
    pub(crate) fn program(&self, name: &str) -> PathBuf {
        let here = self.bindir.join(name);
        if here.is_file() {
            return here;
        }
        std::fs::canonicalize(self.bindir.join("pg_ctl"))
            .ok()
            .and_then(|pg_ctl| Some(pg_ctl.parent()?.join(name)))
            .filter(|there| there.is_file())
            .unwrap_or(here)
    }

    /// In order: an explicit `--pg-bindir`, `PATH`, `pg_config --bindir`, and
    /// Debian's `/usr/lib/postgresql/<version>/bin` (highest version first).
    pub(crate) fn locate(explicit: Option<&Path>) -> Result<PgBinaries> {
        if let Some(dir) = explicit {
            return if has_all(dir) {
                Ok(PgBinaries {
                    bindir: dir.to_path_buf(),
                })
            } else {
                Err(Error::Config(format!(
                    "--pg-bindir {}: initdb, pg_ctl and postgres are not all there",
                    dir.display()
                )))
            };
        }
        candidates()
            .into_iter()
            .find(|d| has_all(d))
            .map(|bindir| PgBinaries { bindir })
            .ok_or_else(|| {
                Error::Config(
                    "PostgreSQL server programs (initdb, pg_ctl, postgres) were not found on PATH, \
                     via `pg_config --bindir`, or under /usr/lib/postgresql/*/bin. Install them \
                     (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
                     macOS: `brew install postgresql@16`), point --pg-bindir at them, or use an external \
                     server with --database-url."
                        .into(),
                )
            })
    }
}

fn has_all(dir: &Path) -> bool {
    PROGRAMS.iter().all(|p| dir.join(p).is_file())
}

fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    debian.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.extend(debian.into_iter().map(|(_, d)| d));
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_dir_without_programs_names_the_flag() {
        let err = PgBinaries::locate(Some(Path::new("/nonexistent")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--pg-bindir"), "{err}");
    }

    #[test]
    fn a_program_missing_from_a_bindir_of_links_is_found_beside_the_real_pg_ctl() {
        let root = std::env::temp_dir().join(format!("auth-bindir-{}", std::process::id()));
        let (real, links) = (root.join("real"), root.join("links"));
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&links).unwrap();
        for program in ["pg_ctl", "pg_basebackup"] {
            std::fs::write(real.join(program), "").unwrap();
        }
        std::os::unix::fs::symlink(real.join("pg_ctl"), links.join("pg_ctl")).unwrap();
        let bins = PgBinaries {
            bindir: links.clone(),
        };
        assert_eq!(bins.program("pg_ctl"), links.join("pg_ctl"));
        let real = std::fs::canonicalize(&real).unwrap();
        assert_eq!(bins.program("pg_basebackup"), real.join("pg_basebackup"));
        // Nowhere at all: the bindir's path, so the error names where it was expected.
        assert_eq!(bins.program("psql"), links.join("psql"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
