//! Reading the caller's own token from `authorization: Bearer <token>` metadata.
//!
//! The parsing of the header value is [`parse_bearer`], a pure function over bytes, so
//! that it can be fuzzed and property-tested without building a tonic request.
use tonic::Request;

use crate::{
    error::{Error, Result},
    token::{self, Prefix, TokenDigest},
};

/// Parses the bearer token of a request. Every failure is a credential error that
/// touches nothing: no database work happens for a request that fails here.
pub fn bearer<T>(request: &Request<T>, prefix: &Prefix) -> Result<TokenDigest> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Error::MissingCredentials(
            "no `authorization` metadata: send `authorization: Bearer <token>`".into(),
        )
    })?;
    // The raw bytes: a client may send obs-text (bytes >= 0x80), which `parse_bearer`
    // must see to refuse it.
    parse_bearer(value.as_encoded_bytes(), prefix)
}

/// What the `authorization` value may hold: visible ASCII, spaces and tabs, the same
/// set as `http::HeaderValue::to_str` accepts.
fn printable(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

/// Parses the value of `authorization` metadata (`Bearer <token>`, scheme in any case)
/// into the digest to look up.
///
/// Bytes, not `&str`: metadata may carry any byte a client sends, and anything but
/// printable ASCII is refused here rather than trusted upstream.
pub fn parse_bearer(value: &[u8], prefix: &Prefix) -> Result<TokenDigest> {
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(printable))
        .ok_or_else(|| {
            Error::TokenMalformed("the `authorization` metadata is not printable ASCII".into())
        })?;
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
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
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
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

    #[test]
    fn parse_bearer_matches_bearer_and_refuses_what_metadata_cannot_hold() {
        let p = Prefix::default();
        let t = token::generate(&p).unwrap();
        let header = format!("Bearer {}", t.expose());
        assert_eq!(
            parse_bearer(header.as_bytes(), &p).unwrap(),
            bearer(&with_auth(&header), &p).unwrap()
        );
        // Control characters, DEL and UTF-8 never reach the scheme check.
        for bad in ["\0", "\r\n", "\x7f", "é"] {
            let value = format!("Bearer {}{bad}", t.expose());
            let err = parse_bearer(value.as_bytes(), &p).unwrap_err();
            assert_eq!(err.reason(), Some(Reason::TokenMalformed), "{bad:?}");
            assert_eq!(
                err.to_string(),
                "the `authorization` metadata is not printable ASCII"
            );
        }
        assert_eq!(
            reason(parse_bearer(b"", &p)),
            Reason::MissingCredentials,
            "an empty value names no scheme"
        );
    }
}
