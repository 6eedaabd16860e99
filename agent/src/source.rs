//! Where the token comes from, reading it, and the fix to tell the operator when it is
//! missing or rejected.
use std::{fmt, path::PathBuf};

use crate::{
    config,
    error::{AgentError, RejectReason},
    token::Token,
};

/// Environment variable that may hold the token itself (read once, at start).
pub(crate) const TOKEN_ENV: &str = "AUTH_AGENT_TOKEN";

/// Where the token comes from. Precedence (decided once, at start, from the flags):
/// `--token-file`/`AUTH_AGENT_TOKEN_FILE`, then `AUTH_AGENT_TOKEN`, then the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A file holding only the token (e.g. a mounted Kubernetes Secret), re-read on every
    /// attempt so that a rotated Secret is picked up without a restart.
    File(PathBuf),
    /// The `AUTH_AGENT_TOKEN` environment variable, read at start (a process's
    /// environment cannot change under it). `None` when it was set but not a token.
    Env(Option<Token>),
    /// The config file written by `auth-agent login`, re-read on every attempt.
    Config {
        /// The config file.
        path: PathBuf,
        /// True when the path is not the default, so the fix must name it.
        explicit: bool,
    },
}

impl TokenSource {
    /// Reads the token now. A missing or malformed token is a [`AgentError::Reauthenticate`]
    /// carrying this source's fix, exactly like a token the server rejects.
    pub(crate) async fn load(&self) -> Result<Token, AgentError> {
        let missing =
            |detail: String| self.rejected(RejectReason::MISSING_CREDENTIALS, Some(detail));
        let text = match self {
            TokenSource::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => text,
                Err(err) => return Err(missing(format!("cannot read {}: {err}", path.display()))),
            },
            TokenSource::Env(Some(token)) => return Ok(token.clone()),
            TokenSource::Env(None) => {
                return Err(self.rejected(
                    RejectReason::TOKEN_MALFORMED,
                    Some(format!("{TOKEN_ENV} is not a token")),
                ));
            }
            // A config file that cannot be read or parsed is reported like a missing
            // token: `auth-agent login` rewrites it whole, which fixes both.
            TokenSource::Config { path, .. } => match config::load(path).await {
                Ok(Some(config::ConfigFile {
                    token: Some(token), ..
                })) => return Ok(token),
                Ok(Some(_)) => {
                    return Err(missing(format!(
                        "no token in {} (logged out)",
                        path.display()
                    )));
                }
                Ok(None) => return Err(missing(format!("no config file at {}", path.display()))),
                Err(err) => return Err(missing(err.to_string())),
            },
        };
        Token::parse(&text).map_err(|why| {
            let reason = RejectReason::Known(why.reason());
            let detail = match why {
                auth_api::token::Malformed::Empty => "the token file is empty".to_owned(),
                why => format!("the token file does not hold a token ({why})"),
            };
            self.rejected(reason, Some(detail))
        })
    }

    /// A rejection with this source's fix.
    pub(crate) fn rejected(&self, reason: RejectReason, detail: Option<String>) -> AgentError {
        AgentError::Reauthenticate {
            reason,
            detail,
            fix: self.fix(),
        }
    }

    /// The exact action that gives the agent a valid token from this source.
    pub(crate) fn fix(&self) -> String {
        match self {
            TokenSource::Config {
                explicit: false, ..
            } => "run `auth-agent login` to re-authenticate".to_owned(),
            TokenSource::Config {
                path,
                explicit: true,
            } => {
                format!(
                    "run `auth-agent login --config {}` to re-authenticate",
                    path.display()
                )
            }
            TokenSource::File(path) => format!(
                "put a valid token in {} (the --token-file; for a Kubernetes Secret mount, \
                 update the Secret); it is re-read on every attempt",
                path.display()
            ),
            TokenSource::Env(_) => format!(
                "set {TOKEN_ENV} to a valid token and restart the agent, or unset it and run \
                 `auth-agent login`"
            ),
        }
    }
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::File(path) => write!(f, "token file {}", path.display()),
            TokenSource::Env(_) => write!(f, "environment variable {TOKEN_ENV}"),
            TokenSource::Config { path, .. } => write!(f, "config file {}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use auth_api::token::{Prefix, generate};

    use super::*;

    #[test]
    fn each_source_names_its_own_fix() {
        let default = TokenSource::Config {
            path: "/home/u/.config/auth-agent/config".into(),
            explicit: false,
        };
        assert_eq!(default.fix(), "run `auth-agent login` to re-authenticate");
        let explicit = TokenSource::Config {
            path: "/etc/auth-agent/config".into(),
            explicit: true,
        };
        assert!(
            explicit
                .fix()
                .contains("auth-agent login --config /etc/auth-agent/config")
        );
        let file = TokenSource::File("/var/run/secrets/auth/token".into());
        assert!(file.fix().contains("/var/run/secrets/auth/token"));
        assert!(!file.fix().contains("auth-agent login"));
        assert!(TokenSource::Env(None).fix().contains(TOKEN_ENV));
    }

    #[test]
    fn the_environment_source_is_redacted() {
        let good = generate(&Prefix::default()).unwrap();
        let source = TokenSource::Env(Some(Token::parse(&good).unwrap()));
        assert!(!format!("{source:?}").contains(&good));
    }

    #[tokio::test]
    async fn a_token_file_that_holds_no_token_says_why_without_echoing_it() {
        let path = std::env::temp_dir().join(format!(
            "auth-agent-source-{}-{}",
            std::process::id(),
            crate::schedule::random_unit().to_bits()
        ));
        std::fs::write(&path, "hunter2-password\n").unwrap();
        let err = TokenSource::File(path.clone()).load().await.unwrap_err();
        let _ = std::fs::remove_file(&path);
        let text = err.to_string();
        assert!(
            text.contains("TOKEN_MALFORMED") && text.contains(&path.display().to_string()),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
