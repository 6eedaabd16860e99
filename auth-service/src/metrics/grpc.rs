//! One tower layer on the whole gRPC server that counts every call (health and reflection
//! included) the way grpc-ecosystem's interceptors do: started, handled by code, and the
//! handling time. The code comes from the `grpc-status` header of a trailers-only
//! response, or from the trailers at the end of the body.
//!
//! The same layer opens each call's server span (see [`crate::trace`]), joined to the
//! caller's `traceparent`, and ends it with the status code when the body ends. Check
//! opens its own, once it has read the checked request's trace context.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame};
use tower::{Layer, Service};
use tracing::Instrument;

use super::{GrpcLabels, Metrics};

/// The methods this server serves, with their gRPC type. Anything else is counted as
/// `unknown`, so that random paths cannot add label values.
const KNOWN: &[(&str, &str, &str)] = &[
    ("auth.v1.AuthService", "RenewCurrentToken", "unary"),
    ("auth.v1.AuthService", "ValidateToken", "unary"),
    ("auth.v1.AuthService", "LookupCurrentToken", "unary"),
    ("auth.v1.AuthService", "RevokeCurrentToken", "unary"),
    (
        "auth.v1.AuthService",
        "WatchTokenInvalidations",
        "server_stream",
    ),
    ("envoy.service.auth.v3.Authorization", "Check", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "List", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        "bidi_stream",
    ),
];

/// The label sets of every method, in the order [`method`] numbers them: the known
/// methods, then `unknown`.
pub(crate) fn methods() -> impl Iterator<Item = GrpcLabels> {
    KNOWN
        .iter()
        .map(|(service, method, kind)| GrpcLabels {
            grpc_type: kind,
            grpc_service: service,
            grpc_method: method,
        })
        .chain(std::iter::once(GrpcLabels {
            grpc_type: "unary",
            grpc_service: "unknown",
            grpc_method: "unknown",
        }))
}

/// The number of the method a request path (`/package.Service/Method`) calls, in the
/// order of [`methods`]; anything unknown is the last.
pub(crate) fn method(path: &str) -> usize {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .and_then(|(service, method)| {
            KNOWN
                .iter()
                .position(|(s, m, _)| *s == service && *m == method)
        })
        .unwrap_or(KNOWN.len())
}

/// A `grpc-status` value as grpc-go's `codes.Code.String()` spells it, which is what
/// dashboards built on go-grpc-prometheus expect in `grpc_code`.
pub(crate) fn code_name(status: &[u8]) -> &'static str {
    std::str::from_utf8(status)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODE_NAMES.get(n))
        .copied()
        .unwrap_or("Unknown")
}

/// The layer: wraps the server's router.
#[derive(Clone)]
pub(crate) struct GrpcMetricsLayer {
    metrics: Arc<Metrics>,
}

impl GrpcMetricsLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer makes.
#[derive(Clone)]
pub(crate) struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Records one call's outcome exactly once: when its status is known, or, if the
/// response is dropped before that (the client went away), as `Canceled`.
struct Recorder {
    metrics: Arc<Metrics>,
    method: usize,
    started: Instant,
    done: bool,
    /// The call's server span, ended when the recorder is dropped (the body's end).
    span: tracing::Span,
}

impl Recorder {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            self.metrics
                .grpc_handled(self.method, code, self.started.elapsed().as_secs_f64());
            crate::trace::grpc_status(&self.span, code_number(code));
        }
    }
}

/// The number of a code [`code_name`] spelled.
fn code_number(name: &str) -> i32 {
    CODE_NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(2)
}

/// The codes by number, as [`code_name`] spells them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

impl Drop for Recorder {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = method(request.uri().path());
        self.metrics.grpc_started(method);
        let span = match KNOWN.get(method) {
            // Check joins the checked request's trace: it opens its own span.
            Some(("envoy.service.auth.v3.Authorization", "Check", _)) => tracing::Span::none(),
            Some((service, name, _)) => crate::trace::grpc_server(service, name),
            None => crate::trace::grpc_server("unknown", "unknown"),
        };
        crate::trace::join(&span, crate::trace::trace_headers(request.headers()));
        let mut recorder = Recorder {
            metrics: self.metrics.clone(),
            method,
            started: Instant::now(),
            done: false,
            span: span.clone(),
        };
        let call = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let response = match call.await {
                Ok(response) => response,
                Err(e) => {
                    recorder.finish("Unknown");
                    return Err(e);
                }
            };
            // A trailers-only response (every error tonic returns) carries the status
            // in its headers.
            if let Some(status) = response.headers().get("grpc-status") {
                recorder.finish(code_name(status.as_bytes()));
            }
            Ok(response.map(|inner| MeteredBody { inner, recorder }))
        })
    }
}

/// The response body, watched for the trailers that carry the status.
pub(crate) struct MeteredBody<B> {
    inner: B,
    recorder: Recorder,
}

impl<B> Body for MeteredBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                    this.recorder.finish(code_name(status.as_bytes()));
                }
            }
            Poll::Ready(Some(Err(_))) => this.recorder.finish("Unknown"),
            // The end without a status: not a valid gRPC response.
            Poll::Ready(None) => this.recorder.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(path: &str) -> GrpcLabels {
        methods().nth(method(path)).unwrap()
    }

    #[test]
    fn known_methods_are_labelled_and_everything_else_is_unknown() {
        let l = labels("/auth.v1.AuthService/ValidateToken");
        assert_eq!(
            (l.grpc_type, l.grpc_service, l.grpc_method),
            ("unary", "auth.v1.AuthService", "ValidateToken")
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Watch").grpc_type,
            "server_stream"
        );
        for junk in [
            "/",
            "",
            "/auth.v1.AuthService/Nope",
            "/x/y/z",
            "/pat_secret/x",
        ] {
            let l = labels(junk);
            assert_eq!(
                (l.grpc_service, l.grpc_method),
                ("unknown", "unknown"),
                "{junk}"
            );
        }
    }

    #[test]
    fn codes_are_spelled_as_grpc_go_spells_them() {
        assert_eq!(code_name(b"0"), "OK");
        assert_eq!(code_name(b"1"), "Canceled");
        assert_eq!(code_name(b"16"), "Unauthenticated");
        assert_eq!(code_name(b"99"), "Unknown");
    }
}
