//! One expiry notice as an HTTP POST: the JSON body, GitHub's style of signature
//! (`X-Auth-Signature: sha256=<hex HMAC-SHA256 of the raw body>`), and the client that
//! sends it (hyper-util's, over rustls with the system's roots for `https://`).
//!
//! The webhook URL is treated as a secret (chat webhooks carry their key in the path):
//! logs and the audit trail name only its scheme and host.
use std::{fmt, time::Duration};

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use sha2::Sha256;
use tokio_rustls::rustls::ClientConfig;

use super::NotifySettings;
use crate::{
    db::notices::Notice,
    error::{Error, Result},
};

/// The event name, in the body and in `X-Auth-Event`.
pub(crate) const EVENT: &str = "token.expiring";

/// The signing key (`--notify-secret-file`). Its Debug output never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(key: Vec<u8>) -> Secret {
        Secret(key)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `secret`.
pub(crate) fn signature(secret: &Secret, body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret.0) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// A threshold as people write it: `7d`, `1d`, `12h`, `30m`, `45s`.
pub(crate) fn fmt_threshold(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86400) => format!("{}d", s / 86400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// The URL without its path and query, which may hold the receiver's key.
pub(crate) fn describe(uri: &http::Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("?", |a| a.as_str())
    )
}

/// The JSON body of a notice, sent at `sent_at`.
pub(crate) fn body(notice: &Notice, sent_at: chrono::DateTime<Utc>) -> Vec<u8> {
    let threshold = Duration::from_secs(u64::try_from(notice.threshold_secs).unwrap_or(0));
    serde_json::json!({
        "event": EVENT,
        "token_id": notice.token_id.to_string(),
        "user_id": notice.user_id,
        "name": notice.name,
        "expires_at": notice.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "threshold": fmt_threshold(threshold),
        "threshold_seconds": notice.threshold_secs,
        "sent_at": sent_at.to_rfc3339_opts(SecondsFormat::Millis, true),
    })
    .to_string()
    .into_bytes()
}

/// Sends notices to the one webhook.
pub(crate) struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: http::Uri,
    secret: Option<Secret>,
    timeout: Duration,
    /// `notify:<scheme>://<host>`: the audit trail's caller.
    caller: String,
}

impl Client {
    pub(crate) fn new(settings: &NotifySettings) -> Result<Client> {
        let roots = auth_tls::roots::system_roots()
            .map_err(|e| Error::Config(format!("--notify-webhook: no TLS roots: {e}")))?;
        let tls = ClientConfig::builder_with_provider(auth_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("--notify-webhook: TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Client {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            caller: format!("notify:{}", describe(&settings.webhook)),
            uri: settings.webhook.clone(),
            secret: settings.secret.clone(),
            timeout: settings.timeout,
        })
    }

    pub(crate) fn caller(&self) -> &str {
        &self.caller
    }

    /// One attempt: `Ok` on a 2xx answer within the timeout; otherwise what went wrong,
    /// for the log (never the URL).
    pub(crate) async fn send(&self, notice: &Notice) -> std::result::Result<(), String> {
        let body = body(notice, Utc::now());
        let mut request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("auth-service/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-auth-event", EVENT)
            .header("x-auth-delivery", notice.delivery_id.to_string());
        if let Some(secret) = &self.secret {
            request = request.header("x-auth-signature", signature(secret, &body));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| crate::error::chain(&e))?;
            let status = response.status();
            crate::trace::http_status(&tracing::Span::current(), status.as_u16());
            // Read (and drop) the answer, so that the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the webhook answered {status}"))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_githubs_hmac_sha256() {
        // RFC 4231 test case 2.
        let s = signature(
            &Secret::new(b"Jefe".to_vec()),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            s,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            format!("{:?}", Secret::new(b"Jefe".to_vec())),
            "Secret(<redacted>)"
        );
    }

    #[test]
    fn thresholds_read_as_written() {
        for (secs, text) in [
            (604_800, "7d"),
            (86400, "1d"),
            (43200, "12h"),
            (90, "90s"),
            (120, "2m"),
        ] {
            assert_eq!(fmt_threshold(Duration::from_secs(secs)), text);
        }
    }

    #[test]
    fn the_url_is_described_without_its_path() {
        let uri: http::Uri = "https://hooks.example.com/services/T000/B000/XXXXSECRET"
            .parse()
            .unwrap();
        assert_eq!(describe(&uri), "https://hooks.example.com");
    }
}
