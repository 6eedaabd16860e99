//! Traces: OpenTelemetry spans exported over OTLP/gRPC (tonic), off unless an endpoint
//! is configured.
//!
//! - **Configuration** follows the standard variables, which the binaries' flags read:
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`,
//!   `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` and
//!   `OTEL_RESOURCE_ATTRIBUTES` (the SDK reads that one itself).
//! - **Never in the way.** Spans are queued (at most [`MAX_QUEUE`]) and exported in
//!   batches on a thread of the SDK's: a call never waits for the collector. An
//!   unreachable collector costs the spans of the batches it refused, counted by
//!   [`Traces::dropped`].
//! - **Context** travels as W3C `traceparent`/`tracestate` ([`extract`], [`inject`]).
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    },
};

/// Spans held for export at most; beyond, new ones are dropped.
pub const MAX_QUEUE: usize = 2048;
/// One export's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and what to export.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelSettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://otel-collector:4317`.
    pub endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER`: `always_on`, `always_off`, `traceidratio`,
    /// `parentbased_always_on` (the default), `parentbased_always_off`,
    /// `parentbased_traceidratio`.
    pub sampler: Option<String>,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the `*traceidratio` samplers.
    pub sampler_arg: Option<String>,
    /// How long spans wait to be exported in a batch.
    pub batch_delay: Duration,
}

/// The trace flags both binaries take (`serve`, the agent's `run`), each also read from
/// OpenTelemetry's standard variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtelArgs {
    /// Export traces over OTLP/gRPC to this collector, e.g. http://otel-collector:4317
    /// (OTEL_EXPORTER_OTLP_ENDPOINT works too) [default: off, nothing is spent].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The general OTLP endpoint, used when no traces endpoint is given.
    #[arg(long, hide = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_general_endpoint: Option<String>,
    /// `service.name` of the exported spans [default: the program's name, auth-service
    /// or auth-agent].
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// Which traces to keep: always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off or parentbased_traceidratio [default:
    /// parentbased_always_on].
    #[arg(long, env = "OTEL_TRACES_SAMPLER")]
    pub otel_traces_sampler: Option<String>,
    /// The ratio of the traceidratio samplers, e.g. 0.01.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    pub otel_traces_sampler_arg: Option<String>,
}

impl OtelArgs {
    /// What to export, if anything: `None` without an endpoint. `program` is the
    /// default `service.name`; a bad sampler is an error naming its flag.
    pub fn settings(&self, program: &str) -> Result<Option<OtelSettings>, String> {
        let Some(endpoint) = self
            .otlp_endpoint
            .clone()
            .or_else(|| self.otlp_general_endpoint.clone())
            .filter(|e| !e.trim().is_empty())
        else {
            return Ok(None);
        };
        sampler(
            self.otel_traces_sampler.as_deref(),
            self.otel_traces_sampler_arg.as_deref(),
        )
        .map_err(|e| format!("--otel-traces-sampler / {e}"))?;
        Ok(Some(OtelSettings {
            endpoint,
            service_name: self
                .otel_service_name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| program.to_owned()),
            sampler: self.otel_traces_sampler.clone(),
            sampler_arg: self.otel_traces_sampler_arg.clone(),
            batch_delay: Duration::from_secs(1),
        }))
    }
}

/// The sampler `name` and `arg` (OpenTelemetry's environment spec) describe.
pub fn sampler(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        match arg {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG {a:?}: give a ratio from 0 to 1")),
        }
    };
    Ok(
        match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER {other:?}: use always_on, always_off, traceidratio, \
                 parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
            }
        },
    )
}

/// The exporter, counting the spans of the batches the collector did not take.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    dropped: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The running exporter: flush and stop it with [`Traces::shutdown`].
#[derive(Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    dropped: Arc<AtomicU64>,
    endpoint: String,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Traces({})", self.endpoint)
    }
}

impl Traces {
    /// Builds the provider. Needs a Tokio runtime (the exporter's channel).
    pub fn new(settings: &OtelSettings) -> Result<Traces, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("the OTLP exporter for {}: {e}", settings.endpoint))?;
        let dropped = Arc::new(AtomicU64::new(0));
        let processor = BatchSpanProcessor::builder(Counted {
            inner: exporter,
            dropped: dropped.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUE)
                .with_scheduled_delay(settings.batch_delay)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler(
                settings.sampler.as_deref(),
                settings.sampler_arg.as_deref(),
            )?)
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .build(),
            )
            .build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        Ok(Traces {
            provider,
            dropped,
            endpoint: settings.endpoint.clone(),
        })
    }

    /// The tracer the `tracing` layer hands spans to.
    pub fn tracer(&self, name: &'static str) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer(name)
    }

    /// Spans lost so far: in batches the collector refused or never answered.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Exports what is queued, within `timeout`, and stops. Blocks: call it off the
    /// runtime's workers (`spawn_blocking`).
    pub fn shutdown(&self, timeout: Duration) {
        let _ = self.provider.shutdown_with_timeout(timeout);
    }
}

/// The trace and span ids (hex) of the span `id`, when it is sampled into a trace.
pub fn ids(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Reads W3C trace context from `headers` (name, value pairs; names in any case).
pub fn extract<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Context {
    struct Pairs<'a>(HashMap<String, &'a str>);
    impl Extractor for Pairs<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).copied()
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }
    let pairs = Pairs(
        headers
            .into_iter()
            .filter(|(k, _)| {
                k.eq_ignore_ascii_case("traceparent") || k.eq_ignore_ascii_case("tracestate")
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect(),
    );
    TraceContextPropagator::new().extract(&pairs)
}

/// Writes `cx` as W3C `traceparent`/`tracestate` headers: (name, value) pairs.
pub fn inject(cx: &Context) -> Vec<(String, String)> {
    struct Pairs(Vec<(String, String)>);
    impl Injector for Pairs {
        fn set(&mut self, key: &str, value: String) {
            self.0.push((key.to_owned(), value));
        }
    }
    let mut pairs = Pairs(Vec::new());
    TraceContextPropagator::new().inject_context(cx, &mut pairs);
    pairs.0
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn samplers_follow_the_environment_spec() {
        assert!(matches!(
            sampler(None, None).unwrap(),
            Sampler::ParentBased(_)
        ));
        assert!(matches!(
            sampler(Some("traceidratio"), Some("0.25")).unwrap(),
            Sampler::TraceIdRatioBased(r) if r == 0.25
        ));
        assert!(matches!(
            sampler(Some("parentbased_traceidratio"), Some("0.01")).unwrap(),
            Sampler::ParentBased(_)
        ));
        assert!(sampler(Some("traceidratio"), Some("2")).is_err());
        assert!(sampler(Some("sometimes"), None).is_err());
    }

    #[test]
    fn traceparent_round_trips() {
        let cx = extract([(
            "TraceParent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let out = inject(&cx);
        assert_eq!(out[0].0, "traceparent");
        assert_eq!(
            out[0].1,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(!extract([("traceparent", "garbage")]).has_active_span());
    }
}
