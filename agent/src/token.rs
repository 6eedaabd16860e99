//! The token as a secret that never prints, where it comes from, and the fix to tell the
//! operator when it is missing or rejected.
use std::{fmt, path::PathBuf};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::{config, error::AgentError};

/// The token prefix, followed by [`TOKEN_BODY_LEN`] base62 characters.
pub const TOKEN_PREFIX: &str = "pat_";
/// Number of base62 characters after [`TOKEN_PREFIX`].
pub const TOKEN_BODY_LEN: usize = 36;
/// Environment variable that may hold the token itself (read once, at start).
pub const TOKEN_ENV: &str = "AUTH_AGENT_TOKEN";

/// A personal access token. `Debug` and `Display` are redacted so that a token can sit
/// in any struct that is logged or printed; only [`Token::expose`] yields the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Parses a token, ignoring surrounding whitespace (a Secret file or a paste usually
    /// ends in a newline).
    ///
    /// The format is checked here, before anything is sent: a string that is not a
    /// token may be some other secret pasted by mistake, and should not leave the machine.
    pub fn parse(raw: &str) -> Result<Token, RejectReason> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(RejectReason::MissingCredentials);
        }
        let well_formed = raw.strip_prefix(TOKEN_PREFIX).is_some_and(|body| {
            body.len() == TOKEN_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        if well_formed {
            Ok(Token(raw.to_owned()))
        } else {
            Err(RejectReason::TokenMalformed)
        }
    }

    /// The secret itself. Call sites are few and obvious: the `authorization` header and
    /// the config file writer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <token>` as gRPC metadata, marked sensitive so that HTTP/2 header
    /// compression never indexes it and its `Debug` output is redacted.
    pub fn bearer(&self) -> AsciiMetadataValue {
        // A parsed token is `pat_` plus base62, always a valid header value; the
        // fallback only exists to avoid a panic path.
        let mut value = MetadataValue::try_from(format!("Bearer {}", self.0))
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid"));
        value.set_sensitive(true);
        value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a token cannot be used: the `google.rpc.ErrorInfo` reason sent by the server, or
/// the same vocabulary for problems found locally (no token, not a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// No token was presented (or none is configured).
    MissingCredentials,
    /// The string is not a token.
    TokenMalformed,
    /// The server does not know this token.
    TokenUnknown,
    /// The token has expired.
    TokenExpired,
    /// The token was revoked.
    TokenRevoked,
    /// A reason this agent does not know (a newer server, or a proxy in between).
    Other(String),
}

impl RejectReason {
    /// Reads a wire reason (`ErrorInfo.reason`).
    pub fn from_wire(reason: &str) -> Self {
        match reason {
            "MISSING_CREDENTIALS" => Self::MissingCredentials,
            "TOKEN_MALFORMED" => Self::TokenMalformed,
            "TOKEN_UNKNOWN" => Self::TokenUnknown,
            "TOKEN_EXPIRED" => Self::TokenExpired,
            "TOKEN_REVOKED" => Self::TokenRevoked,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire spelling, as printed in messages and metrics.
    pub fn as_str(&self) -> &str {
        match self {
            Self::MissingCredentials => "MISSING_CREDENTIALS",
            Self::TokenMalformed => "TOKEN_MALFORMED",
            Self::TokenUnknown => "TOKEN_UNKNOWN",
            Self::TokenExpired => "TOKEN_EXPIRED",
            Self::TokenRevoked => "TOKEN_REVOKED",
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the token comes from. Precedence (decided once, at start, by
/// [`crate::cli::GlobalArgs::token_source`]): `--token-file`/`AUTH_AGENT_TOKEN_FILE`, then
/// `AUTH_AGENT_TOKEN`, then the config file.
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
    pub async fn load(&self) -> Result<Token, AgentError> {
        let missing =
            |detail: String| self.rejected(RejectReason::MissingCredentials, Some(detail));
        let text = match self {
            TokenSource::File(path) => match tokio::fs::read_to_string(path).await {
                Ok(text) => text,
                Err(err) => return Err(missing(format!("cannot read {}: {err}", path.display()))),
            },
            TokenSource::Env(Some(token)) => return Ok(token.clone()),
            TokenSource::Env(None) => {
                return Err(self.rejected(
                    RejectReason::TokenMalformed,
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
        Token::parse(&text).map_err(|reason| {
            let detail = match reason {
                RejectReason::MissingCredentials => "the token file is empty",
                _ => "the token file does not hold a pat_ token",
            };
            self.rejected(reason, Some(detail.to_owned()))
        })
    }

    /// A rejection with this source's fix.
    pub fn rejected(&self, reason: RejectReason, detail: Option<String>) -> AgentError {
        AgentError::Reauthenticate {
            reason,
            detail,
            fix: self.fix(),
        }
    }

    /// The exact action that gives the agent a valid token from this source.
    pub fn fix(&self) -> String {
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
    use super::*;

    const GOOD: &str = "pat_0123456789abcdefghijABCDEFGHIJklmnop";

    #[test]
    fn parses_well_formed_tokens_and_trims_newlines() {
        assert_eq!(GOOD.len(), 4 + TOKEN_BODY_LEN);
        let token = Token::parse(&format!("  {GOOD}\n")).unwrap();
        assert_eq!(token.expose(), GOOD);
    }

    #[test]
    fn rejects_what_is_not_a_token() {
        assert_eq!(Token::parse(" \n"), Err(RejectReason::MissingCredentials));
        assert_eq!(Token::parse("hunter2"), Err(RejectReason::TokenMalformed));
        assert_eq!(
            Token::parse(&GOOD[..GOOD.len() - 1]),
            Err(RejectReason::TokenMalformed)
        );
        assert_eq!(
            Token::parse(&GOOD.replace('a', "-")),
            Err(RejectReason::TokenMalformed)
        );
        assert_eq!(
            Token::parse(&GOOD.replace("pat_", "tap_")),
            Err(RejectReason::TokenMalformed)
        );
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let token = Token::parse(GOOD).unwrap();
        for printed in [
            format!("{token:?}"),
            format!("{token}"),
            format!("{:?}", TokenSource::Env(Some(token.clone()))),
        ] {
            assert!(!printed.contains(GOOD), "{printed}");
        }
        assert!(!format!("{:?}", token.bearer()).contains(GOOD));
        assert!(token.bearer().is_sensitive());
    }

    #[test]
    fn reasons_round_trip_through_the_wire_spelling() {
        for wire in [
            "MISSING_CREDENTIALS",
            "TOKEN_MALFORMED",
            "TOKEN_UNKNOWN",
            "TOKEN_EXPIRED",
            "TOKEN_REVOKED",
            "NEW_ONE",
        ] {
            assert_eq!(RejectReason::from_wire(wire).as_str(), wire);
        }
    }

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
}
