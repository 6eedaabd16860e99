//! `/authz/forward-auth` on the HTTP side port: the check that nginx `auth_request`,
//! Traefik ForwardAuth and Caddy `forward_auth` make before passing a request on.
//!
//! Any method. The token comes from `Authorization`; the required scopes from the
//! `X-Auth-Required-Scope` header (set per location in the proxy's configuration) and
//! any `?scope=` query parameters (for proxies that can only set the URL), all
//! space-separated and all required. Answers:
//! - 200 with the `X-Auth-*` identity headers;
//! - 401 with an RFC 6750 `WWW-Authenticate` for a credential problem;
//! - 403 `insufficient_scope` for a missing scope;
//! - 503 with `Retry-After` when the database is unavailable, never a 401.
//!
//! The port has no client certificates: with `--validate-allow` set, only loopback
//! peers (a proxy beside the service, in the same pod or on the same host) may ask.
use std::{net::SocketAddr, time::Duration};

use auth_api::ErrorReason;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::Verdict;
use crate::{error::Error, http::HttpState};

/// The request header that names the required scopes.
pub const REQUIRED_SCOPE_HEADER: &str = "x-auth-required-scope";

/// When a client should retry after a database outage (`Retry-After`).
const OUTAGE_RETRY: Duration = Duration::from_secs(2);

pub async fn handle(State(state): State<HttpState>, request: Request) -> Response {
    let svc = &state.svc;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if !may_ask(svc.validate_allow(), peer) {
        let e = Error::CallerNotAllowed(
            "this caller may not validate tokens: with --validate-allow set, forward-auth \
             answers only proxies on loopback; use ext_authz over mTLS from elsewhere"
                .into(),
        );
        return refusal(
            StatusCode::FORBIDDEN,
            ErrorReason::CallerNotAllowed,
            &e.to_string(),
        )
        .into_response();
    }
    let headers = request.headers();
    let mut required: Vec<String> = headers
        .get_all(REQUIRED_SCOPE_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    if let Some(query) = request.uri().query() {
        required.extend(
            form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.into_owned()),
        );
    }
    let required: Vec<&str> = required.iter().map(String::as_str).collect();
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next();
    let verdict = if values.next().is_some() {
        super::rejected(
            svc,
            Error::TokenMalformed(
                "the request has more than one `authorization` header: send exactly one".into(),
            ),
        )
    } else {
        match super::decide(svc, first.map(HeaderValue::as_bytes), &required).await {
            Ok(verdict) => verdict,
            Err(e) => return unavailable(svc, e),
        }
    };
    match verdict {
        Verdict::Allow(granted) => {
            let mut out = HeaderMap::new();
            for (name, value) in granted.headers() {
                match HeaderValue::from_str(value) {
                    Ok(v) => {
                        out.insert(HeaderName::from_static(name), v);
                    }
                    Err(_) => {
                        return unavailable(
                            svc,
                            Error::Internal(format!(
                                "token {}: its {name} cannot be an HTTP header value",
                                granted.token_id
                            )),
                        );
                    }
                }
            }
            (StatusCode::OK, out).into_response()
        }
        Verdict::Unauthenticated(e) => {
            let reason = e.reason().unwrap_or(ErrorReason::MissingCredentials);
            challenged(
                StatusCode::UNAUTHORIZED,
                super::challenge(&e),
                reason,
                &e.to_string(),
            )
        }
        Verdict::Forbidden { missing } => challenged(
            StatusCode::FORBIDDEN,
            super::scope_challenge(&missing),
            ErrorReason::InsufficientScope,
            &super::scope_message(&missing),
        ),
    }
}

/// A refusal: the JSON body, never cached.
fn refusal(status: StatusCode, reason: ErrorReason, message: &str) -> impl IntoResponse {
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        super::body(reason, message),
    )
}

fn challenged(
    status: StatusCode,
    challenge: String,
    reason: ErrorReason,
    message: &str,
) -> Response {
    let mut response = refusal(status, reason, message).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// Database trouble or a bug: 503 with `Retry-After` (the shed and outage cases), 500
/// for a bug. The gRPC mapping logs the cause, as it does for every call.
fn unavailable(svc: &crate::service::AuthSvc, e: Error) -> Response {
    let retry = match &e {
        Error::Overloaded { retry_after, .. } => Some(*retry_after),
        Error::Unavailable(_) => Some(OUTAGE_RETRY),
        _ => None,
    };
    let status = svc.status(e);
    let body = serde_json::json!({ "message": status.message() }).to_string();
    match retry {
        Some(after) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::CACHE_CONTROL, "no-store".to_owned()),
                (header::RETRY_AFTER, retry_after_secs(after).to_string()),
            ],
            body,
        )
            .into_response(),
        None => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1: `0` would invite a spin.
fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    secs.max(1)
}

/// Whether a peer may ask: anyone without an allow-list; with one, only loopback (the
/// port cannot see client certificates, so only "beside the service" is known).
fn may_ask(allow: &[String], peer: Option<SocketAddr>) -> bool {
    allow.is_empty() || peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn with_an_allow_list_only_loopback_may_ask() {
        let list = ["spiffe://mesh/sa/envoy".to_string()];
        let at = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert!(may_ask(&[], at("10.0.0.7:4000")));
        assert!(may_ask(&[], None));
        assert!(may_ask(&list, at("127.0.0.1:4000")));
        assert!(may_ask(&list, at("[::1]:4000")));
        assert!(
            may_ask(&list, at("[::ffff:127.0.0.1]:4000")),
            "v4 on a dual-stack port"
        );
        assert!(!may_ask(&list, at("10.0.0.7:4000")));
        assert!(!may_ask(&list, None));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}
