//! The flags of `auth-service token` and its subcommands (`create`, `list`, `revoke`,
//! `prune`): the output format, and each subcommand's own.
use std::time::Duration;

use clap::{Args, Subcommand};

use super::duration::parse_lifetime;

/// `token` and the flags all its subcommands take.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What the command prints on stdout: text for people, or JSON for scripts.
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_OUTPUT",
        value_enum,
        default_value_t = Output::Text
    )]
    pub(crate) output: Output,
    #[command(subcommand)]
    pub(crate) command: TokenCommand,
}

/// The shape of a token command's result on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Output {
    /// What people read: the token alone (`create`), a tab-separated table (`list`).
    Text,
    /// One JSON document: an object (`create`, `revoke`, `prune`) or an array (`list`).
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token and print it (the only time it is shown) as the only line on stdout.
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List {
        /// Only this user's tokens.
        #[arg(long, env = "AUTH_SERVICE_LIST_USER")]
        user: Option<String>,
    },
    /// Revoke a token by its id (from `token list`).
    Revoke {
        /// The token id (a UUID, as `token list` shows it).
        #[arg(value_parser = parse_token_id)]
        id: uuid::Uuid,
    },
    /// Delete tokens that expired or were revoked longer ago than --older-than (by the
    /// database clock), with their audit rows, and print how many. Live tokens and
    /// tokens that never expire (unless revoked) are kept. Safe to run on every replica
    /// at once.
    Prune {
        /// How long a token must have been expired or revoked, e.g. 90d.
        #[arg(long, env = "AUTH_SERVICE_PRUNE_OLDER_THAN", value_parser = parse_lifetime)]
        older_than: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub(crate) struct CreateArgs {
    /// The user the token belongs to.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_USER")]
    pub(crate) user: String,
    /// A name that says what the token is for.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_NAME", default_value = "default")]
    pub(crate) name: String,
    /// Lifetime, e.g. 90d, 12h, or `never`.
    #[arg(long, env = "AUTH_SERVICE_TOKEN_EXPIRES_IN", default_value = "90d", value_parser = parse_expiry)]
    pub(crate) expires_in: Expiry,
    /// A scope to grant; repeat for several.
    #[arg(
        long = "scope",
        env = "AUTH_SERVICE_TOKEN_SCOPES",
        value_delimiter = ','
    )]
    pub(crate) scopes: Vec<String>,
}

/// A token lifetime: a duration, or never expiring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    In(Duration),
    Never,
}

/// `--expires-in`: a lifetime, or `never`.
pub(crate) fn parse_expiry(s: &str) -> std::result::Result<Expiry, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        Ok(Expiry::Never)
    } else {
        parse_lifetime(s).map(Expiry::In)
    }
}

/// A token id as `token revoke` takes it.
pub(crate) fn parse_token_id(s: &str) -> std::result::Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim()).map_err(|_| {
        "not a token id: ids are UUIDs such as 3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6c, as `auth-service token list` shows them".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn expiry_is_a_lifetime_or_never() {
        assert_eq!(parse_expiry("never").unwrap(), Expiry::Never);
        assert_eq!(
            parse_expiry("12h").unwrap(),
            Expiry::In(Duration::from_secs(12 * 3600))
        );
        assert!(parse_expiry("0s").is_err());
    }

    #[test]
    fn revoke_takes_a_uuid() {
        let err = parse(&["token", "revoke", "not-a-uuid"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("token list"), "{err}");
        assert!(parse(&["token", "revoke", "3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6c"]).is_ok());
    }

    #[test]
    fn prune_needs_a_bounded_horizon() {
        assert!(
            parse(&["token", "prune"]).is_err(),
            "no default: say how old"
        );
        for bad in ["0s", "soon", "36501d"] {
            assert!(
                parse(&["token", "prune", "--older-than", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
