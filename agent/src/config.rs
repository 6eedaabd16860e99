//! The config file written by `auth-agent login`: where it lives (XDG), what it holds
//! (server, token, and the TLS files to reach the server), and how it is read and
//! replaced.
use std::{
    ffi::OsString,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use crate::{client::TlsFiles, error::AgentError, files, server_url::ServerUrl, token::Token};

/// Environment variable naming the config file (the `--config` flag's variable).
pub const CONFIG_ENV: &str = "AUTH_AGENT_CONFIG";

/// What the config file holds. `Debug` is safe to log: [`Token`] prints redacted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// The server URL `login` checked the token against.
    pub server: Option<String>,
    /// The token; `None` after `logout`.
    pub token: Option<Token>,
    /// The CA and client certificate files `login` used for an https server.
    pub tls: TlsFiles,
}

impl ConfigFile {
    /// Parses the file's text; a `token` that is not a token is an error.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        let mut map = files::parse(text)?;
        let token = match map.remove("token") {
            Some(raw) => {
                Some(Token::parse(&raw).map_err(|why| format!("`token` is not a token ({why})"))?)
            }
            None => None,
        };
        Ok(ConfigFile {
            server: map.remove("server"),
            token,
            tls: TlsFiles {
                ca_file: map.remove("ca_file").map(PathBuf::from),
                client_cert: map.remove("client_cert").map(PathBuf::from),
                client_key: map.remove("client_key").map(PathBuf::from),
            },
        })
    }

    /// The file's text. This is one of the two places the token is exposed (the other is
    /// the `authorization` header), and the result goes straight to a 0600 file.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# auth-agent configuration, written by `auth-agent login`.\n\
             # It holds a secret: keep it readable only by its owner (mode 0600).\n",
        );
        if let Some(server) = &self.server {
            out.push_str(&files::line("server", server));
        }
        if let Some(token) = &self.token {
            out.push_str(&files::line("token", token.expose()));
        }
        for (key, path) in [
            ("ca_file", &self.tls.ca_file),
            ("client_cert", &self.tls.client_cert),
            ("client_key", &self.tls.client_key),
        ] {
            if let Some(path) = path {
                out.push_str(&files::line(key, &path.to_string_lossy()));
            }
        }
        let _ = writeln!(out);
        out
    }
}

/// The default config file: `$XDG_CONFIG_HOME/auth-agent/config`, else
/// `~/.config/auth-agent/config`.
pub fn default_path() -> Result<PathBuf, AgentError> {
    default_path_from(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    )
    .ok_or_else(|| {
        AgentError::FixConfig(format!(
            "cannot find a config directory: pass --config PATH, or set {CONFIG_ENV}, \
             XDG_CONFIG_HOME or HOME"
        ))
    })
}

/// [`default_path`] from explicit variables. The XDG spec says a relative
/// `XDG_CONFIG_HOME` is invalid and must be ignored, and so must an empty one.
pub fn default_path_from(
    xdg_config_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let base = match xdg_config_home.map(PathBuf::from) {
        Some(xdg) if xdg.is_absolute() => xdg,
        _ => PathBuf::from(home.filter(|h| !h.is_empty())?).join(".config"),
    };
    Some(base.join("auth-agent").join("config"))
}

/// Reads the config file; `None` when there is none yet.
pub async fn load(path: &Path) -> Result<Option<ConfigFile>, AgentError> {
    let fix = "fix it, or run `auth-agent login` to rewrite it";
    files::load(path, ConfigFile::parse)
        .await
        .map_err(|err| AgentError::file(err, "read", path, fix))
}

/// The server `login` saved in the config file at `path`, with the TLS files it used:
/// `None` when there is no file yet or no server in it. A file that cannot be read or parsed, or a saved URL that is
/// not a server, is an error naming the file, never mistaken for "nothing saved".
pub async fn saved_server(path: &Path) -> Result<Option<(ServerUrl, TlsFiles)>, AgentError> {
    let Some(config) = load(path).await? else {
        return Ok(None);
    };
    let Some(server) = config.server else {
        return Ok(None);
    };
    let server = server
        .parse()
        .map_err(|err| AgentError::FixConfig(format!("{} (saved in {})", err, path.display())))?;
    Ok(Some((server, config.tls)))
}

/// Replaces the config file atomically, mode 0600 (see [`files::write_private`]).
pub async fn store(path: &Path, config: &ConfigFile) -> Result<(), AgentError> {
    files::store(path, config.render())
        .await
        .map_err(|err| AgentError::file(err, "write", path, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_follows_xdg() {
        let path = default_path_from(Some("/x/cfg".into()), Some("/home/u".into()));
        assert_eq!(path, Some(PathBuf::from("/x/cfg/auth-agent/config")));
        for xdg in [None, Some("".into()), Some("relative".into())] {
            let path = default_path_from(xdg, Some("/home/u".into()));
            assert_eq!(
                path,
                Some(PathBuf::from("/home/u/.config/auth-agent/config"))
            );
        }
        assert_eq!(default_path_from(None, None), None);
    }

    #[test]
    fn render_and_parse_round_trip() {
        let token = auth_api::token::generate(&Default::default()).unwrap();
        let config = ConfigFile {
            server: Some("https://auth.example:50051".into()),
            token: Some(Token::parse(&token).unwrap()),
            tls: TlsFiles {
                ca_file: Some("/etc/auth/ca.pem".into()),
                client_cert: Some("/etc/auth/me.pem".into()),
                client_key: Some("/etc/auth/me.key".into()),
            },
        };
        let text = config.render();
        assert_eq!(ConfigFile::parse(&text).unwrap(), config);
        assert!(!format!("{config:?}").contains(&token));
    }

    #[test]
    fn a_malformed_token_is_an_error_that_does_not_echo_it() {
        let err = ConfigFile::parse("token = \"secret-password\"\n").unwrap_err();
        assert!(!err.contains("secret-password"), "{err}");
    }
}
