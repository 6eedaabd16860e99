//! Reading PEM files: certificate chains, private keys and CA roots. Every error names
//! the file, so that a message can say which one to fix.
use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A PEM file that could not be used; its message names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not PEM, or a certificate in it is broken.
    #[error("{}: not PEM certificates: {source}", path.display())]
    NotCertificates {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// The file holds no certificate at all.
    #[error("{}: holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// The file holds no usable private key.
    #[error("{}: not a PEM private key: {source}", path.display())]
    NotKey {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate in a CA file cannot be a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", path.display())]
    NotCa {
        path: PathBuf,
        source: rustls::Error,
    },
}

impl Error {
    /// The file the error is about (each message names it; the tests check that).
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        match self {
            Error::Read { path, .. }
            | Error::NotCertificates { path, .. }
            | Error::NoCertificate { path }
            | Error::NotKey { path, .. }
            | Error::NotCa { path, .. } => path,
        }
    }
}

/// The certificates in `path` (a chain: the leaf first), at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| match e {
            rustls_pki_types::pem::Error::Io(source) => Error::Read {
                path: path.to_owned(),
                source,
            },
            source => Error::NotCertificates {
                path: path.to_owned(),
                source,
            },
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::NotCertificates {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::Io(source) => Error::Read {
            path: path.to_owned(),
            source,
        },
        source => Error::NotKey {
            path: path.to_owned(),
            source,
        },
    })
}

/// The CA certificates in `path`, as trust anchors; every one must be usable.
pub fn read_roots(path: &Path) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|source| Error::NotCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("auth-tls-pem-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_chain_a_key_and_roots_are_read() {
        let dir = scratch("good");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["ca.test".into()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        assert_eq!(read_certs(&cert_path).unwrap().len(), 1);
        assert!(read_key(&key_path).is_ok());
        assert_eq!(read_roots(&cert_path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_error_names_the_file() {
        let dir = scratch("bad");
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let cases: [(Error, &str); 4] = [
            (read_certs(&missing).unwrap_err(), "cannot read"),
            (read_certs(&empty).unwrap_err(), "holds no certificate"),
            (read_key(&empty).unwrap_err(), "not a PEM private key"),
            (read_key(&missing).unwrap_err(), "cannot read"),
        ];
        for (err, says) in cases {
            let text = err.to_string();
            assert!(text.contains(&*err.path().to_string_lossy()), "{text}");
            assert!(text.contains(says), "{text}");
        }
        assert!(matches!(
            read_roots(&missing).unwrap_err(),
            Error::Read { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
