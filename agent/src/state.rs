//! The state file: when the last renewal succeeded and what it answered, so that `status`
//! can report it. Kept apart from the config because a hardened service may read its
//! config from a read-only directory and write state elsewhere (systemd `StateDirectory`).
use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{client::RenewOutcome, error::AgentError, files, timefmt};

/// Environment variable naming the state file (the `--state-file` flag's variable).
pub(crate) const STATE_ENV: &str = "AUTH_AGENT_STATE_FILE";

/// What the last successful renewal answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    /// When the last `RenewCurrentToken` call succeeded (extended or not).
    pub(crate) last_renewal: SystemTime,
    /// Whether that call extended the expiry.
    pub(crate) extended: bool,
    /// The expiry it reported; `None` for a token that never expires.
    pub(crate) expires_at: Option<SystemTime>,
    /// The earliest time a renewal would extend the token again, as that call reported;
    /// `None` when none can (never expires, or at its maximum lifetime), or in a file
    /// written before this was recorded.
    pub(crate) next_renewal_at: Option<SystemTime>,
}

impl State {
    /// The state after a successful renewal at `now`.
    pub(crate) fn after(now: SystemTime, outcome: &RenewOutcome) -> State {
        State {
            last_renewal: now,
            extended: outcome.renewed,
            expires_at: outcome.expires_at,
            next_renewal_at: outcome.next_renewal_at,
        }
    }

    /// The file's text.
    pub(crate) fn render(&self) -> String {
        let mut out =
            String::from("# auth-agent state, rewritten after every successful renewal.\n");
        out.push_str(&files::line(
            "last_renewal",
            &timefmt::rfc3339(self.last_renewal),
        ));
        out.push_str(&files::line(
            "last_renewal_extended",
            if self.extended { "true" } else { "false" },
        ));
        let expires = self
            .expires_at
            .map_or_else(|| "never".to_owned(), timefmt::rfc3339);
        out.push_str(&files::line("expires_at", &expires));
        let next = self
            .next_renewal_at
            .map_or_else(|| "none".to_owned(), timefmt::rfc3339);
        out.push_str(&files::line("next_renewal_at", &next));
        out
    }

    /// Parses the file's text.
    pub(crate) fn parse(text: &str) -> Result<State, String> {
        let map = files::parse(text)?;
        let get = |key: &str| map.get(key).ok_or_else(|| format!("missing `{key}`"));
        let time = |key: &str| -> Result<SystemTime, String> {
            humantime::parse_rfc3339(get(key)?).map_err(|err| format!("`{key}`: {err}"))
        };
        Ok(State {
            last_renewal: time("last_renewal")?,
            extended: get("last_renewal_extended")? == "true",
            expires_at: if get("expires_at")? == "never" {
                None
            } else {
                Some(time("expires_at")?)
            },
            // Absent from the files of older agents.
            next_renewal_at: match map.get("next_renewal_at").map(String::as_str) {
                None | Some("none") => None,
                Some(_) => Some(time("next_renewal_at")?),
            },
        })
    }
}

/// The default state file: `state`, next to the config file.
pub(crate) fn default_path(config_path: &Path) -> PathBuf {
    config_path.with_file_name("state")
}

/// Reads the state file; `None` when no renewal has been recorded yet.
pub(crate) async fn load(path: &Path) -> Result<Option<State>, AgentError> {
    let fix = "delete it, the next renewal rewrites it";
    files::load(path, State::parse)
        .await
        .map_err(|err| AgentError::file(err, "read", path, fix))
}

/// Replaces the state file atomically (mode 0600: it says when a token expires).
pub(crate) async fn store(path: &Path, state: &State) -> Result<(), AgentError> {
    files::store(path, state.render())
        .await
        .map_err(|err| AgentError::file(err, "write", path, ""))
}

/// Removes the state file (a different token was logged in); no file is fine.
pub(crate) async fn remove(path: &Path) -> Result<(), AgentError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(AgentError::LocalFile {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn round_trips_with_and_without_expiry() {
        let at = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        for (expires_at, next_renewal_at) in [
            (
                Some(at + Duration::from_secs(86_400)),
                Some(at + Duration::from_secs(3_600)),
            ),
            (Some(at + Duration::from_secs(86_400)), None),
            (None, None),
        ] {
            let state = State {
                last_renewal: at,
                extended: true,
                expires_at,
                next_renewal_at,
            };
            assert_eq!(State::parse(&state.render()).unwrap(), state);
        }
    }

    #[test]
    fn reads_a_file_written_before_next_renewal_was_recorded() {
        let old = "last_renewal = \"2030-03-17T17:46:40Z\"\nlast_renewal_extended = \"false\"\n\
                   expires_at = \"never\"\n";
        let state = State::parse(old).unwrap();
        assert_eq!(state.next_renewal_at, None);
        assert!(!state.extended);
    }

    #[test]
    fn lives_next_to_the_config() {
        assert_eq!(
            default_path(Path::new("/home/u/.config/auth-agent/config")),
            PathBuf::from("/home/u/.config/auth-agent/state")
        );
    }
}
