//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's) external
//! authorization over gRPC.
//!
//! - The token comes from the request's `authorization` header, in
//!   `attributes.request.http.headers` (or `header_map`, when Envoy's
//!   `encode_raw_headers` is on); the required scopes from
//!   `attributes.context_extensions["required_scope"]`, set per route.
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
use tracing::instrument;

use self::input::CheckInput;
pub use self::server::AuthorizationServer;
use super::{Granted, Verdict};
use crate::{
    error::Error,
    metrics::{Adapter, Decision},
    service::{AuthSvc, credentials},
};

mod input;
mod server;

/// The context extension that names the scopes a route requires.
pub const REQUIRED_SCOPE: &str = "required_scope";

/// The Authorization service, over the same state as `auth.v1`.
pub struct ExtAuthz {
    svc: Arc<AuthSvc>,
}

impl ExtAuthz {
    pub fn new(svc: Arc<AuthSvc>) -> Self {
        ExtAuthz { svc }
    }
}

impl ExtAuthz {
    // A DEBUG span, as ValidateToken's: this is the hot path.
    #[instrument(level = "debug", skip_all, fields(token_id))]
    async fn check(&self, request: Request<CheckInput>) -> Result<Response<CheckResponse>, Status> {
        let svc = &self.svc;
        let count = |decision| svc.metrics().authz_decision(Adapter::ExtAuthz, decision);
        if let Err(e) = credentials::authorize_validate(&request, svc.validate_allow()) {
            count(Decision::CallerNotAllowed);
            return Err(svc.status(e));
        }
        let check = request.get_ref();
        let required = check.required_scope();
        let required: Vec<&str> = required.iter().map(String::as_str).collect();
        let verdict = match &check.authorization[..] {
            [] => super::decide(svc, None, &required).await,
            [value] => super::decide(svc, Some(value), &required).await,
            // Two values: which one the upstream would read is not ours to guess.
            _ => Ok(super::rejected(
                svc,
                Error::TokenMalformed(
                    "the request has more than one `authorization` header: send exactly one".into(),
                ),
            )),
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
/// imports, for server reflection (grpcurl needs them to call Check). Pruned from the
/// envoy-types crate's full set by the test below, which also fails when an envoy-types
/// upgrade changes them (rerun it with `AUTH_REGENERATE=1` to refresh the file).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("ext_authz.fds.bin");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::{HashMap, HashSet};

    use prost::Message;
    use prost_types::{FileDescriptorProto, FileDescriptorSet};

    use super::*;

    /// The envoy-types crate's full descriptor set, found through `cargo metadata`.
    fn envoy_types_descriptors() -> FileDescriptorSet {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "envoy-types")
            .and_then(|p| p["manifest_path"].as_str())
            .unwrap()
            .to_owned();
        let dir = std::path::Path::new(&manifest).parent().unwrap();
        let bytes = std::fs::read(dir.join("src/generated/types.bin")).unwrap();
        FileDescriptorSet::decode(bytes.as_slice()).unwrap()
    }

    /// `root` and everything it imports, each file after its imports.
    fn closure(all: &FileDescriptorSet, root: &str) -> FileDescriptorSet {
        let by_name: HashMap<&str, &FileDescriptorProto> =
            all.file.iter().map(|f| (f.name(), f)).collect();
        fn visit<'a>(
            name: &'a str,
            by_name: &HashMap<&'a str, &'a FileDescriptorProto>,
            seen: &mut HashSet<&'a str>,
            out: &mut Vec<FileDescriptorProto>,
        ) {
            if !seen.insert(name) {
                return;
            }
            let file = by_name[name];
            for dep in &file.dependency {
                visit(dep, by_name, seen, out);
            }
            // Without source info (comments and spans): reflection clients never need it.
            out.push(FileDescriptorProto {
                source_code_info: None,
                ..file.clone()
            });
        }
        let mut out = Vec::new();
        visit(root, &by_name, &mut HashSet::new(), &mut out);
        FileDescriptorSet { file: out }
    }

    #[test]
    fn the_reflection_descriptors_match_envoy_types() {
        let pruned = closure(
            &envoy_types_descriptors(),
            "envoy/service/auth/v3/external_auth.proto",
        )
        .encode_to_vec();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/authz/envoy/ext_authz.fds.bin"
        );
        if std::env::var_os("AUTH_REGENERATE").is_some() {
            std::fs::write(path, &pruned).unwrap();
        }
        assert!(
            FILE_DESCRIPTOR_SET == pruned.as_slice(),
            "{path} is stale: rerun this test with AUTH_REGENERATE=1"
        );
        let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let names: HashSet<&str> = set.file.iter().map(|f| f.name()).collect();
        for file in &set.file {
            for dep in &file.dependency {
                assert!(
                    names.contains(dep.as_str()),
                    "{} imports missing {dep}",
                    file.name()
                );
            }
        }
        let service = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().map(move |s| (f.package(), s)))
            .find(|(_, s)| s.name() == "Authorization")
            .unwrap();
        assert_eq!(service.0, "envoy.service.auth.v3");
        assert_eq!(service.1.method[0].name(), "Check");
    }
}
