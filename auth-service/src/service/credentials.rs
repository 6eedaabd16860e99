//! Who is calling: the caller's own token from `authorization: Bearer <token>` metadata,
//! and the connection it came on (address, verified client certificate).
//!
//! The parsing of the header value is [`parse_bearer`], a pure function over bytes, so
//! that it can be fuzzed and property-tested without building a tonic request.
use std::sync::Arc;

use tonic::Request;

use crate::{
    error::{Error, Result},
    token::{self, Prefix, TokenDigest},
    transport::{ConnInfo, PeerIdentity},
};

/// Parses the bearer token of a request. Every failure is a credential error that
/// touches nothing: no database work happens for a request that fails here.
pub(crate) fn bearer<T>(request: &Request<T>, prefix: &Prefix) -> Result<TokenDigest> {
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

/// Spaces and tabs: the only whitespace a [`printable`] value can hold. HTTP allows
/// both around and inside a field value (RFC 9110 §5.5), and clients differ in which
/// they send, so either may separate the scheme from the token.
fn blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses the value of `authorization` metadata (`Bearer <token>`; scheme in any case,
/// spaces or tabs around and between) into the digest to look up.
///
/// Bytes, not `&str`: metadata may carry any byte a client sends, and anything but
/// printable ASCII is refused here rather than trusted upstream.
pub fn parse_bearer(value: &[u8], prefix: &Prefix) -> Result<TokenDigest> {
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(printable))
        .ok_or_else(|| {
            Error::TokenMalformed("the `authorization` value is not printable ASCII".into())
        })?;
    let value = value.trim_matches(blank);
    let (scheme, token) = value.split_once(blank).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Error::MissingCredentials(
            "the `authorization` value must use the Bearer scheme: `authorization: Bearer <token>`"
                .into(),
        ));
    }
    let token = token.trim_matches(blank);
    if token.is_empty() {
        return Err(Error::MissingCredentials(
            "the `authorization` value holds no token: send `authorization: Bearer <token>`".into(),
        ));
    }
    token::parse(prefix, token)
}

/// The peer address, for the audit trail.
pub(crate) fn caller<T>(request: &Request<T>) -> String {
    peer_addr(request).map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// The peer's socket address: from the transport's connection info (our accept loop),
/// else tonic's own (a server built without it, as in some tests).
pub(crate) fn peer_addr<T>(request: &Request<T>) -> Option<std::net::SocketAddr> {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(|c| c.remote_addr)
        .or_else(|| request.remote_addr())
}

/// The verified client certificate's identity, on an mTLS connection.
pub(crate) fn peer_identity<T>(request: &Request<T>) -> Option<Arc<PeerIdentity>> {
    request.extensions().get::<ConnInfo>()?.peer.clone()
}

/// Checks that the caller may use ValidateToken (or a proxy adapter): anyone when
/// `allowed` is empty, else a verified client certificate carrying one of its IDs.
pub(crate) fn authorize_validate<T>(request: &Request<T>, allowed: &[String]) -> Result<()> {
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
    fn a_tab_separates_the_scheme_from_the_token() {
        // Regression: only a space used to split, so `Bearer<TAB><token>` was read as an
        // unknown scheme and refused as MISSING_CREDENTIALS (found by the proptest).
        let p = Prefix::default();
        let t = token::generate(&p).unwrap();
        let canonical = bearer(&with_auth(&format!("Bearer {}", t.expose())), &p).unwrap();
        for header in [
            format!("Bearer\t{}", t.expose()),
            format!("\tbearer \t {}\t", t.expose()),
        ] {
            assert_eq!(
                bearer(&with_auth(&header), &p).unwrap(),
                canonical,
                "{header:?}"
            );
        }
        assert_eq!(
            reason(bearer(&with_auth("Bearer\t"), &p)),
            Reason::MissingCredentials
        );
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
                "the `authorization` value is not printable ASCII"
            );
        }
        assert_eq!(
            reason(parse_bearer(b"", &p)),
            Reason::MissingCredentials,
            "an empty value names no scheme"
        );
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of `parse_bearer`: hostile bytes never panic, and the scheme's case
    //! and the blanks around and between do not change the answer.
    use auth_api::{ErrorReason as Reason, token::with_random};
    use proptest::{collection::vec, prelude::*};

    use super::*;

    /// `bearer` with each letter's case chosen by the strategy.
    fn any_case_bearer() -> impl Strategy<Value = String> {
        vec(any::<bool>(), 6).prop_map(|upper| {
            "bearer"
                .chars()
                .zip(upper)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    fn token() -> impl Strategy<Value = String> {
        "[0-9A-Za-z]{30}".prop_map(|random| with_random(&Prefix::default(), &random).unwrap())
    }

    /// Byte strings of every kind: arbitrary bytes, and header-like values that get past
    /// the printable check to the scheme and token checks.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            vec(any::<u8>(), 0..200),
            "[ \t]{0,3}[A-Za-z]{0,8}[ \t]{0,3}[ -~\t]{0,60}".prop_map(String::into_bytes),
            any::<String>().prop_map(|s| format!("Bearer {s}").into_bytes()),
        ]
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panicking(value in value()) {
            let p = Prefix::default();
            match parse_bearer(&value, &p) {
                Ok(_) => prop_assert!(value.iter().all(|&b| printable(b))),
                Err(e) => {
                    let reason = e.reason();
                    prop_assert!(
                        reason == Some(Reason::MissingCredentials)
                            || reason == Some(Reason::TokenMalformed),
                        "{:?}",
                        e
                    );
                    if !value.iter().all(|&b| printable(b)) {
                        prop_assert_eq!(reason, Some(Reason::TokenMalformed));
                    }
                }
            }
        }

        #[test]
        fn scheme_case_and_blanks_give_the_canonical_digest(
            t in token(),
            scheme in any_case_bearer(),
            before in "[ \t]{0,4}",
            between in "[ \t]{1,4}",
            after in "[ \t]{0,4}",
        ) {
            let p = Prefix::default();
            let canonical = parse_bearer(format!("Bearer {t}").as_bytes(), &p).unwrap();
            prop_assert_eq!(&canonical, &token::parse(&p, &t).unwrap());
            let header = format!("{before}{scheme}{between}{t}{after}");
            prop_assert_eq!(parse_bearer(header.as_bytes(), &p).ok(), Some(canonical), "{:?}", header);
        }

        #[test]
        fn another_scheme_is_missing_credentials(
            t in token(),
            scheme in "[A-Za-z][A-Za-z0-9._~+/-]{0,12}",
            before in "[ \t]{0,4}",
            between in "[ \t]{1,4}",
        ) {
            prop_assume!(!scheme.eq_ignore_ascii_case("bearer"));
            let header = format!("{before}{scheme}{between}{t}");
            let reason = parse_bearer(header.as_bytes(), &Prefix::default()).unwrap_err().reason();
            prop_assert_eq!(reason, Some(Reason::MissingCredentials), "{:?}", header);
        }
    }
}
