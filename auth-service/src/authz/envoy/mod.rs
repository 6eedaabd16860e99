//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external
//! authorization over gRPC.
//!
//! - The token comes from the request's `authorization` header, in
//!   `attributes.request.http.headers` (or `header_map`, when Envoy's
//!   `encode_raw_headers` is on; a value in both is two, refused as two headers are);
//!   the required scopes from `attributes.context_extensions["required_scope"]`, set
//!   per route.
//! - A live token with every scope: `OK`, and the identity headers set upstream with
//!   overwrite semantics, so that a client's own `x-auth-user-id` never gets through.
//! - A credential problem: `UNAUTHENTICATED` with a 401 denied response; a missing
//!   scope: `PERMISSION_DENIED` with a 403. Both carry an RFC 6750 challenge and a small
//!   JSON body.
//! - Database trouble, and a caller not on `--validate-allow`: a gRPC error, never a
//!   CheckResponse, so that Envoy's `failure_mode_allow` and `status_on_error` decide.
use std::sync::Arc;

use auth_api::ErrorReason;
use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, HttpStatusCode, OkHttpResponse,
    },
    pb::google::rpc,
};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

/// The reader of Check requests, public for the `envoy_check` fuzz target (in `fuzz/`):
/// `CheckInput::parse` on arbitrary bytes, then what the adapter asks of it.
pub use self::input::CheckInput;
pub(crate) use self::server::AuthorizationServer;
use super::{Granted, Verdict};
use crate::{
    error::Error,
    metrics::{Adapter, Decision},
    service::{AuthSvc, credentials},
};

mod input;
mod server;

/// The Authorization service, over the same state as `auth.v1`.
pub(crate) struct ExtAuthz {
    svc: Arc<AuthSvc>,
}

impl ExtAuthz {
    pub(crate) fn new(svc: Arc<AuthSvc>) -> Self {
        ExtAuthz { svc }
    }
}

impl ExtAuthz {
    /// One Check, in its server span: joined to the checked request's trace when it
    /// carries one (where Envoy puts the client's), else to the Check call's own.
    async fn check(&self, request: Request<CheckInput>) -> Result<Response<CheckResponse>, Status> {
        let span = crate::trace::grpc_server("envoy.service.auth.v3.Authorization", "Check");
        let own = request.get_ref().trace.iter().filter_map(|(k, v)| {
            Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
        });
        if request.get_ref().trace.is_empty() {
            crate::trace::join(
                &span,
                crate::trace::trace_headers(request.metadata().as_ref()),
            );
        } else {
            crate::trace::join(&span, own);
        }
        let answer = self.decide(request).instrument(span.clone()).await;
        crate::trace::grpc_status(
            &span,
            match &answer {
                Ok(_) => 0,
                Err(status) => status.code() as i32,
            },
        );
        answer
    }

    async fn decide(
        &self,
        request: Request<CheckInput>,
    ) -> Result<Response<CheckResponse>, Status> {
        let svc = &self.svc;
        let count = |decision| svc.metrics().authz_decision(Adapter::ExtAuthz, decision);
        if let Err(e) = credentials::authorize_validate(&request, svc.validate_allow()) {
            count(Decision::CallerNotAllowed);
            return Err(svc.status(e));
        }
        let check = request.get_ref();
        let required = check.required_scope();
        let required: Vec<&str> = required.iter().map(String::as_str).collect();
        let verdict = match check.credential() {
            Ok(authorization) => super::decide(svc, authorization, &required).await,
            Err(e) => Ok(super::rejected(svc, e)),
        };
        let verdict = match verdict {
            Ok(verdict) => verdict,
            Err(e) => {
                count(Decision::Unavailable);
                return Err(svc.status(e));
            }
        };
        count(verdict.decision());
        Ok(Response::new(match verdict {
            Verdict::Allow(granted) => allowed(granted),
            Verdict::Unauthenticated(e) => unauthenticated(&e),
            Verdict::Forbidden { missing } => forbidden(&missing),
        }))
    }
}

/// A header set with overwrite semantics: replaces a value the client sent, and is
/// kept even when empty, so that an empty value also replaces a forged one. `append`
/// (deprecated, still read by older Envoys) says the same as `append_action`.
fn overwrite(key: &str, value: impl Into<String>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: true,
    }
}

fn status(code: Code, message: String) -> Option<rpc::Status> {
    Some(rpc::Status {
        code: code.into(),
        message,
        details: Vec::new(),
    })
}

fn allowed(granted: Granted) -> CheckResponse {
    CheckResponse {
        status: status(Code::Ok, String::new()),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: granted
                .into_headers()
                .into_iter()
                .map(|(k, v)| overwrite(k, v))
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn denied(
    code: Code,
    http: HttpStatusCode,
    challenge: String,
    reason: ErrorReason,
    message: String,
) -> CheckResponse {
    CheckResponse {
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http.into() }),
            headers: vec![
                overwrite("www-authenticate", &challenge),
                overwrite("content-type", "application/json"),
                overwrite("cache-control", "no-store"),
            ],
            body: super::body(reason, &message),
        })),
        status: status(code, message),
        ..Default::default()
    }
}

fn unauthenticated(error: &Error) -> CheckResponse {
    denied(
        Code::Unauthenticated,
        HttpStatusCode::Unauthorized,
        super::challenge(error),
        error.reason().unwrap_or(ErrorReason::MissingCredentials),
        error.to_string(),
    )
}

fn forbidden(missing: &[String]) -> CheckResponse {
    denied(
        Code::PermissionDenied,
        HttpStatusCode::Forbidden,
        super::scope_challenge(missing),
        ErrorReason::InsufficientScope,
        super::scope_message(missing),
    )
}

/// The descriptors of `envoy/service/auth/v3/external_auth.proto` and every file it
/// imports, for server reflection (grpcurl needs them to call Check), pruned from the
/// envoy-types crate's full set.
///
/// The test below proves them equal to the envoy-types this binary is built with,
/// from the repository alone: the version they were pruned from is the one in
/// `Cargo.lock`, and every field of CheckRequest and CheckResponse survives a round
/// trip through envoy-types' own decoder. After an envoy-types upgrade, refresh them
/// with `scripts/regenerate-envoy-descriptors` (it needs the crate's source, which
/// `cargo metadata` finds), then set [`PRUNED_FROM`] to the new version.
pub(crate) const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("ext_authz.fds.bin");

/// The envoy-types version [`FILE_DESCRIPTOR_SET`] was pruned from (read by the test
/// that compares the two).
#[cfg(test)]
pub(crate) const PRUNED_FROM: &str = "0.7.7";

#[cfg(test)]
mod tests;
