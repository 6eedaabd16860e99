//! Certificates made in the test (rcgen): a CA, server certificates (with chosen serial
//! numbers, to tell a rotated one from the old), and client certificates with URI and
//! DNS SANs, written as PEM files. No key material is checked in.
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;

use crate::{Result, cluster};

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn both() -> Vec<ExtendedKeyUsagePurpose> {
    vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ]
}

/// A certificate authority in a directory of its own.
pub struct Pki {
    pub dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
}

impl Pki {
    pub fn new(tag: &str) -> Result<Pki> {
        let dir = cluster::scratch_dir(tag);
        std::fs::create_dir_all(&dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{tag} test CA"));
        let cert = params.self_signed(&key)?;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem())?;
        Ok(Pki {
            dir,
            issuer: Issuer::new(params, key),
            ca,
        })
    }

    fn leaf(
        &self,
        name: &str,
        sans: Vec<SanType>,
        serial: u64,
        usage: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Pair> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = sans;
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usage;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pair = Pair {
            cert: self.dir.join(format!("{name}-{serial}.pem")),
            key: self.dir.join(format!("{name}-{serial}.key")),
        };
        std::fs::write(&pair.cert, cert.pem())?;
        std::fs::write(&pair.key, key.serialize_pem())?;
        Ok(pair)
    }

    /// A server certificate for `localhost`, 127.0.0.1 and `extra` DNS names. Like a
    /// SPIFFE SVID or a cert-manager certificate with both usages, it may also serve as
    /// a client certificate (the health check presents it).
    pub fn server(&self, name: &str, serial: u64, extra: &[&str]) -> Result<Pair> {
        let mut sans = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        for dns in extra {
            sans.push(SanType::DnsName((*dns).try_into()?));
        }
        self.leaf(name, sans, serial, both())
    }

    /// A server certificate for DNS `names` only (no IP address).
    pub fn server_named(&self, name: &str, serial: u64, names: &[&str]) -> Result<Pair> {
        let sans = names
            .iter()
            .map(|n| Ok(SanType::DnsName((*n).try_into()?)))
            .collect::<Result<Vec<_>>>()?;
        self.leaf(name, sans, serial, both())
    }

    /// A client certificate carrying `uri` (a SPIFFE ID) and/or `dns`.
    pub fn client(&self, name: &str, uri: Option<&str>, dns: Option<&str>) -> Result<Pair> {
        let mut sans = Vec::new();
        if let Some(uri) = uri {
            sans.push(SanType::URI(uri.try_into()?));
        }
        if let Some(dns) = dns {
            sans.push(SanType::DnsName(dns.try_into()?));
        }
        self.leaf(name, sans, 1, vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a whole file as a string.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The serial number of the certificate the TLS server at `addr` presents now (a new
/// connection), verified against `ca` for `localhost`.
pub async fn served_serial(addr: std::net::SocketAddr, ca: &Path) -> Result<u64> {
    served_serial_as(addr, ca, None).await
}

/// [`served_serial`], presenting the client certificate `client` (mTLS).
pub async fn served_serial_as(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&Pair>,
) -> Result<u64> {
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match client {
        None => config.with_no_client_auth(),
        Some(pair) => config.with_client_auth_cert(
            rustls_pki_types::CertificateDer::pem_file_iter(&pair.cert)?
                .collect::<std::result::Result<Vec<_>, _>>()?,
            rustls_pki_types::PrivateKeyDer::from_pem_file(&pair.key)?,
        )?,
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())?;
    Ok(
        u64::try_from(cert.raw_serial_as_string().replace(':', "").len())
            .ok()
            .and_then(|_| {
                u64::from_str_radix(&cert.raw_serial_as_string().replace(':', ""), 16).ok()
            })
            .ok_or("serial too large")?,
    )
}
