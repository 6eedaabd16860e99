//! The gRPC side: the channel to the server, and one method per `auth.v1` call the
//! agent makes, each with the bearer token and its own timeout.
use std::{future::Future, time::Duration, time::SystemTime};

use auth_api::v1::{
    LookupCurrentTokenRequest, RenewCurrentTokenRequest, RevokeCurrentTokenRequest,
    auth_service_client::AuthServiceClient,
};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint},
};

use crate::{error::AgentError, server_url::ServerUrl, timefmt, token::Token};

/// How long to wait for a TCP (and later TLS) connection before calling it a failure.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PING interval, sent even while idle. The agent makes one call every few days,
/// and a connection that idle is often dead without anyone knowing (a NAT or load balancer
/// dropped it, a laptop slept): pings find out and close it, so that the next renewal
/// dials afresh instead of being written into a dead socket and hanging until its timeout.
/// A minute is far above what servers treat as abusive (hyper enforces no minimum).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// How long a PING may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP keepalive idle time: the kernel's own check, which also covers the connection
/// while HTTP/2 is still being set up.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The transport settings of the channel to the server. The defaults are the
/// constants above; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval (see [`HTTP2_KEEPALIVE_INTERVAL`]).
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered (see [`HTTP2_KEEPALIVE_TIMEOUT`]).
    pub keepalive_timeout: Duration,
    /// TCP keepalive idle time (see [`TCP_KEEPALIVE`]).
    pub tcp_keepalive: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            connect_timeout: CONNECT_TIMEOUT,
            keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
            keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            tcp_keepalive: TCP_KEEPALIVE,
        }
    }
}

/// A channel to `server` that connects on first use, and reconnects after a failure, so
/// that a server that is down at start does not stop the agent from starting.
pub fn connect_lazy(server: &ServerUrl, transport: &Transport) -> Result<Channel, AgentError> {
    if server.is_https() {
        return Err(AgentError::FixConfig(format!(
            "{server}: this build of auth-agent has no TLS support yet; use an http:// URL"
        )));
    }
    let endpoint = Endpoint::from_shared(server.as_str().to_owned())
        .map_err(|err| AgentError::FixConfig(format!("invalid server URL {server}: {err}")))?
        .connect_timeout(transport.connect_timeout)
        .http2_keep_alive_interval(transport.keepalive_interval)
        .keep_alive_timeout(transport.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(transport.tcp_keepalive));
    Ok(endpoint.connect_lazy())
}

/// What `RenewCurrentToken` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewOutcome {
    /// The expiry after the call; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
    /// True only when this call extended the expiry.
    pub renewed: bool,
    /// The earliest time a renewal would extend the token again; `None` when none can.
    pub next_renewal_at: Option<SystemTime>,
}

/// What `LookupCurrentToken` answered: who the token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's stable id (safe to log).
    pub token_id: String,
    /// The user the token belongs to.
    pub user_id: String,
    /// The token's human-readable name.
    pub name: String,
    /// The scopes granted to the token.
    pub scopes: Vec<String>,
    /// The expiry; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
}

/// The `auth.v1.AuthService` calls the agent makes. Errors are raw statuses (a timeout is
/// `DEADLINE_EXCEEDED`); [`AgentError::from_status`] says what they mean.
#[derive(Debug, Clone)]
pub struct Client {
    inner: AuthServiceClient<Channel>,
}

impl Client {
    /// A client over `channel` (cheap to clone; calls share the connection).
    pub fn new(channel: Channel) -> Self {
        Client {
            inner: AuthServiceClient::new(channel),
        }
    }

    /// `RenewCurrentToken`: extends the token in place when it is due.
    pub async fn renew(
        &mut self,
        token: &Token,
        timeout: Duration,
    ) -> Result<RenewOutcome, Status> {
        let request = authorized(RenewCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.renew_current_token(request))
            .await?
            .into_inner();
        Ok(RenewOutcome {
            expires_at: time(response.expires_at)?,
            renewed: response.renewed,
            next_renewal_at: time(response.next_renewal_at)?,
        })
    }

    /// `LookupCurrentToken`: who am I.
    pub async fn lookup(&mut self, token: &Token, timeout: Duration) -> Result<Identity, Status> {
        let request = authorized(LookupCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.lookup_current_token(request))
            .await?
            .into_inner();
        Ok(Identity {
            token_id: response.token_id,
            user_id: response.user_id,
            name: response.name,
            scopes: response.scopes,
            expires_at: time(response.expires_at)?,
        })
    }

    /// `RevokeCurrentToken`: log out. Returns when the server says it was revoked.
    pub async fn revoke(
        &mut self,
        token: &Token,
        timeout: Duration,
    ) -> Result<Option<SystemTime>, Status> {
        let request = authorized(RevokeCurrentTokenRequest {}, token, timeout);
        let response = within(timeout, self.inner.revoke_current_token(request))
            .await?
            .into_inner();
        time(response.revoked_at)
    }
}

fn authorized<T>(message: T, token: &Token, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", token.bearer());
    // Tells the server the deadline (`grpc-timeout`) so it can give up when we have.
    request.set_timeout(timeout);
    request
}

/// Enforces the timeout on our side too (`grpc-timeout` only binds a server that honours
/// it), and reports every expiry the same way: tonic's own enforcement of the header
/// surfaces as `CANCELLED: Timeout expired`, which reads like someone cancelled the call.
async fn within<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = tokio::time::Instant::now();
    let expired =
        || Status::deadline_exceeded(format!("no answer within {}", timefmt::approx(timeout)));
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(expired()),
        Ok(Err(status)) if status.code() == Code::Cancelled && started.elapsed() >= timeout => {
            Err(expired())
        }
        Ok(result) => result,
    }
}

fn time(timestamp: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Status> {
    timestamp
        .map(|ts| {
            auth_api::time::from_timestamp(&ts)
                .map(SystemTime::from)
                .ok_or_else(|| Status::internal("the server sent an invalid timestamp"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn https_is_refused_until_tls_exists() {
        let url: ServerUrl = "https://auth.example.com".parse().unwrap();
        assert!(matches!(
            connect_lazy(&url, &Transport::default()),
            Err(AgentError::FixConfig(_))
        ));
    }

    #[test]
    fn invalid_timestamps_are_an_error_not_a_panic() {
        let bad = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(time(Some(bad)).unwrap_err().code(), Code::Internal);
        assert_eq!(time(None).unwrap(), None);
    }
}
