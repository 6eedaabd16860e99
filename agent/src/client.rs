//! The gRPC side: the server URL, the channel, and one method per `auth.v1` call the
//! agent makes, each with the bearer token and its own timeout.
use std::{fmt, future::Future, str::FromStr, time::Duration, time::SystemTime};

use auth_api::v1::{
    LookupCurrentTokenRequest, RenewCurrentTokenRequest, RevokeCurrentTokenRequest,
    auth_service_client::AuthServiceClient,
};
use tonic::{
    Code, Request, Status,
    transport::{Channel, Endpoint, Uri},
};

use crate::{error::AgentError, timefmt, token::Token};

/// Environment variable naming the server (the `--server` flag's variable).
pub const SERVER_ENV: &str = "AUTH_AGENT_SERVER";

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

/// A validated server URL: `http://host:port` (or `https://`, refused until TLS exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl FromStr for ServerUrl {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            AgentError::FixConfig(format!(
                "invalid server URL {s:?}: {why}; pass --server http://HOST:PORT or set {SERVER_ENV}"
            ))
        };
        let uri: Uri = s.trim().parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("the scheme must be http:// or https://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a server URL has no path or query"));
        }
        let scheme = uri.scheme_str().unwrap_or("http");
        Ok(ServerUrl(format!("{scheme}://{authority}")))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl ServerUrl {
    /// The URL as a string, e.g. `http://127.0.0.1:50051`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A channel that connects on first use, and reconnects after a failure, so that a
    /// server that is down at start does not stop the agent from starting.
    pub fn connect_lazy(&self) -> Result<Channel, AgentError> {
        if self.0.starts_with("https://") {
            return Err(AgentError::FixConfig(format!(
                "{self}: this build of auth-agent has no TLS support yet; use an http:// URL"
            )));
        }
        Ok(self.endpoint()?.connect_lazy())
    }

    /// The endpoint with the agent's transport settings (see the constants above).
    fn endpoint(&self) -> Result<Endpoint, AgentError> {
        Ok(Endpoint::from_shared(self.0.clone())
            .map_err(|err| AgentError::FixConfig(format!("invalid server URL {self}: {err}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(TCP_KEEPALIVE)))
    }
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
            SystemTime::try_from(ts)
                .map_err(|_| Status::internal("the server sent an invalid timestamp"))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_normalises() {
        let url: ServerUrl = "http://127.0.0.1:50051/".parse().unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:50051");
        assert!("https://auth.example.com".parse::<ServerUrl>().is_ok());
    }

    #[test]
    fn rejects_what_cannot_be_a_server_and_names_the_flag() {
        for bad in [
            "127.0.0.1:50051",
            "ftp://h:1",
            "http://h:1/v1",
            "http://h:1?x=1",
            "not a url",
        ] {
            let err = bad.parse::<ServerUrl>().unwrap_err().to_string();
            assert!(err.contains("--server"), "{bad}: {err}");
        }
    }

    #[test]
    fn keepalive_detects_a_dead_connection_well_within_a_check() {
        // The endpoint's settings cannot be read back (tonic's Endpoint is opaque), so
        // this checks the values it is built from: a ping answered or failed inside the
        // default request timeout's order of magnitude, and never busier than a minute.
        let url: ServerUrl = "http://127.0.0.1:1".parse().unwrap();
        assert!(url.endpoint().is_ok());
        assert!(HTTP2_KEEPALIVE_TIMEOUT < HTTP2_KEEPALIVE_INTERVAL);
        assert!(HTTP2_KEEPALIVE_INTERVAL + HTTP2_KEEPALIVE_TIMEOUT <= Duration::from_secs(120));
        assert!(HTTP2_KEEPALIVE_INTERVAL >= Duration::from_secs(60));
        assert!(TCP_KEEPALIVE <= Duration::from_secs(120));
    }

    #[tokio::test]
    async fn https_is_refused_until_tls_exists() {
        let url: ServerUrl = "https://auth.example.com".parse().unwrap();
        assert!(matches!(url.connect_lazy(), Err(AgentError::FixConfig(_))));
    }
}
