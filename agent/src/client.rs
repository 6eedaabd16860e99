//! The agent's side of `auth.v1`, over auth-client: the channel, its TLS, the status
//! mapping and the retry policy are auth-client's, so they exist once in the tree. What
//! is the agent's: the per-call timeout (the preflight has its own), and the retry
//! policy it picks, which sends again only calls that never left (the daemon's own
//! schedule retries everything else, over hours, wall-clock aware).
use std::time::{Duration, SystemTime};

use auth_client::{AuthClient, ClientOptions, ConfigError, Outcome, RetryPolicy};
use tonic::transport::Channel;

pub(crate) use auth_client::{Identity, RenewOutcome};
pub use auth_client::{TlsFiles, Transport};

use crate::{error::AgentError, server_url::ServerUrl, token::Token};

/// How the agent calls: no cache (it validates nothing), and only transparent retries.
fn options(transport: &Transport) -> ClientOptions {
    ClientOptions {
        transport: transport.clone(),
        retry: RetryPolicy::transparent_only(),
        cache: None,
        ..ClientOptions::default()
    }
}

/// A client of `server` that connects on first use, and reconnects after a failure, so
/// that a server that is down at start does not stop the agent from starting. For
/// `https://` the CA and client certificate files are read again for every new
/// connection, so a rotated client certificate is used from the next reconnect on.
pub fn connect_lazy(server: &ServerUrl, transport: &Transport) -> Result<Client, AgentError> {
    AuthClient::connect_lazy(server.url(), options(transport))
        .map(|inner| Client { inner })
        .map_err(|err| AgentError::FixConfig(config_error(&err, server)))
}

/// A configuration error, with the flag or variable that fixes it.
fn config_error(err: &ConfigError, server: &ServerUrl) -> String {
    match err {
        ConfigError::MissingCaFile(ca) => format!(
            "--ca-file {} (AUTH_AGENT_CA_FILE): no such file",
            ca.display()
        ),
        ConfigError::InvalidServerName(_) => format!("invalid server name in {server}: {err}"),
        ConfigError::InvalidUrl(_) | ConfigError::Io(_) => format!("{err}"),
    }
}

/// The `auth.v1.AuthService` calls the agent makes, each with its own timeout. A call
/// answers [`Outcome`]: the token refused, or the server unable to judge it
/// ([`AgentError::from_outcome`] says what each means for the agent).
#[derive(Debug, Clone)]
pub struct Client {
    inner: AuthClient,
}

impl Client {
    /// A client over `channel` (cheap to clone; calls share the connection).
    pub(crate) fn new(channel: Channel) -> Self {
        Client {
            inner: AuthClient::with_channel(channel, options(&Transport::default())),
        }
    }

    /// The auth-client underneath, for the calls the agent itself does not make.
    pub fn auth_client(&self) -> &AuthClient {
        &self.inner
    }

    /// `RenewCurrentToken`: extends the token in place when it is due.
    pub async fn renew(&self, token: &Token, timeout: Duration) -> Outcome<RenewOutcome> {
        self.inner
            .with_deadline(timeout)
            .renew_current(token.expose())
            .await
    }

    /// `LookupCurrentToken`: who am I.
    pub async fn lookup(&self, token: &Token, timeout: Duration) -> Outcome<Identity> {
        self.inner
            .with_deadline(timeout)
            .lookup_current(token.expose())
            .await
    }

    /// `RevokeCurrentToken`: log out. Returns when the server says it was revoked.
    pub(crate) async fn revoke(
        &self,
        token: &Token,
        timeout: Duration,
    ) -> Outcome<Option<SystemTime>> {
        self.inner
            .with_deadline(timeout)
            .revoke_current(token.expose())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_ca_file_is_a_configuration_error_at_once() {
        let url: ServerUrl = "https://auth.example.com".parse().unwrap();
        let transport = Transport {
            tls: TlsFiles {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..TlsFiles::default()
            },
            ..Transport::default()
        };
        let err = connect_lazy(&url, &transport).unwrap_err();
        assert!(matches!(err, AgentError::FixConfig(_)));
        assert!(err.to_string().contains("--ca-file"), "{err}");
        assert!(connect_lazy(&url, &Transport::default()).is_ok());
    }
}
