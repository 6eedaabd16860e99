//! Logging: `tracing` to stderr, filtered by `AUTH_AGENT_LOG` (or `RUST_LOG`), with a
//! default that keeps tonic, hyper and h2 quiet; as text or as one flat JSON object per
//! line (`--log-format`, see `auth_telemetry`).
use tracing_subscriber::EnvFilter;

pub use auth_telemetry::{LogFormat, otel::Traces};

use crate::AgentError;

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
/// and log collectors would store the escape codes); with `traces`, the agent's spans
/// are exported too.
pub fn init(default: &str, format: LogFormat, traces: Option<&Traces>) {
    auth_telemetry::init(
        format,
        filter(default),
        traces.map(|t| (t, &["auth_agent"][..])),
    );
}

/// The exporter `auth-agent run --otlp-endpoint` asks for, if any. Needs a Tokio runtime.
pub fn traces(args: &auth_telemetry::otel::OtelArgs) -> Result<Option<Traces>, AgentError> {
    let Some(settings) = args.settings("auth-agent").map_err(AgentError::FixConfig)? else {
        return Ok(None);
    };
    Traces::new(&settings)
        .map(Some)
        .map_err(AgentError::FixConfig)
}

/// Exports the spans still queued, for at most `limit`, and stops the exporter.
pub async fn flush(traces: Traces, limit: std::time::Duration) {
    let _ = tokio::task::spawn_blocking(move || traces.shutdown(limit)).await;
}

/// The last line of a command that failed (stderr), in the log format: `auth-agent:
/// ERROR` as text, an ERROR object in JSON. It cannot panic when stderr is closed.
pub fn failed(error: &dyn std::fmt::Display) {
    auth_telemetry::failed("auth-agent", "auth_agent", error);
}
