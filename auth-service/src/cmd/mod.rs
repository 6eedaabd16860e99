//! The subcommands, one module each (`serve`, `token`, `migrate`, `healthcheck`,
//! `completions`), and [`execute`], which the binary runs. `database` opens what they
//! share.
use crate::{
    config::{Cli, Command},
    error::Result,
};

pub(crate) mod completions;
pub(crate) mod database;
pub(crate) mod healthcheck;
pub(crate) mod migrate;
pub(crate) mod serve;
pub(crate) mod token;

/// Runs one parsed command line; `shutdown` ends `serve`, which exports its spans
/// through `traces` when they are on.
pub async fn execute(
    cli: Cli,
    traces: Option<auth_telemetry::otel::Traces>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Before the database settings: a completion script needs none, and a broken
    // AUTH_SERVICE_DATABASE_URL in the shell must not stand in its way.
    if let Command::Completions(args) = &cli.command {
        return completions::completions(args.shell);
    }
    match cli.command {
        Command::Serve(args) => {
            let db = cli.db.settings()?;
            let mut settings = args.settings(&cli.db)?;
            settings.traces = traces;
            serve::serve(&db, settings, shutdown).await
        }
        Command::Migrate => migrate::migrate(&cli.db.settings()?).await,
        Command::Token(args) => token::token(&cli.db.settings()?, &cli.db.prefix()?, args).await,
        // The check asks the server, which has database settings of its own: it reads
        // none, so that those it inherits from the server's environment (a URL file it
        // may not read) can neither fail it nor make it exit 2.
        Command::Healthcheck(args) => healthcheck::healthcheck(&args).await,
        Command::Completions(args) => completions::completions(args.shell),
    }
}

/// A line for the person at the terminal (stderr), in the log format (`--log-format`).
/// Unlike `eprintln!`, it cannot panic when stderr is closed.
pub(crate) fn say(line: &str) {
    crate::telemetry::say(line);
}
