//! The platform's CA certificates, what libpq calls `sslrootcert=system` and what an
//! HTTPS client trusts by default: read by rustls-native-certs, which also honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR` as OpenSSL (and so libpq) does.
use rustls::RootCertStore;

/// No CA certificate could be loaded from the platform.
#[derive(Debug, thiserror::Error)]
#[error("no CA certificates found on this system{}", detail(.errors))]
pub struct NoSystemRoots {
    /// What went wrong while looking (unreadable files, ...).
    pub(crate) errors: Vec<String>,
}

fn detail(errors: &[String]) -> String {
    if errors.is_empty() {
        " (install the ca-certificates package, or set SSL_CERT_FILE)".into()
    } else {
        format!(": {}", errors.join("; "))
    }
}

/// The system's roots. Certificates that cannot be trust anchors are skipped, as every
/// TLS library does with the platform store; none at all is an error.
pub fn system_roots() -> Result<RootCertStore, NoSystemRoots> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(NoSystemRoots {
            errors: found.errors.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(roots)
}
