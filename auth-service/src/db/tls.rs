//! TLS to PostgreSQL with libpq's semantics for `sslmode` and `sslrootcert`, as every
//! PostgreSQL tool has them.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, so the rustls
//! client is built here to match libpq:
//!
//! | `sslmode` | encrypted | certificate checked | host name checked |
//! | --- | --- | --- | --- |
//! | `disable` | no | | |
//! | `prefer` (the default) | if the server offers it | no (yes with `sslrootcert`) | no |
//! | `require` | yes | no (yes with `sslrootcert`, as libpq does) | no |
//! | `verify-ca` | yes | against `sslrootcert` | no |
//! | `verify-full` | yes | against `sslrootcert` | yes |
//!
//! `sslrootcert=system` means the platform's CA certificates (read by auth-tls with
//! rustls-native-certs; `SSL_CERT_FILE` and `SSL_CERT_DIR` replace them, as they do for
//! libpq built with OpenSSL). As in libpq, it makes `verify-full` the default and refuses
//! any weaker `sslmode`: anyone can get a certificate from a public CA for a host name
//! they control, so the chain alone proves nothing. Without `sslrootcert`, `verify-ca`
//! and `verify-full` trust the system's roots too.
use std::path::PathBuf;

use auth_tls::verify::{Check, Roots, ServerVerifier};
use tokio_postgres::config::SslMode;
use tokio_rustls::rustls::ClientConfig;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn parse(value: &str) -> Result<Mode, String> {
        Ok(match value {
            "disable" => Mode::Disable,
            // libpq's allow tries plaintext first; encrypting when offered is stricter.
            "allow" | "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

/// `sslrootcert`: where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the platform's roots.
    System,
}

impl RootCert {
    fn parse(value: &str) -> RootCert {
        match value {
            "system" => RootCert::System,
            path => RootCert::File(PathBuf::from(path)),
        }
    }
}

/// How to speak TLS to one server: the mode, and the roots to check its certificate
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) mode: Mode,
    pub(crate) root_cert: Option<RootCert>,
}

impl Policy {
    /// From the values of `sslmode` and `sslrootcert`, with libpq's defaults and rules.
    pub(crate) fn new(mode: Option<&str>, root_cert: Option<&str>) -> Result<Policy, String> {
        let (given, root_cert) = (mode, root_cert.map(RootCert::parse));
        let mode = match (mode, &root_cert) {
            (Some(mode), _) => Mode::parse(mode)?,
            // libpq: the system's roots make verify-full the default...
            (None, Some(RootCert::System)) => Mode::VerifyFull,
            (None, _) => Mode::Prefer,
        };
        // ... and refuse a weaker mode, with libpq's own message.
        if root_cert == Some(RootCert::System)
            && mode != Mode::VerifyFull
            && let Some(weak) = given
        {
            return Err(format!(
                "weak sslmode \"{weak}\" may not be used with sslrootcert=system (use \"verify-full\")"
            ));
        }
        // libpq: with a root certificate, require verifies the chain like verify-ca.
        let mode = match (mode, &root_cert) {
            (Mode::Require, Some(_)) => Mode::VerifyCa,
            (mode, _) => mode,
        };
        Ok(Policy { mode, root_cert })
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether to insist.
    pub(crate) fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The rustls client settings; `None` without TLS. Reads the root certificates now,
    /// so that a missing file is a startup error.
    pub(crate) fn client_config(&self) -> Result<Option<ClientConfig>, String> {
        let roots = || -> Result<Roots, String> {
            match &self.root_cert {
                Some(RootCert::File(path)) => {
                    Roots::file(path).map_err(|e| format!("sslrootcert: {e}"))
                }
                Some(RootCert::System) => {
                    Roots::system().map_err(|e| format!("sslrootcert=system: {e}"))
                }
                None => Roots::system().map_err(|e| e.to_string()),
            }
        };
        let check = match self.mode {
            Mode::Disable => return Ok(None),
            Mode::Prefer | Mode::Require => match self.root_cert {
                Some(_) => Check::Chain(roots()?),
                None => Check::Any,
            },
            Mode::VerifyCa => Check::Chain(roots()?),
            Mode::VerifyFull => Check::ChainAndName(roots()?),
        };
        let provider = auth_tls::provider();
        let verifier =
            ServerVerifier::new(check, &provider).map_err(|e| format!("sslrootcert: {e}"))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_libpq() {
        let mode = |mode, root| Policy::new(mode, root).unwrap().mode;
        assert_eq!(mode(None, None), Mode::Prefer);
        assert_eq!(mode(Some("allow"), None), Mode::Prefer);
        assert_eq!(mode(Some("disable"), None), Mode::Disable);
        assert_eq!(mode(Some("require"), None), Mode::Require);
        assert_eq!(mode(Some("require"), Some("/ca.crt")), Mode::VerifyCa);
        assert_eq!(mode(Some("verify-full"), None), Mode::VerifyFull);
        let err = Policy::new(Some("maybe"), None).unwrap_err();
        assert!(err.contains("sslmode=maybe"), "{err}");
    }

    #[test]
    fn sslrootcert_system_is_the_system_roots_with_verify_full() {
        let system = Policy::new(None, Some("system")).unwrap();
        assert_eq!(
            system,
            Policy {
                mode: Mode::VerifyFull,
                root_cert: Some(RootCert::System)
            }
        );
        assert_eq!(
            Policy::new(Some("verify-full"), Some("system")).unwrap(),
            system
        );
        for weak in ["disable", "allow", "prefer", "require", "verify-ca"] {
            let err = Policy::new(Some(weak), Some("system")).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "weak sslmode \"{weak}\" may not be used with sslrootcert=system (use \"verify-full\")"
                )
            );
        }
        // Only the bare word: a file called so is still a file.
        assert_eq!(
            Policy::new(None, Some("./system")).unwrap().root_cert,
            Some(RootCert::File("./system".into()))
        );
    }

    #[test]
    fn a_root_certificate_file_is_read_at_once() {
        let policy = Policy::new(Some("verify-full"), Some("/nonexistent/ca.crt")).unwrap();
        let err = policy.client_config().unwrap_err();
        assert!(
            err.contains("sslrootcert") && err.contains("/nonexistent/ca.crt"),
            "{err}"
        );
        assert!(
            Policy::new(Some("disable"), None)
                .unwrap()
                .client_config()
                .unwrap()
                .is_none()
        );
    }
}
