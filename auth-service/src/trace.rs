//! The spans a trace collector sees, named and shaped as OpenTelemetry's semantic
//! conventions say: one server span per call (`rpc.*` for gRPC, `http.*` for the HTTP
//! port), joined to the caller's trace through W3C `traceparent`; inside it, the cache
//! decision and each database statement.
//!
//! They are DEBUG spans of this crate's targets, which the log filter leaves off: they
//! cost nothing unless traces are configured (`--otlp-endpoint`), and then only the
//! trace layer sees them. No attribute carries a token, a hash or a password: spans
//! hold method names, status codes, statement names and token ids.
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The server span of a gRPC call to `service`/`method`.
pub(crate) fn grpc_server(service: &'static str, method: &'static str) -> Span {
    tracing::debug_span!(
        target: "auth_service::rpc",
        "rpc",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        token_id = Empty,
    )
}

/// The server span of an HTTP request to `route` (the route's pattern, never the path
/// with its query).
pub(crate) fn http_server(method: &http::Method, route: &'static str) -> Span {
    tracing::debug_span!(
        target: "auth_service::http",
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = Empty,
        otel.status_code = Empty,
        token_id = Empty,
    )
}

/// Joins `span` to the trace that `headers` carry (`traceparent`, `tracestate`), if
/// any. Must come before `span` has children.
pub(crate) fn join<'a>(span: &Span, headers: impl IntoIterator<Item = (&'a str, &'a str)>) {
    if span.is_disabled() {
        return;
    }
    use opentelemetry::trace::TraceContextExt;
    let cx = auth_telemetry::otel::extract(headers);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The `traceparent`/`tracestate` pairs of an HTTP (or gRPC) header map.
pub(crate) fn trace_headers(headers: &http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (name, v))
        })
}

/// Records a gRPC call's status code on its server span. The codes that mean a server
/// error (Unknown, DeadlineExceeded, Unimplemented, Internal, Unavailable, DataLoss)
/// mark it an error, as the RPC conventions say for servers.
pub(crate) fn grpc_status(span: &Span, code: i32) {
    if span.is_disabled() {
        return;
    }
    span.record("rpc.grpc.status_code", code);
    if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Records an HTTP response's status on its server span (5xx is an error).
pub(crate) fn http_status(span: &Span, status: u16) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", status);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one database statement, as a child of the current span (none outside a
/// call: background work does not start traces of its own).
pub(crate) fn db_statement(name: &'static str) -> Span {
    if Span::current().is_none() {
        return Span::none();
    }
    tracing::debug_span!(
        target: "auth_service::db",
        "db",
        otel.name = name,
        otel.kind = "client",
        db.system = "postgresql",
        db.operation.name = name,
    )
}

/// The span of the cache's decision on one lookup (`hit`, `miss` or `bypass`).
pub(crate) fn cache_lookup() -> Span {
    tracing::debug_span!(
        target: "auth_service::cache",
        "cache",
        otel.name = "cache lookup",
        auth.cache.result = Empty,
    )
}

/// The span of one expiry-notice delivery attempt to `host` (scheme and host only: the
/// webhook's path may hold its key).
pub(crate) fn webhook(host: &str, attempt: u32) -> Span {
    tracing::debug_span!(
        target: "auth_service::notify",
        "webhook",
        otel.name = "POST",
        otel.kind = "client",
        http.request.method = "POST",
        server.address = host,
        auth.notify.attempt = attempt,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    )
}
