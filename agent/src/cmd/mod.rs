//! The subcommands, one module each (mini-redis style), and the resolved [`Context`] they
//! share. Each command is a library function returning a report that prints itself, so
//! tests call them directly; `cli::execute` is what the binary runs.
use std::{path::PathBuf, time::Duration};

use tonic::transport::Channel;

use crate::{
    client::{self, Client, Transport},
    config,
    error::AgentError,
    server_url::{SERVER_ENV, ServerUrl},
    source::TokenSource,
};

pub mod login;
pub mod logout;
pub mod renew;
pub mod run;
pub mod status;

/// The global options, resolved: paths defaulted, server parsed, token source chosen.
#[derive(Debug, Clone)]
pub struct Context {
    /// The config file.
    pub(crate) config_path: PathBuf,
    /// True when the config path was given (so messages must name it).
    pub(crate) config_explicit: bool,
    /// The server from `--server`/`AUTH_AGENT_SERVER`; else the config file's is used.
    pub server: Option<ServerUrl>,
    /// Where the token comes from.
    pub(crate) token_source: TokenSource,
    /// The state file (last renewal).
    pub state_file: PathBuf,
    /// Timeout of each call.
    pub(crate) request_timeout: Duration,
    /// A ready channel to use instead of dialling the server (tests).
    pub(crate) channel: Option<Channel>,
    /// Transport settings of the channel to the server.
    pub(crate) transport: Transport,
}

impl Context {
    /// A context for the config file at `config_path`, with the token from that file, the
    /// state file next to it, and the default timeout.
    pub fn new(config_path: PathBuf) -> Self {
        Context {
            state_file: crate::state::default_path(&config_path),
            token_source: TokenSource::Config {
                path: config_path.clone(),
                explicit: true,
            },
            config_path,
            config_explicit: true,
            server: None,
            request_timeout: crate::daemon::DEFAULT_REQUEST_TIMEOUT,
            channel: None,
            transport: Transport::default(),
        }
    }

    /// The server: the flag (or its variable), else the one `login` saved.
    pub(crate) async fn server(&self) -> Result<ServerUrl, AgentError> {
        Ok(self.endpoint().await?.0)
    }

    /// The server and how to reach it: the flags (or their variables), and for what they
    /// leave unset, what `login` saved.
    pub(crate) async fn endpoint(&self) -> Result<(ServerUrl, Transport), AgentError> {
        // A config that cannot be read or parsed is reported as what it is: "no server
        // configured" would send the reader to fix the wrong thing. When the server is
        // given, the saved TLS files are only a fallback, and an unreadable config does
        // not stand in the way.
        let saved = match &self.server {
            Some(_) => config::saved_server(&self.config_path).await.ok().flatten(),
            None => config::saved_server(&self.config_path).await?,
        };
        let (server, saved_tls) = match (&self.server, saved) {
            (Some(server), saved) => (server.clone(), saved.map(|(_, tls)| tls)),
            (None, Some((server, tls))) => (server, Some(tls)),
            (None, None) => {
                return Err(AgentError::FixConfig(format!(
                    "no server configured: pass --server http://HOST:PORT, set {SERVER_ENV}, or \
                     run `auth-agent login --server http://HOST:PORT` (no server saved in {})",
                    self.config_path.display()
                )));
            }
        };
        let mut transport = self.transport.clone();
        if let Some(saved) = saved_tls {
            transport.tls = transport.tls.or(&saved);
        }
        Ok((server, transport))
    }

    /// The server and a client for it.
    pub(crate) async fn client(&self) -> Result<(ServerUrl, Client), AgentError> {
        let (server, transport) = self.endpoint().await?;
        let client = match &self.channel {
            Some(channel) => Client::new(channel.clone()),
            None => client::connect_lazy(&server, &transport)?,
        };
        Ok((server, client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_config(name: &str, text: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "auth-agent-cmd-{name}-{}-{}",
            std::process::id(),
            crate::schedule::random_unit().to_bits()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    #[tokio::test]
    async fn an_unparsable_config_is_reported_as_such_not_as_no_server() {
        let path = temp_config("bad", Some("server = http://unquoted:1\n"));
        let err = Context::new(path.clone()).server().await.unwrap_err();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains("line 1"),
            "{text}"
        );
        assert!(!text.contains("no server configured"), "{text}");
    }

    #[tokio::test]
    async fn a_missing_config_says_no_server_and_a_saved_one_is_used() {
        let path = temp_config("missing", None);
        let err = Context::new(path.clone()).server().await.unwrap_err();
        assert!(err.to_string().contains("no server configured"), "{err}");
        std::fs::write(&path, "server = \"http://h:1\"\n").unwrap();
        let server = Context::new(path.clone()).server().await.unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        assert_eq!(server.to_string(), "http://h:1");
    }
}
