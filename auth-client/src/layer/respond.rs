//! What a refused request gets back, in the protocol it spoke: a gRPC status with the
//! service's `ErrorInfo`, or an HTTP status with the RFC 6750 challenge and the JSON
//! body of forward-auth (`auth_api::challenge`).
use std::time::Duration;

use auth_api::{ErrorReason, challenge};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::Full;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::outcome::{Rejection, Unavailable, rejection_status};

/// A refusal's response.
pub type Refusal = http::Response<Full<Bytes>>;

/// When a caller is told to retry after an outage, unless the service said.
const OUTAGE_RETRY: Duration = Duration::from_secs(1);

/// What an outage says, whatever its cause (which is logged, not sent).
const OUTAGE_MESSAGE: &str =
    "the authentication service is unavailable: retry later, and keep the token";

/// Whether the request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The refusal of a token: `UNAUTHENTICATED` / 401, or `PERMISSION_DENIED` / 403 for a
/// missing scope.
pub fn rejected(grpc: bool, rejection: &Rejection) -> Refusal {
    if grpc {
        return rejection_status(rejection).into_http();
    }
    let message = rejection.to_string();
    let (status, challenge, body) = match (rejection, rejection.reason()) {
        (Rejection::InsufficientScope { missing }, _) => (
            StatusCode::FORBIDDEN,
            challenge::scope_challenge(missing),
            challenge::body(ErrorReason::InsufficientScope, &message),
        ),
        (_, Some(reason)) => (
            StatusCode::UNAUTHORIZED,
            challenge::challenge(Some(reason), &message),
            challenge::body(reason, &message),
        ),
        (_, None) => (
            StatusCode::UNAUTHORIZED,
            challenge::challenge(Some(ErrorReason::TokenUnknown), &message),
            message_body(&message),
        ),
    };
    let mut response = json(status, body);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The service could not judge the token: `UNAVAILABLE` / 503 with when to retry, never
/// a refusal that would make the caller throw its token away.
pub fn unavailable(grpc: bool, outage: &Unavailable) -> Refusal {
    let after = outage.retry_after().unwrap_or(OUTAGE_RETRY);
    if grpc {
        let details = ErrorDetails::with_retry_info(Some(after));
        return Status::with_error_details(Code::Unavailable, OUTAGE_MESSAGE, details).into_http();
    }
    let mut response = json(
        StatusCode::SERVICE_UNAVAILABLE,
        message_body(OUTAGE_MESSAGE),
    );
    let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn json(status: StatusCode, body: String) -> Refusal {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `{"message": "..."}` for a message of printable ASCII without quotes or
/// backslashes (every message here), escaped through the challenge's rules otherwise.
fn message_body(message: &str) -> String {
    format!("{{\"message\":\"{}\"}}", challenge::quotable(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_refusals_carry_the_challenge_and_the_reason() {
        let r = rejected(false, &Rejection::TokenRevoked);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let challenge = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="auth", error="invalid_token""#),
            "{challenge}"
        );
        let missing = rejected(false, &Rejection::MissingCredentials);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="auth""#
        );
        let scope = rejected(
            false,
            &Rejection::InsufficientScope {
                missing: vec!["billing:write".into()],
            },
        );
        assert_eq!(scope.status(), StatusCode::FORBIDDEN);
        assert!(
            scope.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .ends_with(r#"scope="billing:write""#)
        );
    }

    #[test]
    fn an_outage_is_503_or_unavailable_never_a_refusal() {
        let outage = Unavailable::new(Code::Unavailable, "connection refused");
        let r = unavailable(false, &outage);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
        let g = unavailable(true, &outage);
        assert_eq!(g.headers()["grpc-status"], "14");
        let g = rejected(true, &Rejection::TokenExpired);
        assert_eq!(g.headers()["grpc-status"], "16");
        assert!(is_grpc(g.headers()));
    }
}
