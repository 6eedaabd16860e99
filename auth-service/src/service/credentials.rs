//! Who is calling: the caller's own token from `authorization: Bearer <token>` metadata,
//! and the connection it came on (address, verified client certificate).
use std::sync::Arc;

use tonic::Request;

use crate::{
    error::{Error, Result},
    token::{self, Prefix, TokenDigest},
    transport::{ConnInfo, PeerIdentity},
};

/// Parses the bearer token of a request. Every failure is a credential error that
/// touches nothing: no database work happens for a request that fails here.
pub fn bearer<T>(request: &Request<T>, prefix: &Prefix) -> Result<TokenDigest> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Error::MissingCredentials(
            "no `authorization` metadata: send `authorization: Bearer <token>`".into(),
        )
    })?;
    let value = value.to_str().map_err(|_| {
        Error::TokenMalformed("the `authorization` metadata is not printable ASCII".into())
    })?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::MissingCredentials(
            "the `authorization` metadata must use the Bearer scheme: `authorization: Bearer <token>`".into(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::MissingCredentials(
            "the `authorization` metadata holds no token: send `authorization: Bearer <token>`"
                .into(),
        ));
    }
    token::parse(prefix, token)
}

/// The peer address, for the audit trail.
pub fn caller<T>(request: &Request<T>) -> String {
    peer_addr(request).map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// The peer's socket address: from the transport's connection info (our accept loop),
/// else tonic's own (a server built without it, as in some tests).
pub fn peer_addr<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|c| c.remote_addr)
        .or_else(|| request.remote_addr())
}

/// The verified client certificate's identity, on an mTLS connection.
pub fn peer_identity<T>(request: &Request<T>) -> Option<Arc<PeerIdentity>> {
    request.extensions().get::<ConnInfo>()?.peer.clone()
}

/// Checks that the caller may use ValidateToken (or a proxy adapter): anyone when
/// `allowed` is empty, else a verified client certificate carrying one of its IDs.
pub fn authorize_validate<T>(request: &Request<T>, allowed: &[String]) -> Result<()> {
    if allowed.is_empty() {
        return Ok(());
    }
    match peer_identity(request) {
        Some(id) if id.is_allowed(allowed) => Ok(()),
        Some(id) => Err(Error::CallerNotAllowed(format!(
            "this caller may not validate tokens: its client certificate names {id}, which is \
             not in the service's --validate-allow list"
        ))),
        None => Err(Error::CallerNotAllowed(
            "this caller may not validate tokens: it presented no client certificate, and \
             only callers on the service's --validate-allow list may"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use auth_api::ErrorReason as Reason;

    use super::*;

    fn with_auth(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        r
    }

    fn reason(r: Result<TokenDigest>) -> Reason {
        r.unwrap_err().reason().unwrap()
    }

    #[test]
    fn schemes_and_shapes() {
        let p = Prefix::default();
        let t = token::generate(&p).unwrap();
        assert!(bearer(&with_auth(&format!("Bearer {}", t.expose())), &p).is_ok());
        assert!(bearer(&with_auth(&format!("bearer  {} ", t.expose())), &p).is_ok());
        assert_eq!(
            reason(bearer(&Request::new(()), &p)),
            Reason::MissingCredentials
        );
        assert_eq!(
            reason(bearer(&with_auth(&format!("Basic {}", t.expose())), &p)),
            Reason::MissingCredentials
        );
        assert_eq!(
            reason(bearer(&with_auth(t.expose()), &p)),
            Reason::MissingCredentials
        );
        assert_eq!(
            reason(bearer(&with_auth("Bearer"), &p)),
            Reason::MissingCredentials
        );
        assert_eq!(
            reason(bearer(&with_auth("Bearer pat_nope"), &p)),
            Reason::TokenMalformed
        );
    }

    #[test]
    fn binary_metadata_is_malformed() {
        let p = Prefix::default();
        let mut r = Request::new(());
        let v = tonic::metadata::MetadataValue::try_from(&b"Bearer \xff\xfe"[..]).unwrap();
        r.metadata_mut().insert("authorization", v);
        assert_eq!(reason(bearer(&r, &p)), Reason::TokenMalformed);
    }
}
