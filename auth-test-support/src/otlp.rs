//! A real OTLP trace receiver on loopback (the collector's own `TraceService`, from
//! opentelemetry-proto), recording every span exported to it.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

use crate::Result;

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    /// Hex, as `traceparent` writes them.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// Every attribute, its value as text.
    pub attributes: Vec<(String, String)>,
    /// The resource's `service.name`.
    pub service: String,
}

impl Span {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> std::result::Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .and_then(|a| a.into_iter().find(|(k, _)| k == "service.name"))
                .map(|(_, v)| v)
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for s in scope.spans {
                    got.push(Span {
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        attributes: attributes(&s.attributes),
                        service: service.clone(),
                    });
                }
            }
        }
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(got);
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The receiver; it stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    spans: Recorder,
    task: JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Recorder::default();
        let service = TraceServiceServer::new(spans.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        Ok(Collector { addr, spans, task })
    }

    /// The endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.0.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits up to `limit` for a span that `wanted` accepts.
    pub async fn wait_for(&self, limit: Duration, wanted: impl Fn(&Span) -> bool) -> Option<Span> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.spans().into_iter().find(|s| wanted(s)) {
                return Some(s);
            }
            if started.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
