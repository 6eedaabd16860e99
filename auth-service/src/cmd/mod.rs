//! The subcommands, one module each (`serve`, `token`, `migrate`, `healthcheck`), and
//! [`execute`], which the binary runs. `database` opens what they share.
use crate::{
    config::{Cli, Command},
    error::Result,
};

pub mod database;
pub mod healthcheck;
pub mod migrate;
pub mod serve;
pub mod token;

/// Runs one parsed command line; `shutdown` ends `serve`, which exports its spans
/// through `traces` when they are on.
pub async fn execute(
    cli: Cli,
    traces: Option<auth_telemetry::otel::Traces>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let db = cli.db.settings()?;
    match cli.command {
        Command::Serve(args) => {
            let mut settings = args.settings(&cli.db)?;
            settings.traces = traces;
            serve::serve(&db, settings, shutdown).await
        }
        Command::Migrate => migrate::migrate(&db).await,
        Command::Healthcheck(args) => healthcheck::healthcheck(&args).await,
        Command::Token(args) => token::token(&db, &cli.db.prefix()?, args).await,
    }
}

/// A line for the person at the terminal (stderr), in the log format (`--log-format`).
/// Unlike `eprintln!`, it cannot panic when stderr is closed.
pub(crate) fn say(line: &str) {
    crate::telemetry::say(line);
}
