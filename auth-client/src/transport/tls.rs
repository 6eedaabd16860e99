//! TLS for the connections to the service: which files to read, and the one function
//! that turns them into a rustls `ClientConfig` ([`client_config`]).
//!
//! The PEM files, roots and provider come from `auth-tls`, the workspace's one TLS
//! module; this is where the client's choices of them are made. The connector calls
//! [`client_config`] for every new connection, so rotated files are used from the next
//! reconnect on, without a restart.
use std::path::PathBuf;

use auth_tls::pem;
use tokio_rustls::rustls::ClientConfig;

/// The files of an `https://` connection: the CA to trust (default: the system's
/// roots), and the client certificate and key for servers that require one (mTLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates to trust (PEM); `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that require one.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.client_cert.is_none() && self.client_key.is_none()
    }

    /// `self`, with what it leaves unset taken from `fallback`.
    pub fn or(&self, fallback: &TlsFiles) -> TlsFiles {
        TlsFiles {
            ca_file: self.ca_file.clone().or_else(|| fallback.ca_file.clone()),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| fallback.client_cert.clone()),
            client_key: self
                .client_key
                .clone()
                .or_else(|| fallback.client_key.clone()),
        }
    }
}

/// Why the TLS settings could not be built; the message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// The rustls client settings from the files as they are now: TLS 1.2 and 1.3 (the
/// workspace's one provider, `auth-tls`), the CA file's certificates or the system's
/// roots, the client certificate when both it and its key are given, and ALPN `h2`.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = match &files.ca_file {
        Some(path) => pem::read_roots(path).map_err(|e| TlsError(format!("CA file: {e}")))?,
        None => auth_tls::roots::system_roots().map_err(|e| TlsError(e.to_string()))?,
    };
    let builder = ClientConfig::builder_with_provider(auth_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let key = pem::read_key(key).map_err(|e| TlsError(format!("client key: {e}")))?;
            let chain =
                pem::read_certs(cert).map_err(|e| TlsError(format!("client certificate: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError(format!("client certificate and key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_set_wins_over_the_fallback() {
        let set = TlsFiles {
            ca_file: Some("/flag/ca".into()),
            ..TlsFiles::default()
        };
        let saved = TlsFiles {
            ca_file: Some("/saved/ca".into()),
            client_cert: Some("/saved/cert".into()),
            client_key: Some("/saved/key".into()),
        };
        let merged = set.or(&saved);
        assert_eq!(merged.ca_file, Some("/flag/ca".into()));
        assert_eq!(merged.client_cert, Some("/saved/cert".into()));
        assert!(TlsFiles::default().is_empty() && !merged.is_empty());
    }

    #[test]
    fn an_unreadable_file_is_named() {
        let err = client_config(&TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(client_config(&TlsFiles::default()).is_ok());
    }
}
