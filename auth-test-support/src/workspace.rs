//! Rules every workspace member keeps, checked over the repository's own files: each
//! takes the workspace's lints (`[lints] workspace = true`: no unwrap or expect on a
//! runtime path, no `unsafe`), and each crate root forbids `unsafe` outright, but for the
//! one exception written here. A crate added without them would otherwise compile,
//! unchecked.
use std::path::{Path, PathBuf};

/// Crate roots that may hold `unsafe` (under the workspace's `deny`, allowed at the
/// place itself), and why.
const UNSAFE_ALLOWED: &[(&str, &str)] = &[(
    "auth-test-support/src/lib.rs",
    "`atexit` and `pre_exec` have no safe form (cluster.rs, process.rs)",
)];

/// The repository's root directory.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `members` of the root `Cargo.toml`'s `[workspace]`.
fn members(root_manifest: &str) -> Vec<String> {
    let Some(start) = root_manifest.find("members = [") else {
        return Vec::new();
    };
    let list = &root_manifest[start + "members = [".len()..];
    let list = &list[..list.find(']').unwrap_or(list.len())];
    list.split(',')
        .map(|item| item.trim().trim_matches('"').to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

/// Whether a member's manifest takes the workspace's lints.
fn takes_workspace_lints(manifest: &str) -> bool {
    manifest.split("\n[").any(|table| {
        table
            .trim_start_matches('[')
            .starts_with("lints]\nworkspace = true")
    })
}

/// The crate roots of a member (relative to the repository root): its library, its
/// binaries, its integration tests' `main.rs`.
fn crate_roots(root: &Path, member: &str) -> Vec<String> {
    let dir = root.join(member);
    let mut roots: Vec<String> = ["src/lib.rs", "src/main.rs", "tests/it/main.rs"]
        .into_iter()
        .filter(|path| dir.join(path).is_file())
        .map(|path| format!("{member}/{path}"))
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("src/bin")) {
        for entry in entries.flatten() {
            let path = entry.path();
            let file = if path.is_dir() {
                path.join("main.rs")
            } else {
                path
            };
            if let Ok(relative) = file.strip_prefix(root) {
                roots.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    roots.sort();
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_takes_the_workspace_lints() {
        let root = root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let members = members(&manifest);
        assert!(members.len() >= 9, "{members:?}");
        for member in &members {
            let own = std::fs::read_to_string(root.join(member).join("Cargo.toml")).unwrap();
            assert!(
                takes_workspace_lints(&own),
                "{member}/Cargo.toml: add `[lints]\\nworkspace = true`"
            );
        }
    }

    #[test]
    fn every_crate_root_forbids_unsafe_but_the_named_exception() {
        let root = root();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let mut checked = 0;
        for member in members(&manifest) {
            for path in crate_roots(&root, &member) {
                let text = std::fs::read_to_string(root.join(&path)).unwrap();
                let forbids = text.lines().any(|l| l == "#![forbid(unsafe_code)]");
                let excepted = UNSAFE_ALLOWED.iter().any(|(p, _)| *p == path);
                assert!(
                    forbids != excepted,
                    "{path}: {}",
                    if excepted {
                        "forbids unsafe now: take it off UNSAFE_ALLOWED"
                    } else {
                        "add #![forbid(unsafe_code)] (or, where unsafe has no safe form, an \
                         entry in UNSAFE_ALLOWED saying why)"
                    }
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "only {checked} crate roots found");
    }

    #[test]
    fn the_parsers_read_what_they_are_given() {
        assert_eq!(
            members("[workspace]\nmembers = [\n    \"api\",\n    \"tls\",\n]\n"),
            ["api", "tls"]
        );
        assert!(takes_workspace_lints(
            "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
        ));
        assert!(!takes_workspace_lints(
            "[package]\nname = \"x\"\n\n[dependencies]\nworkspace = true\n"
        ));
    }
}
