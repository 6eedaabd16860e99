//! Logging setup: `RUST_LOG`-style filtering from `AUTH_SERVICE_LOG`, with a default
//! that keeps dependency noise down. Logs go to stderr so stdout stays clean for
//! `token create`.
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `level` is the default for our own crate (`info` for `serve`, `warn` for the
/// one-shot commands, whose output is for a person).
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_env("AUTH_SERVICE_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},h2=warn,hyper=warn,tower=warn,tokio_postgres=warn,refinery_core=warn"
        ))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log collectors would store the codes.
        .with_ansi(std::io::stderr().is_terminal())
        // Its fallback report uses `eprintln!`, which panics when stderr is gone
        // (a closed pipe): a lost log line must never take the service down.
        .log_internal_errors(false)
        .try_init();
}
