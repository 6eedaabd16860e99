//! Server certificate verifiers: what a TLS client accepts from the server it dialled.
//!
//! One [`ServerVerifier`] covers every policy in the workspace ([`Check`]): the WebPKI
//! check with or without the host name (libpq's `verify-full` and `verify-ca`), one
//! pinned certificate (`auth-service healthcheck`), or none (libpq's `prefer` and
//! `require`, which encrypt without authenticating). Whatever the policy, the
//! handshake's signatures are checked here, once, with rustls' helpers and the
//! provider's algorithms: a verifier that does not judge the certificate's issuer still
//! makes the server prove that it holds the certificate's key.
use std::{fmt, path::Path, sync::Arc};

use rustls::{
    CertificateError, DigitallySignedStruct, Error as TlsError, OtherError, RootCertStore,
    SignatureScheme,
    client::{
        VerifierBuilderError, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{
        CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
    },
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::{pem, roots};

/// Trust anchors, and whether they are the system's (which changes what an unknown
/// issuer is called: see [`NotASystemRoot`]).
#[derive(Debug, Clone)]
pub struct Roots {
    store: Arc<RootCertStore>,
    system: bool,
}

impl Roots {
    /// The CA certificates in a PEM file.
    pub fn file(path: &Path) -> Result<Roots, pem::Error> {
        Ok(Roots {
            store: Arc::new(pem::read_roots(path)?),
            system: false,
        })
    }

    /// The platform's CA certificates ([`roots::system_roots`]).
    pub fn system() -> Result<Roots, roots::NoSystemRoots> {
        Ok(Roots {
            store: Arc::new(roots::system_roots()?),
            system: true,
        })
    }

    /// Whether these are the system's roots.
    pub(crate) fn is_system(&self) -> bool {
        self.system
    }

    /// The store, for rustls' own builders.
    pub(crate) fn store(&self) -> Arc<RootCertStore> {
        self.store.clone()
    }
}

/// What a client accepts as the server's certificate.
#[derive(Debug, Clone)]
pub enum Check {
    /// The chain leads to one of the roots, and the certificate is for the host dialled
    /// (WebPKI; libpq's `verify-full`).
    ChainAndName(Roots),
    /// The chain leads to one of the roots; the host name is not checked (libpq's
    /// `verify-ca`).
    Chain(Roots),
    /// Exactly this leaf certificate, whoever issued it and whatever names it holds.
    /// `holder` says where the expected certificate comes from, for the error.
    Pinned {
        leaf: CertificateDer<'static>,
        holder: String,
    },
    /// Any certificate: the connection is encrypted, the server not authenticated
    /// (libpq's `prefer` and `require` without a root certificate).
    Any,
}

/// The server's chain leads to none of the system's roots (a [`Check`] with
/// [`Roots::system`]): rustls' `UnknownIssuer`, said so that nobody goes looking for a
/// root certificate file that was never read.
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown issuer: the server's certificate is not signed by a CA among the system's roots")]
pub(crate) struct NotASystemRoot;

/// rustls shows an `Other` certificate error with `Debug`: make that the sentence.
impl fmt::Debug for NotASystemRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A [`ServerCertVerifier`] for one [`Check`].
#[derive(Debug)]
pub struct ServerVerifier {
    check: Inner,
    algorithms: WebPkiSupportedAlgorithms,
}

#[derive(Debug)]
enum Inner {
    WebPki {
        webpki: Arc<WebPkiServerVerifier>,
        name: bool,
        system: bool,
    },
    Pinned {
        leaf: CertificateDer<'static>,
        holder: String,
    },
    Any,
}

impl ServerVerifier {
    /// A verifier for `check`, with `provider`'s signature algorithms.
    pub fn new(
        check: Check,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<ServerVerifier>, VerifierBuilderError> {
        let webpki = |roots: &Roots, name: bool| -> Result<Inner, VerifierBuilderError> {
            Ok(Inner::WebPki {
                webpki: WebPkiServerVerifier::builder_with_provider(
                    roots.store(),
                    provider.clone(),
                )
                .build()?,
                name,
                system: roots.is_system(),
            })
        };
        let check = match check {
            Check::ChainAndName(roots) => webpki(&roots, true)?,
            Check::Chain(roots) => webpki(&roots, false)?,
            Check::Pinned { leaf, holder } => Inner::Pinned { leaf, holder },
            Check::Any => Inner::Any,
        };
        Ok(Arc::new(ServerVerifier {
            check,
            algorithms: provider.signature_verification_algorithms,
        }))
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match &self.check {
            Inner::WebPki {
                webpki,
                name,
                system,
            } => match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            {
                // WebPKI checks the chain before the name: a name error means the chain
                // is good.
                Err(TlsError::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) if !name => Ok(ServerCertVerified::assertion()),
                Err(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) if *system => {
                    Err(TlsError::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(NotASystemRoot)),
                    )))
                }
                other => other,
            },
            Inner::Pinned { leaf, holder } => {
                if end_entity.as_ref() == leaf.as_ref() {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(TlsError::General(format!(
                        "the server presents another certificate than {holder} holds"
                    )))
                }
            }
            Inner::Any => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::{
        ClientConfig, ClientConnection, ServerConfig, ServerConnection,
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    };
    use rustls_pki_types::PrivateKeyDer;

    use super::*;
    use crate::problem::{self, Problem};

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        cert: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        // Each CA its own name: WebPKI looks an issuer up by name, and two CAs of one name
        // would fail as a bad signature rather than as an unknown issuer.
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("test CA {n}"));
        let cert = params.self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A server certificate for `name` signed by `ca`, and its key.
    fn server(ca: &Ca, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
    }

    fn roots(ca: &Ca, system: bool) -> Roots {
        let mut store = RootCertStore::empty();
        store.add(ca.cert.clone()).unwrap();
        Roots {
            store: Arc::new(store),
            system,
        }
    }

    /// A whole handshake in memory, TLS 1.2 or 1.3, dialling `name`: the server's
    /// signatures are checked as well as its certificate.
    fn handshake(
        check: Check,
        served: (CertificateDer<'static>, PrivateKeyDer<'static>),
        name: &str,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> Result<(), TlsError> {
        let provider = crate::provider();
        let verifier = ServerVerifier::new(check, &provider).unwrap();
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[version])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // Served through a resolver, which (unlike `with_single_cert`) does not check
        // that the key goes with the certificate: an impostor's server can be made.
        let key = provider.key_provider.load_private_key(served.1).unwrap();
        let served = Arc::new(CertifiedKey::new(vec![served.0], key));
        let server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(served)));
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            // The server's complaint, if any, is the client's alert: keep going so the
            // client sees its own error.
            let _ = server.process_new_packets();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        Ok(())
    }

    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);

    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS12, &rustls::version::TLS13];

    #[test]
    fn chain_and_name_is_webpki() {
        let (ca, other) = (ca(), ca());
        for version in VERSIONS {
            let check = || Check::ChainAndName(roots(&ca, false));
            handshake(check(), server(&ca, "db.test"), "db.test", version).unwrap();
            let err =
                handshake(check(), server(&ca, "db.test"), "impostor.test", version).unwrap_err();
            assert_eq!(problem::find(&err), Some(Problem::NameMismatch), "{err}");
            let err =
                handshake(check(), server(&other, "db.test"), "db.test", version).unwrap_err();
            assert_eq!(problem::find(&err), Some(Problem::UnknownIssuer), "{err}");
        }
    }

    #[test]
    fn chain_only_accepts_any_name_but_not_any_issuer() {
        let (ca, other) = (ca(), ca());
        for version in VERSIONS {
            let check = || Check::Chain(roots(&ca, false));
            handshake(check(), server(&ca, "db.test"), "impostor.test", version).unwrap();
            let err =
                handshake(check(), server(&other, "db.test"), "db.test", version).unwrap_err();
            assert_eq!(problem::find(&err), Some(Problem::UnknownIssuer), "{err}");
        }
    }

    #[test]
    fn an_issuer_outside_the_system_roots_is_said_so() {
        let (ca, other) = (ca(), ca());
        let check = Check::ChainAndName(roots(&ca, true));
        let err = handshake(check, server(&other, "db.test"), "db.test", VERSIONS[1]).unwrap_err();
        assert_eq!(problem::find(&err), Some(Problem::NotASystemRoot), "{err}");
        assert!(
            err.to_string().contains("among the system's roots"),
            "{err}"
        );
    }

    #[test]
    fn pinned_accepts_exactly_its_certificate() {
        let ca = ca();
        let served = server(&ca, "db.test");
        for version in VERSIONS {
            let check = || Check::Pinned {
                leaf: served.0.clone(),
                holder: "--tls-cert".into(),
            };
            let same = (served.0.clone(), served.1.clone_key());
            handshake(check(), same, "elsewhere.test", version).unwrap();
            let err = handshake(check(), server(&ca, "db.test"), "db.test", version).unwrap_err();
            assert!(
                err.to_string()
                    .contains("another certificate than --tls-cert holds"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_check_verifies_the_handshake_signatures() {
        let ca = ca();
        let (cert, _) = server(&ca, "db.test");
        let (_, impostor_key) = server(&ca, "db.test");
        for version in VERSIONS {
            let any = handshake(Check::Any, server(&ca, "x.test"), "db.test", version);
            assert!(any.is_ok(), "any certificate: {any:?}");
            // A certificate copied from the real server, served with another key: every
            // check, even one that accepts any certificate, refuses the handshake.
            let checks = [
                Check::Any,
                Check::Pinned {
                    leaf: cert.clone(),
                    holder: "--tls-cert".into(),
                },
                Check::Chain(roots(&ca, false)),
                Check::ChainAndName(roots(&ca, false)),
            ];
            for check in checks {
                let stolen = (cert.clone(), impostor_key.clone_key());
                let err = handshake(check.clone(), stolen, "db.test", version).unwrap_err();
                assert!(
                    matches!(
                        err,
                        TlsError::InvalidCertificate(CertificateError::BadSignature)
                            | TlsError::PeerMisbehaved(_)
                    ),
                    "{check:?} over {version:?}: {err:?}"
                );
            }
        }
    }
}
