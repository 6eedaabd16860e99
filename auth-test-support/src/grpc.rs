//! Client-side helpers: bearer metadata, the ErrorInfo reason of a status, the calls
//! the tests make most, and Envoy's ext_authz CheckRequest.
use std::time::Duration;

use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, ValidateTokenRequest, ValidateTokenResponse,
    auth_service_client::AuthServiceClient,
};
use chrono::{DateTime, Utc};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt;

/// A day, for renewal policies and lifetimes.
pub const DAY: Duration = Duration::from_secs(86400);

/// `message` with `authorization: Bearer <token>` metadata.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The ErrorInfo reason of an UNAUTHENTICATED status (panics on any other code, or
/// without a detail in the `auth.v1` domain).
pub fn reason(status: &Status) -> String {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo detail");
    assert_eq!(info.domain, auth_api::ERROR_DOMAIN);
    info.reason
}

/// A wire timestamp as a time.
pub fn to_time(t: &prost_types::Timestamp) -> DateTime<Utc> {
    auth_api::time::from_timestamp(t).unwrap()
}

pub async fn renew(
    client: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<RenewCurrentTokenResponse, Status> {
    client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

pub async fn validate(
    client: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<ValidateTokenResponse, Status> {
    client
        .validate_token(ValidateTokenRequest {
            token: token.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

/// How long after the start a new caller's first `ValidateToken` on `addr` was answered
/// (a malformed token: `UNAUTHENTICATED` is the answer), trying with a fresh connection
/// every `pause` for at most `within`; `None` if it never was.
pub async fn first_answer(addr: &str, within: Duration, pause: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    while started.elapsed() < within {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let mut client = AuthServiceClient::connect(format!("http://{addr}"))
                .await
                .ok()?;
            validate(&mut client, "pat_x").await.err()
        })
        .await;
        if let Ok(Some(status)) = attempt
            && status.code() == Code::Unauthenticated
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(pause).await;
    }
    None
}

pub async fn lookup(
    client: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<LookupCurrentTokenResponse, Status> {
    client
        .lookup_current_token(authed(LookupCurrentTokenRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

/// What `grpc.health.v1` reports for `auth.v1.AuthService` at `url`.
pub async fn health(url: &str) -> ServingStatus {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let req = HealthCheckRequest {
        service: auth_api::SERVICE_NAME.to_string(),
    };
    let status = HealthClient::new(channel)
        .check(req)
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

/// Waits (up to 15 s) until health at `url` reports `want`.
pub async fn wait_for_health(url: &str, want: ServingStatus) {
    for _ in 0..150 {
        if health(url).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

/// A CheckRequest as Envoy builds it: the request's headers (keys lower-cased) and the
/// route's `required_scope` context extension.
pub fn envoy_check(
    headers: &[(&str, &str)],
    required_scope: Option<&str>,
) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request},
    };
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map_or_else(String::new, |(_, v)| v.to_string())
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: header(":method"),
                    path: header(":path"),
                    host: header(":authority"),
                    scheme: header(":scheme"),
                    protocol: "HTTP/2".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: required_scope
                .map(|s| [("required_scope".to_string(), s.to_string())].into())
                .unwrap_or_default(),
            ..Default::default()
        }),
    }
}
