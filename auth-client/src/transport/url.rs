//! The server URL, checked once: `http://host:port` or `https://host:port`.
use std::{fmt, str::FromStr};

use tonic::transport::Uri;

/// A URL that cannot name the service; says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server URL {url:?}: {why}")]
pub struct InvalidUrl {
    /// What was given.
    pub url: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// A validated server URL: `http://host:port` or `https://host:port`, normalised (no
/// path, no trailing slash). The host may be a DNS name with several addresses: the
/// client balances over all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl FromStr for ServerUrl {
    type Err = InvalidUrl;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidUrl {
            url: s.to_owned(),
            why,
        };
        let uri: Uri = s.trim().parse().map_err(|_| bad("not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme.to_owned(),
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a server URL has no path or query"));
        }
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

    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }

    /// `host:port` (the port defaulted to 443 or 80 by scheme when the URL has none).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host_bracketed(), self.port())
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        let rest = self.0.split_once("://").map_or("", |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        if let Some(v6) = rest.strip_prefix('[') {
            return v6.split_once(']').map_or(v6, |(h, _)| h);
        }
        rest.rsplit_once(':').map_or(rest, |(h, _)| h)
    }

    fn host_bracketed(&self) -> String {
        let host = self.host();
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        }
    }

    /// The port (443 for https and 80 for http when the URL has none).
    pub fn port(&self) -> u16 {
        let rest = self.0.split_once("://").map_or("", |(_, r)| r);
        let after_host = match rest.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map_or("", |(_, r)| r),
            None => rest.rsplit_once(':').map_or("", |(_, p)| p),
        };
        let port = after_host.trim_start_matches(':');
        port.parse()
            .unwrap_or(if self.is_https() { 443 } else { 80 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_http_and_https_and_normalises() {
        let url: ServerUrl = "http://127.0.0.1:50051/".parse().unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:50051");
        assert!(!url.is_https());
        let tls: ServerUrl = "https://auth.example.com".parse().unwrap();
        assert!(tls.is_https());
    }

    #[test]
    fn host_and_port() {
        let url: ServerUrl = "https://auth.example.com".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("auth.example.com", 443));
        let url: ServerUrl = "http://127.0.0.1:50051".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("127.0.0.1", 50051));
        assert_eq!(url.authority(), "127.0.0.1:50051");
        let url: ServerUrl = "https://[::1]:8443".parse().unwrap();
        assert_eq!((url.host(), url.port()), ("::1", 8443));
        assert_eq!(url.authority(), "[::1]:8443");
    }

    #[test]
    fn refuses_what_cannot_be_a_server_and_says_why() {
        for (bad, why) in [
            ("127.0.0.1:50051", "the scheme must be http:// or https://"),
            ("ftp://h:1", "the scheme must be http:// or https://"),
            ("http://h:1/v1", "a server URL has no path or query"),
            ("http://h:1?x=1", "a server URL has no path or query"),
            ("not a url", "not a URL"),
        ] {
            assert_eq!(bad.parse::<ServerUrl>().unwrap_err().why, why, "{bad}");
        }
    }
}
