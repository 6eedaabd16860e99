//! Command-line flags (every one also an environment variable), validated once into
//! typed settings. Startup errors name the flag to change. One file per command, as in
//! `cmd/`:
//! - [`serve`]: addresses, renewal rules, the cache, TLS, the transport's limits;
//! - [`token`]: the token subcommands and their output format;
//! - [`healthcheck`], [`completions`]: what the check asks, the shell of a script;
//! - [`db`]: the database flags every command takes, before or after it;
//! - [`duration`]: durations as the flags take them, and their bounds.
//!
//! `migrate` takes only the database flags.
use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

mod completions;
mod db;
mod duration;
mod healthcheck;
mod serve;
mod token;

pub(crate) use completions::CompletionsArgs;
pub(crate) use db::{Database, DbArgs, DbSettings, MIN_POOLED};
pub(crate) use healthcheck::HealthcheckArgs;
pub use serve::{ServeArgs, ServeSettings};
pub(crate) use token::{CreateArgs, Expiry, Output, TokenArgs, TokenCommand};

pub use crate::transport::{HttpSettings, TlsSettings, TransportSettings};

#[derive(Debug, Parser)]
#[command(
    name = "auth-service",
    version,
    about = "gRPC personal access token service"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    /// Log lines on stderr: text, or one flat JSON object per line for log shippers
    /// (the event's fields and its spans' fields side by side).
    #[arg(
        long,
        global = true,
        env = "AUTH_SERVICE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (auth.v1.AuthService, Envoy's ext_authz, health, reflection).
    Serve(Box<ServeArgs>),
    /// Create, list, revoke and prune tokens.
    Token(TokenArgs),
    /// Apply pending schema migrations and exit.
    Migrate,
    /// Ask a running server's grpc.health.v1 service whether it is SERVING (exit 0)
    /// or not (exit 1): for Docker HEALTHCHECK and scripts.
    Healthcheck(HealthcheckArgs),
    /// Print a shell completion script on stdout, e.g. `auth-service completions bash >
    /// /etc/bash_completion.d/auth-service`. Needs no database and no configuration.
    Completions(CompletionsArgs),
}

/// The command line without its environment variables: what a developer's shell
/// exports must not change what the tests see.
#[cfg(test)]
fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    fn without_env(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.env(None::<&str>))
            .mut_subcommands(without_env)
    }
    let matches = without_env(Cli::command())
        .try_get_matches_from(std::iter::once("auth-service").chain(args.iter().copied()))?;
    Cli::from_arg_matches(&matches)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_are_bounded_and_the_error_names_the_flag() {
        for (args, flag) in [
            (
                vec!["--db-timeout", "300000000000y", "migrate"],
                "--db-timeout",
            ),
            (vec!["--db-timeout", "25d", "migrate"], "--db-timeout"),
            (
                vec!["serve", "--db-check-interval", "2h"],
                "--db-check-interval",
            ),
            (
                vec!["serve", "--renew-extension", "300000000000y"],
                "--renew-extension",
            ),
            (
                vec!["serve", "--renew-threshold", "101years"],
                "--renew-threshold",
            ),
            (
                vec!["serve", "--max-token-lifetime", "300000000000y"],
                "--max-token-lifetime",
            ),
            (
                vec![
                    "token",
                    "create",
                    "--user",
                    "a",
                    "--expires-in",
                    "300000000000y",
                ],
                "--expires-in",
            ),
        ] {
            let err = parse(&args).unwrap_err().to_string();
            assert!(
                err.contains(flag) && err.contains("at most"),
                "{args:?}: {err}"
            );
        }
        assert!(parse(&["--db-timeout", "1h", "migrate"]).is_ok());
        assert!(parse(&["token", "create", "--user", "a", "--expires-in", "36500d"]).is_ok());
    }

    #[test]
    fn output_and_log_format_go_before_or_after_the_subcommand() {
        let cli = parse(&["--log-format", "json", "token", "--output", "json", "list"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Token(token) = &cli.command else {
            panic!("not token")
        };
        assert_eq!(token.output, Output::Json);
        let cli = parse(&["token", "prune", "--older-than", "90d", "--output", "json"]).unwrap();
        let Command::Token(token) = &cli.command else {
            panic!("not token")
        };
        assert_eq!(token.output, Output::Json);
        assert!(matches!(
            token.command,
            TokenCommand::Prune { older_than } if older_than == Duration::from_secs(90 * 86400)
        ));
        let cli = parse(&["serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(parse(&["token", "list", "--output", "yaml"]).is_err());
        assert!(parse(&["--log-format", "xml", "migrate"]).is_err());
    }
}
