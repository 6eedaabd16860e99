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
//! The port sees no client certificates: with `--validate-allow` or
//! `--forward-auth-allow` set, only loopback peers (a proxy beside the service) and the
//! listed networks may ask.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use auth_api::ErrorReason;
use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::Verdict;
use crate::{
    error::Error,
    metrics::{Adapter, Decision},
    service::AuthSvc,
};

/// The request header that names the required scopes.
pub(crate) const REQUIRED_SCOPE_HEADER: &str = "x-auth-required-scope";

/// When a client should retry after a database outage (`Retry-After`).
const OUTAGE_RETRY: Duration = Duration::from_secs(2);

/// Who may ask /authz/forward-auth: anyone unless `restricted`; then loopback and
/// `networks` (the HTTP port sees addresses, not certificates).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub(crate) restricted: bool,
    pub(crate) networks: Vec<ipnet::IpNet>,
}

impl Access {
    /// Whether a peer at `peer` (unknown: `None`) may ask.
    pub(crate) fn allows(&self, peer: Option<std::net::IpAddr>) -> bool {
        if !self.restricted {
            return true;
        }
        // A v4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let Some(ip) = peer.map(|ip| ip.to_canonical()) else {
            return false;
        };
        ip.is_loopback() || self.networks.iter().any(|net| net.contains(&ip))
    }
}

/// What the endpoint needs: the token checks and who may ask.
#[derive(Clone)]
pub(crate) struct ForwardAuth {
    pub(crate) svc: Arc<AuthSvc>,
    pub(crate) access: Arc<Access>,
}

pub(crate) async fn handle(State(state): State<ForwardAuth>, request: Request) -> Response {
    let svc = &state.svc;
    let count = |decision| svc.metrics().authz_decision(Adapter::ForwardAuth, decision);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if !state.access.allows(peer.map(|p| p.ip())) {
        let e = Error::CallerNotAllowed(format!(
            "this caller ({}) may not use forward-auth: only loopback and the networks in \
             the service's --forward-auth-allow may (or use ext_authz over mTLS)",
            peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string())
        ));
        count(Decision::CallerNotAllowed);
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
            Err(e) => {
                count(Decision::Unavailable);
                return unavailable(svc, e);
            }
        }
    };
    count(verdict.decision());
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
fn unavailable(svc: &AuthSvc, e: Error) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2100)), 3);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn restricted_forward_auth_admits_loopback_and_the_listed_networks() {
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let open = Access::default();
        assert!(open.allows(ip("203.0.113.9")));
        assert!(open.allows(None));
        let only = Access {
            restricted: true,
            networks: vec!["10.42.0.0/16".parse().unwrap()],
        };
        assert!(only.allows(ip("127.0.0.1")));
        assert!(only.allows(ip("::1")));
        assert!(
            only.allows(ip("::ffff:127.0.0.1")),
            "v4 on a dual-stack port"
        );
        assert!(only.allows(ip("10.42.7.1")));
        assert!(only.allows(ip("::ffff:10.42.7.1")));
        assert!(!only.allows(ip("10.43.0.1")));
        assert!(!only.allows(None));
    }
}
