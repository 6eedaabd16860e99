//! TLS on the gRPC port (rustls, TLS 1.2 and 1.3), with certificates that rotate without
//! a restart: cert-manager and SPIRE rewrite the files in place, and the server reloads
//! them on SIGHUP and when their content changes (checked every 10 seconds).
//!
//! Each new handshake uses the configuration loaded at that moment; established
//! connections keep theirs. A replacement that cannot be read, or whose key does not
//! match its certificate, is refused with an ERROR line naming the file, and the
//! current certificate stays in use.
use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use sha2::{Digest, Sha256};
use tokio::{signal::unix::SignalKind, sync::watch};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        server::WebPkiClientVerifier,
        version::{TLS12, TLS13},
    },
};

use auth_tls::{
    pem::{read_certs, read_key, read_roots},
    provider,
};

use super::TlsSettings;
use crate::{
    error::{Error, Result},
    metrics::Metrics,
};

/// Builds the server configuration from the files.
fn build(files: &TlsSettings) -> std::result::Result<ServerConfig, String> {
    let certs = read_certs(&files.cert).map_err(|e| e.to_string())?;
    let key = read_key(&files.key).map_err(|e| e.to_string())?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots(ca).map_err(|e| e.to_string())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{} does not go with {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A hash of the files' contents, to notice a rewrite.
fn fingerprint(files: &TlsSettings) -> Option<[u8; 32]> {
    let mut hash = Sha256::new();
    for path in [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        hash.update(std::fs::read(path).ok()?);
        hash.update([0]);
    }
    Some(hash.finalize().into())
}

/// The current server configuration, and where it comes from.
pub(crate) struct Reloader {
    files: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    loaded: RwLock<Option<[u8; 32]>>,
    /// Counts each reload and refusal (`auth_tls_reloads_total`).
    metrics: Arc<Metrics>,
}

impl Reloader {
    /// Loads the files. At startup a problem is fatal, with the file named.
    pub(crate) fn load(files: &TlsSettings, metrics: Arc<Metrics>) -> Result<Reloader> {
        let config = build(files).map_err(|e| Error::Config(format!("TLS: {e}")))?;
        Ok(Reloader {
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            loaded: RwLock::new(fingerprint(files)),
            metrics,
        })
    }

    /// What new handshakes use.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let config = match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        TlsAcceptor::from(config)
    }

    /// Reads the files again. On success new handshakes use them; on failure the
    /// current configuration stays, and an ERROR line names the file. Returns whether
    /// it changed.
    pub(crate) fn reload(&self) -> bool {
        match build(&self.files) {
            Ok(config) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(config);
                }
                if let Ok(mut loaded) = self.loaded.write() {
                    *loaded = fingerprint(&self.files);
                }
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                self.metrics.tls_reload(true);
                true
            }
            Err(error) => {
                tracing::error!(%error, "TLS certificate not reloaded: keeping the current one");
                self.metrics.tls_reload(false);
                false
            }
        }
    }

    /// Whether the files' content differs from what was last loaded (or last tried).
    fn changed(&self) -> bool {
        let now = fingerprint(&self.files);
        let seen = self.loaded.read().ok().and_then(|l| *l);
        if now.is_some() && now != seen {
            // Remembered even if the reload fails, so a bad file is reported once, not
            // every poll; the next rewrite is tried again.
            if let Ok(mut loaded) = self.loaded.write() {
                *loaded = now;
            }
            return true;
        }
        false
    }

    /// Reloads on SIGHUP and when the files change (looked at every `every`), until
    /// `stop` changes.
    pub(crate) fn watch(
        self: Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut hangup = tokio::signal::unix::signal(SignalKind::hangup()).ok();
            let mut poll = tokio::time::interval(every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                let sighup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sighup => {
                        tracing::info!("SIGHUP: reloading the TLS certificate");
                        self.changed();
                        self.reload();
                    }
                    _ = poll.tick() => {
                        if self.changed() {
                            self.reload();
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        })
    }
}
