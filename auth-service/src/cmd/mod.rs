//! The subcommands, one module each (`serve`, `token`, `migrate`, `healthcheck`,
//! `completions`), and [`execute`], which the binary runs. `database` opens what they
//! share.
use crate::{
    config::{Cli, Command},
    error::Result,
};

pub mod completions;
pub mod database;
pub mod healthcheck;
pub mod migrate;
pub mod serve;
pub mod token;

/// Runs one parsed command line; `shutdown` ends `serve`.
pub async fn execute(cli: Cli, shutdown: impl Future<Output = ()>) -> Result<()> {
    // Before the database settings: a completion script needs none, and a broken
    // AUTH_SERVICE_DATABASE_URL in the shell must not stand in its way.
    if let Command::Completions(args) = &cli.command {
        return completions::completions(args.shell);
    }
    let db = cli.db.settings()?;
    match cli.command {
        Command::Serve(args) => serve::serve(&db, args.settings(&cli.db)?, shutdown).await,
        Command::Migrate => migrate::migrate(&db).await,
        Command::Healthcheck(args) => healthcheck::healthcheck(&args).await,
        Command::Token(args) => token::token(&db, &cli.db.prefix()?, args).await,
        Command::Completions(args) => completions::completions(args.shell),
    }
}

/// A line for the person at the terminal (stderr), in the log format (`--log-format`).
/// Unlike `eprintln!`, it cannot panic when stderr is closed.
pub(crate) fn say(line: &str) {
    crate::telemetry::say(line);
}
