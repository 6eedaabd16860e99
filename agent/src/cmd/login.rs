//! `auth-agent login`: check a token with the server (`LookupCurrentToken`) and only then
//! save it, with the server, in the config file (mode 0600, replaced atomically).
use std::{
    fmt,
    io::{self, BufRead, IsTerminal, Read, Write},
    path::PathBuf,
    time::SystemTime,
};

use rustix::termios;
use tracing::warn;

use super::Context;
use crate::{
    client::Identity,
    config::{self, ConfigFile},
    error::{AgentError, RejectReason},
    server_url::ServerUrl,
    source::{TOKEN_ENV, TokenSource},
    state, timefmt,
    token::Token,
};

/// The fix for a token that `login` refused: nothing was written, so only the input is wrong.
const NOT_SAVED: &str = "nothing was saved; check that the whole token was pasted \
                         (a prefix such as pat_ followed by 36 letters and digits), or create \
                         a new one";

/// What `login` did.
#[derive(Debug)]
pub struct LoginReport {
    /// The server the token was checked against, now saved.
    pub(crate) server: ServerUrl,
    /// Who the token belongs to.
    pub identity: Identity,
    /// Where it was saved.
    pub(crate) config_path: PathBuf,
    /// True when `AUTH_AGENT_TOKEN` is set and will be used instead of the saved token.
    pub(crate) env_token_overrides: bool,
}

impl fmt::Display for LoginReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.identity;
        let expiry = match id.expires_at {
            Some(at) => format!(
                "expires {} ({})",
                timefmt::rfc3339(at),
                timefmt::relative(at, SystemTime::now())
            ),
            None => "never expires".to_owned(),
        };
        writeln!(
            f,
            "logged in to {} as {}: token {:?}, {expiry}",
            self.server, id.user_id, id.name
        )?;
        write!(
            f,
            "saved to {} (readable only by you)",
            self.config_path.display()
        )?;
        if self.env_token_overrides {
            write!(
                f,
                "\nnote: {TOKEN_ENV} is set and takes precedence over the saved token; unset it"
            )?;
        }
        Ok(())
    }
}

/// Checks `token` with the server and saves it. A rejected token leaves the config file
/// exactly as it was (or absent) and the error names the server's reason.
pub async fn login(context: &Context, token: Token) -> Result<LoginReport, AgentError> {
    let (server, transport) = context.endpoint().await?;
    let client = match &context.channel {
        Some(channel) => crate::client::Client::new(channel.clone()),
        None => crate::client::connect_lazy(&server, &transport)?,
    };
    let looked_up = client.lookup(&token, context.request_timeout).await;
    let identity = AgentError::from_outcome(looked_up, NOT_SAVED).map_err(|err| match err {
        AgentError::Reauthenticate { reason, .. } => rejected(reason, None),
        other => other,
    })?;
    // Unreadable counts as different: a stale last renewal is worse than none.
    let previous = config::load(&context.config_path)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.token);
    let changed = previous.as_ref() != Some(&token);
    let config = ConfigFile {
        server: Some(server.to_string()),
        token: Some(token),
        // What reached the server, so that `run` and the other commands reach it too.
        tls: transport.tls,
    };
    config::store(&context.config_path, &config).await?;
    // The state file describes the previous token's last renewal; `status` would show it
    // as this one's. The login itself worked, so failing to remove it is only a warning.
    if changed && let Err(err) = state::remove(&context.state_file).await {
        warn!("cannot reset the state file for the new token: {err}");
    }
    Ok(LoginReport {
        server,
        identity,
        config_path: context.config_path.clone(),
        env_token_overrides: matches!(context.token_source, TokenSource::Env(_)),
    })
}

fn rejected(reason: RejectReason, detail: Option<String>) -> AgentError {
    AgentError::Reauthenticate {
        reason,
        detail,
        fix: NOT_SAVED.to_owned(),
    }
}

/// Reads the token to log in with: from `--token-file` when given, else from stdin (with
/// a prompt and without echo when stdin is a terminal).
pub(crate) fn read_token(source: &TokenSource) -> Result<Token, AgentError> {
    let text = match source {
        TokenSource::File(path) => {
            std::fs::read_to_string(path).map_err(|source| AgentError::LocalFile {
                action: "read",
                path: path.clone(),
                source,
            })?
        }
        _ => read_stdin().map_err(|source| AgentError::LocalFile {
            action: "read",
            path: "stdin".into(),
            source,
        })?,
    };
    Token::parse(&text).map_err(|why| {
        rejected(
            RejectReason::Known(why.reason()),
            Some(format!("that is not a token: {why}")),
        )
    })
}

fn read_stdin() -> io::Result<String> {
    let stdin = io::stdin();
    let mut text = String::new();
    if !stdin.is_terminal() {
        stdin.lock().read_to_string(&mut text)?;
        return Ok(text);
    }
    let mut stderr = io::stderr();
    // `write!`, not `eprint!`: a closed stderr is an error to return, not a panic.
    write!(stderr, "Paste the token (input is hidden): ")?;
    stderr.flush()?;
    let echo_off = EchoOff::new();
    stdin.lock().read_line(&mut text)?;
    drop(echo_off);
    writeln!(stderr)?;
    Ok(text)
}

/// Turns terminal echo off on stdin until dropped, so a pasted token does not stay on
/// screen or in a terminal recording. Best effort: without it, the paste is only visible.
struct EchoOff {
    original: termios::Termios,
}

impl EchoOff {
    fn new() -> Option<EchoOff> {
        let stdin = io::stdin();
        let original = termios::tcgetattr(&stdin).ok()?;
        let mut settings = original.clone();
        settings.local_modes.remove(termios::LocalModes::ECHO);
        termios::tcsetattr(&stdin, termios::OptionalActions::Now, &settings).ok()?;
        Some(EchoOff { original })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), termios::OptionalActions::Now, &self.original);
    }
}
