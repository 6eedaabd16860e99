//! Logging shared by auth-service and auth-agent: the filter from the environment, and
//! log lines on stderr, as text or as one flat JSON object per line (`--log-format`).
//!
//! Modules and items, top-down:
//! - [`LogFormat`], [`filter`], [`subscriber`], [`init`]: building and installing the
//!   global subscriber;
//! - [`say`], [`failed`]: a command's lines for the person running it, in the same
//!   format as the logs, so that a log shipper reading stderr sees one format;
//! - [`json`]: the flat JSON event format and the line [`say`] writes in JSON mode;
//! - [`otel`]: traces over OTLP, and W3C trace context in and out;
//! - [`process`]: the standard process metrics, for both binaries' `/metrics`.
#![forbid(unsafe_code)]

use std::{
    fmt::Display,
    io::{IsTerminal, Write},
    sync::OnceLock,
};

use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, Registry, filter::filter_fn, fmt::format::JsonFields, layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub mod json;
pub mod otel;
pub mod process;

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `span`, `message`, then
    /// the event's fields and those of the spans it happened in, flat.
    Json,
}

/// The format [`init`] installed, for [`say`] and [`failed`].
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The filter from the first of `vars` that holds a valid `EnvFilter` directive (e.g.
/// `AUTH_SERVICE_LOG`, then `RUST_LOG`), else `default`.
pub fn filter(vars: &[&str], default: &str) -> EnvFilter {
    first_filter(vars.iter().map(|var| std::env::var(var).ok()), default)
}

/// The first of `values` (those of the variables, `None` where unset or not UTF-8) that
/// is a valid directive, else `default`.
fn first_filter(values: impl IntoIterator<Item = Option<String>>, default: &str) -> EnvFilter {
    values
        .into_iter()
        .flatten()
        .find_map(|value| EnvFilter::try_new(value).ok())
        .unwrap_or_else(|| EnvFilter::new(default))
}

/// Installs the global subscriber [`subscriber`] builds. A second call changes nothing.
pub fn init(
    format: LogFormat,
    filter: EnvFilter,
    traces: Option<(&otel::Traces, &'static [&'static str])>,
) {
    let _ = FORMAT.set(format);
    let _ = subscriber(format, filter, traces).try_init();
}

/// The subscriber: `filter`, to stderr, in `format`; and, with `traces`, every span of
/// the `targets` crates (at any level, whatever `filter` says) to the OpenTelemetry
/// exporter.
pub fn subscriber(
    format: LogFormat,
    filter: EnvFilter,
    traces: Option<(&otel::Traces, &'static [&'static str])>,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Its fallback report uses `eprintln!`, which panics when stderr is gone (a
        // closed pipe): a lost log line must never take the process down.
        .log_internal_errors(false);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        // Colours only on a terminal: journald and log collectors would store the codes.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        // Span fields are recorded as JSON objects, so that `FlatJson` can merge them.
        LogFormat::Json => logs
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(json::FlatJson)
            .with_filter(filter)
            .boxed(),
    };
    let spans = traces.map(|(traces, targets)| {
        // Only what the conventions name: no source location, thread, target or busy/idle
        // timings on every span. Each of those is built for every span, sampled or not
        // (the sampler decides when the span closes), and they doubled what a 1 %
        // sampled call cost (docs/benchmarks.md).
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer("auth"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(move |meta| {
                meta.is_span() && targets.iter().any(|t| meta.target().starts_with(t))
            }))
    });
    tracing_subscriber::registry().with(logs).with(spans)
}

/// A line for the person running a command (stderr), written whatever the log filter:
/// as it is in text mode, as a JSON object like a log line's in JSON mode. Unlike
/// `eprintln!`, it cannot panic when stderr is closed.
pub fn say(level: Level, target: &str, text: &str) {
    let line = match FORMAT.get() {
        Some(LogFormat::Json) => json::line(level, target, text),
        _ => text.to_owned(),
    };
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The last line of a command that failed: `program: error` in text mode; in JSON mode
/// an ERROR object whose message is the error (its `target` names the program).
pub fn failed(program: &str, target: &str, error: &dyn Display) {
    match FORMAT.get() {
        Some(LogFormat::Json) => say(Level::ERROR, target, &error.to_string()),
        _ => say(Level::ERROR, target, &format!("{program}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_variable_that_holds_a_filter_wins() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            first_filter([None, some("debug")], "warn").to_string(),
            "debug"
        );
        assert_eq!(
            first_filter([some("trace"), some("debug")], "warn").to_string(),
            "trace"
        );
        // A value that is no directive is passed over, like an unset variable.
        assert_eq!(
            first_filter([some("[not a filter"), some("debug")], "warn").to_string(),
            "debug"
        );
        assert_eq!(first_filter([None, None], "warn").to_string(), "warn");
    }
}
