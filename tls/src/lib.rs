//! auth-tls: the TLS pieces that every end of the workspace shares, written once: the
//! gRPC port and its healthcheck, the PostgreSQL client, the webhook client and the agent.
//!
//! Modules and items, top-down (each uses only those below it):
//! - [`verify`]: the server certificate verifiers (WebPKI with or without the host name,
//!   one pinned certificate, none), whose handshake-signature checks are written once;
//! - [`problem`]: what was wrong with a server's certificate, found in an error's causes;
//! - [`roots`]: the platform's CA certificates (rustls-native-certs);
//! - [`pem`]: reading certificate chains, private keys and CA roots from PEM files, with
//!   errors that name the file;
//! - [`provider`]: the crypto provider (ring) every TLS end uses.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use rustls::crypto::{CryptoProvider, ring};

pub mod pem;
pub mod problem;
pub mod roots;
pub mod verify;

/// The crypto provider of every TLS end in the workspace (ring): one instance, shared.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(ring::default_provider()))
        .clone()
}
