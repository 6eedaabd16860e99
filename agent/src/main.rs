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
    let (filter, traces) = match &cli.command {
        Command::Run(args) => (telemetry::DAEMON_FILTER, telemetry::traces(&args.otel)),
        _ => (telemetry::COMMAND_FILTER, Ok(None)),
    };
    let traces = match traces {
        Ok(traces) => traces,
        Err(err) => {
            telemetry::init(filter, cli.global.log_format, None);
            telemetry::failed(&err);
            return ExitCode::from(err.exit_code());
        }
    };
    telemetry::init(filter, cli.global.log_format, traces.as_ref());
    let result = cli::execute(cli).await;
    if let Some(traces) = traces {
        telemetry::flush(traces, FLUSH_LIMIT).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            telemetry::failed(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

/// How long the last spans may take to reach the collector at exit.
const FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
