//! What was wrong with a server's certificate, found in an error's causes by type, not
//! by text: a failed handshake reaches its caller as rustls' error, often inside an
//! `std::io::Error` (tokio-rustls) inside the caller's own error (tokio-postgres, hyper).
use std::error::Error as StdError;

use rustls::{CertificateError, Error as TlsError};

use crate::verify::NotASystemRoot;

/// A server certificate problem, as people search for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The chain leads to none of the trusted roots.
    UnknownIssuer,
    /// The chain leads to none of the system's roots ([`NotASystemRoot`]).
    NotASystemRoot,
    /// The certificate is not for the host name dialled.
    NameMismatch,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet (a clock off, or a certificate issued ahead).
    NotYetValid,
    /// A signature in the chain does not verify.
    BadSignature,
}

/// The certificate problem among `error` and its causes, if there is one.
pub fn find(error: &(dyn StdError + 'static)) -> Option<Problem> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<TlsError>() {
            return of(tls);
        }
        // An io::Error's `source()` skips the error it wraps: look inside it.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(problem) = find(inner)
        {
            return Some(problem);
        }
        next = e.source();
    }
    None
}

fn of(error: &TlsError) -> Option<Problem> {
    let TlsError::InvalidCertificate(e) = error else {
        return None;
    };
    Some(match e {
        CertificateError::UnknownIssuer => Problem::UnknownIssuer,
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            Problem::NameMismatch
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => Problem::Expired,
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            Problem::NotYetValid
        }
        CertificateError::BadSignature => Problem::BadSignature,
        CertificateError::Other(other) if other.0.downcast_ref::<NotASystemRoot>().is_some() => {
            Problem::NotASystemRoot
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;

    use super::*;

    /// An error the way tokio-postgres hands it over: its own error, caused by
    /// tokio-rustls' io::Error, which wraps rustls' error.
    #[derive(Debug, thiserror::Error)]
    #[error("error performing TLS handshake")]
    struct Outer(#[source] std::io::Error);

    fn wrapped(e: CertificateError) -> Outer {
        Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            TlsError::InvalidCertificate(e),
        ))
    }

    #[test]
    fn problems_are_found_inside_io_errors_by_type() {
        let cases = [
            (CertificateError::UnknownIssuer, Problem::UnknownIssuer),
            (CertificateError::NotValidForName, Problem::NameMismatch),
            (CertificateError::Expired, Problem::Expired),
            (CertificateError::NotValidYet, Problem::NotYetValid),
            (CertificateError::BadSignature, Problem::BadSignature),
            (
                CertificateError::Other(OtherError(Arc::new(NotASystemRoot))),
                Problem::NotASystemRoot,
            ),
        ];
        for (error, problem) in cases {
            assert_eq!(find(&wrapped(error.clone())), Some(problem), "{error:?}");
        }
        assert_eq!(find(&wrapped(CertificateError::Revoked)), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(find(&refused), None);
    }
}
