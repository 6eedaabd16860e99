//! The `auth-agent` binary: parse flags, set up logging, run the command (all logic lives
//! in the library, see `lib.rs`). Exit codes: 0 ok, 1 retry later (server unreachable),
//! 2 fix the configuration or usage, 3 log in again (token missing or rejected).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use auth_agent::{
    cli::{self, Cli, Command},
    telemetry,
};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs its progress; the one-shot commands print results to stdout and
    // keep stderr for problems.
    let filter = match cli.command {
        Command::Run(_) => telemetry::DAEMON_FILTER,
        _ => telemetry::COMMAND_FILTER,
    };
    telemetry::init(filter, cli.global.log_format);
    match cli::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            telemetry::failed(&err);
            ExitCode::from(err.exit_code())
        }
    }
}
