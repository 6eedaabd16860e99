//! The server URL: what `--server` and the config file hold, checked once.
use std::{fmt, str::FromStr};

use crate::error::AgentError;

/// Environment variable naming the server (the `--server` flag's variable).
pub(crate) const SERVER_ENV: &str = "AUTH_AGENT_SERVER";

/// A validated server URL: `http://host:port` or `https://host:port`, normalised (no
/// path, no trailing slash). The rules are auth-client's; the error names the flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(auth_client::ServerUrl);

impl FromStr for ServerUrl {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse()
            .map(ServerUrl)
            .map_err(|err: auth_client::transport::InvalidUrl| {
                AgentError::FixConfig(format!(
                    "{err}; pass --server http://HOST:PORT or set {SERVER_ENV}"
                ))
            })
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ServerUrl {
    /// The URL as auth-client takes it.
    pub(crate) fn url(&self) -> &auth_client::ServerUrl {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_and_normalises() {
        let url: ServerUrl = "http://127.0.0.1:50051/".parse().unwrap();
        assert_eq!(url.to_string(), "http://127.0.0.1:50051");
        assert!(!url.url().is_https());
        let tls: ServerUrl = "https://auth.example.com".parse().unwrap();
        assert!(tls.url().is_https());
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
}
