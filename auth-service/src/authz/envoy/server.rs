//! The gRPC service `envoy.service.auth.v3.Authorization`, as tonic's generated code
//! would serve it, but reading the request as [`CheckInput`] (see `input.rs`) rather
//! than decoding envoy-types' `CheckRequest`. The response is envoy-types'
//! `CheckResponse`.
use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use envoy_types::ext_authz::v3::pb::CheckResponse;
use tonic::{
    body::Body,
    codegen::{BoxFuture, StdError},
    server::{Grpc, NamedService, UnaryService},
};

use super::{
    ExtAuthz,
    input::{CheckCodec, CheckInput},
};

/// The full method path of Check.
const CHECK: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The Authorization service, for `Server::add_service`.
#[derive(Clone)]
pub(crate) struct AuthorizationServer {
    inner: Arc<ExtAuthz>,
    max_decoding_message_size: usize,
}

impl AuthorizationServer {
    /// Serves `inner`, refusing requests over `max_decoding_message_size` bytes.
    pub(crate) fn new(inner: ExtAuthz, max_decoding_message_size: usize) -> Self {
        AuthorizationServer {
            inner: Arc::new(inner),
            max_decoding_message_size,
        }
    }
}

impl NamedService for AuthorizationServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

/// One Check call.
struct CheckSvc(Arc<ExtAuthz>);

impl UnaryService<CheckInput> for CheckSvc {
    type Response = CheckResponse;
    type Future = BoxFuture<tonic::Response<CheckResponse>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<CheckInput>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.check(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for AuthorizationServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != CHECK {
            return Box::pin(async {
                let mut response = http::Response::new(Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    tonic::Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let inner = self.inner.clone();
        let limit = self.max_decoding_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(CheckCodec).apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(CheckSvc(inner), request).await)
        })
    }
}
