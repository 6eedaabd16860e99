//! The proxy adapters: Envoy's ext_authz `Check` over gRPC ([`envoy`]) and HTTP
//! forward-auth for nginx `auth_request`, Traefik ForwardAuth and Caddy `forward_auth`
//! ([`forward`]).
//!
//! Both ask [`decide`], which applies the same token rules, cache and database path as
//! ValidateToken, and then only translate its [`Verdict`] into their protocol: the
//! identity headers on success, an RFC 6750 challenge on a credential or scope problem.
//! Database trouble is never a verdict: it stays an [`Error`], which each adapter turns
//! into "unavailable, retry" (a gRPC UNAVAILABLE, an HTTP 503), never into a 401 that
//! would tell a client to throw its token away.
use crate::{
    error::{Error, Result, fmt_time},
    metrics::Decision,
    service::{AuthSvc, credentials},
};

pub mod envoy;
pub(crate) mod forward;

/// The headers a proxy passes upstream for an allowed request, in this order.
pub(crate) const IDENTITY_HEADERS: [&str; 5] = [
    "x-auth-user-id",
    "x-auth-token-id",
    "x-auth-token-name",
    "x-auth-scopes",
    "x-auth-expires-at",
];

/// Who the token belongs to, as header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Granted {
    pub(crate) user_id: String,
    pub(crate) token_id: String,
    pub(crate) name: String,
    /// The granted scopes, comma-separated.
    pub(crate) scopes: String,
    /// RFC 3339; empty for a token that never expires.
    pub(crate) expires_at: String,
}

impl Granted {
    /// [`Granted::headers`], owned.
    pub(crate) fn into_headers(self) -> [(&'static str, String); 5] {
        let [user, id, name, scopes, expires] = IDENTITY_HEADERS;
        [
            (user, self.user_id),
            (id, self.token_id),
            (name, self.name),
            (scopes, self.scopes),
            (expires, self.expires_at),
        ]
    }

    /// `(name, value)` for each of [`IDENTITY_HEADERS`].
    pub(crate) fn headers(&self) -> [(&'static str, &str); 5] {
        let [user, id, name, scopes, expires] = IDENTITY_HEADERS;
        [
            (user, self.user_id.as_str()),
            (id, self.token_id.as_str()),
            (name, self.name.as_str()),
            (scopes, self.scopes.as_str()),
            (expires, self.expires_at.as_str()),
        ]
    }
}

/// The answer to "may this request pass?".
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A live token with every required scope.
    Allow(Granted),
    /// No usable token: the error says which credential problem, and what to do.
    Unauthenticated(Error),
    /// A live token without these required scopes.
    Forbidden { missing: Vec<String> },
}

impl Verdict {
    /// How the metrics count it.
    pub(crate) fn decision(&self) -> Decision {
        match self {
            Verdict::Allow(_) => Decision::Allow,
            Verdict::Unauthenticated(_) => Decision::Unauthenticated,
            Verdict::Forbidden { .. } => Decision::Forbidden,
        }
    }
}

/// Decides on the raw `authorization` header value (absent: `None`) and the required
/// scopes (space-separated lists, all required). Only database trouble and bugs are
/// errors.
pub(crate) async fn decide(
    svc: &AuthSvc,
    authorization: Option<&[u8]>,
    required: &[&str],
) -> Result<Verdict> {
    let checked = match authorization {
        None => Err(Error::MissingCredentials(
            "no `authorization` header: send `Authorization: Bearer <token>`".into(),
        )),
        Some(value) => credentials::parse_bearer(value, svc.prefix()),
    };
    let digest = match checked {
        Ok(digest) => digest,
        Err(e) => return Ok(rejected(svc, e)),
    };
    let described = svc
        .describe(&digest, |token, _| {
            let missing: Vec<String> = required
                .iter()
                .flat_map(|list| list.split_ascii_whitespace())
                .filter(|want| !token.scopes().any(|has| has == *want))
                .map(str::to_owned)
                .collect();
            if !missing.is_empty() {
                return Verdict::Forbidden { missing };
            }
            Verdict::Allow(Granted {
                user_id: token.user_id.to_owned(),
                token_id: token.id.to_string(),
                name: token.name.to_owned(),
                scopes: token.scopes().collect::<Vec<_>>().join(","),
                expires_at: token.expires_at.map(fmt_time).unwrap_or_default(),
            })
        })
        .await;
    match described {
        Ok(verdict) => Ok(verdict),
        Err(e) if e.reason().is_some() => Ok(rejected(svc, e)),
        Err(e) => Err(e),
    }
}

/// A credential problem, counted like ValidateToken's.
fn rejected(svc: &AuthSvc, e: Error) -> Verdict {
    if let Some(reason) = e.reason() {
        svc.metrics().rejected(reason);
    }
    Verdict::Unauthenticated(e)
}

/// The `WWW-Authenticate` value for a credential problem (RFC 6750 §3): the bare
/// challenge for no token at all, `invalid_token` with what to do for the rest. The
/// shape is the contract's ([`auth_api::challenge`]), shared with auth-client's layer.
pub(crate) fn challenge(error: &Error) -> String {
    auth_api::challenge::challenge(error.reason(), &error.to_string())
}

pub(crate) use auth_api::challenge::{body, scope_challenge, scope_message};

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    #[test]
    fn the_bare_challenge_for_no_token_invalid_token_for_the_rest() {
        assert_eq!(
            challenge(&Error::MissingCredentials("x".into())),
            r#"Bearer realm="auth""#
        );
        let expired = challenge(&Error::TokenExpired(DateTime::UNIX_EPOCH));
        assert!(
            expired.starts_with(r#"Bearer realm="auth", error="invalid_token", error_description="token expired at 1970-01-01T00:00:00Z;"#),
            "{expired}"
        );
    }
}
