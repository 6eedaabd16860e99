//! Logging: `tracing` to stderr, filtered by `AUTH_AGENT_LOG` (or `RUST_LOG`), with a
//! default that keeps tonic, hyper and h2 quiet.
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Environment variable with an `EnvFilter` directive, e.g. `auth_agent=debug`.
pub const LOG_ENV: &str = "AUTH_AGENT_LOG";
/// Default filter of `auth-agent run`: the agent's own INFO lines, dependencies' warnings.
pub const DAEMON_FILTER: &str = "warn,auth_agent=info";
/// Default filter of the one-shot commands, whose results go to stdout.
pub const COMMAND_FILTER: &str = "warn";

/// The filter from `AUTH_AGENT_LOG`, else `RUST_LOG`, else `default`.
pub fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env(LOG_ENV)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default))
}

/// Installs the global subscriber. Colours only on a terminal: journald and log
/// collectors would store the escape codes.
pub fn init(default: &str) {
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal)
        // Its fallback report uses `eprintln!`, which panics when stderr is gone
        // (a closed pipe): a lost log line must never take the daemon down.
        .log_internal_errors(false)
        .try_init();
}
