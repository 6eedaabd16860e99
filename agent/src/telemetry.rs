//! Logging: `tracing` to stderr, filtered by `AUTH_AGENT_LOG` (or `RUST_LOG`), with a
//! default that keeps tonic, hyper and h2 quiet; as text or as one flat JSON object per
//! line (`--log-format`, see `auth_telemetry`).
use tracing_subscriber::EnvFilter;

pub use auth_telemetry::LogFormat;

/// Environment variable with an `EnvFilter` directive, e.g. `auth_agent=debug`.
pub const LOG_ENV: &str = "AUTH_AGENT_LOG";
/// Default filter of `auth-agent run`: the agent's own INFO lines, dependencies' warnings.
pub const DAEMON_FILTER: &str = "warn,auth_agent=info";
/// Default filter of the one-shot commands, whose results go to stdout.
pub const COMMAND_FILTER: &str = "warn";

/// The filter from `AUTH_AGENT_LOG`, else `RUST_LOG`, else `default`.
pub fn filter(default: &str) -> EnvFilter {
    auth_telemetry::filter(&[LOG_ENV, "RUST_LOG"], default)
}

/// Installs the global subscriber (colours only on a terminal in text mode: journald
/// and log collectors would store the escape codes).
pub fn init(default: &str, format: LogFormat) {
    auth_telemetry::init(format, filter(default), None);
}

/// The last line of a command that failed (stderr), in the log format: `auth-agent:
/// ERROR` as text, an ERROR object in JSON. It cannot panic when stderr is closed.
pub fn failed(error: &dyn std::fmt::Display) {
    auth_telemetry::failed("auth-agent", "auth_agent", error);
}
