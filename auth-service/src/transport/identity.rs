//! Who a caller is: the URI SANs (SPIFFE IDs) and DNS SANs of its verified client
//! certificate. Read only from a certificate the TLS layer has already verified against
//! `--tls-client-ca`.
use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// The identities a client certificate carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerIdentity {
    /// URI SANs, e.g. `spiffe://cluster.local/ns/mesh/sa/billing`.
    pub(crate) uris: Vec<String>,
    /// DNS SANs.
    pub(crate) dns: Vec<String>,
}

impl PeerIdentity {
    /// The SANs of a DER certificate; none when it cannot be read (it was verified, so
    /// that only happens with certificates this parser does not understand).
    pub(crate) fn from_der(der: &[u8]) -> PeerIdentity {
        let mut identity = PeerIdentity::default();
        let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
            return identity;
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => identity.dns.push(dns.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        identity
    }

    /// Whether any SAN equals one of `allowed` (DNS names compare without case).
    pub(crate) fn is_allowed(&self, allowed: &[String]) -> bool {
        allowed.iter().any(|id| {
            self.uris.iter().any(|uri| uri == id)
                || self.dns.iter().any(|dns| dns.eq_ignore_ascii_case(id))
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<&str> = self
            .uris
            .iter()
            .chain(self.dns.iter())
            .map(String::as_str)
            .collect();
        if all.is_empty() {
            f.write_str("a certificate with no URI or DNS name")
        } else {
            f.write_str(&all.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_by_uri_or_dns() {
        let id = PeerIdentity {
            uris: vec!["spiffe://cluster.local/ns/mesh/sa/billing".into()],
            dns: vec!["billing.mesh.svc".into()],
        };
        assert!(id.is_allowed(&["spiffe://cluster.local/ns/mesh/sa/billing".into()]));
        assert!(id.is_allowed(&["Billing.Mesh.Svc".into()]));
        assert!(!id.is_allowed(&["spiffe://cluster.local/ns/mesh/sa/other".into()]));
        assert!(!id.is_allowed(&[]));
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/mesh/sa/billing, billing.mesh.svc"
        );
        assert_eq!(
            PeerIdentity::default().to_string(),
            "a certificate with no URI or DNS name"
        );
    }
}
