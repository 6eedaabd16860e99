//! `auth-agent logout`: revoke the token on the server (`RevokeCurrentToken`), then remove
//! it from the config file.
use std::{fmt, path::PathBuf, time::SystemTime};

use super::Context;
use crate::{
    config::{self, ConfigFile},
    error::{AgentError, RejectReason},
    source::{TOKEN_ENV, TokenSource},
    timefmt,
};

/// What `logout` did.
#[derive(Debug)]
pub struct LogoutReport {
    /// When the server revoked the token; `None` when it was already unusable.
    pub(crate) revoked_at: Option<SystemTime>,
    /// Why the server refused it, when it was already unusable (expired, revoked...).
    pub(crate) already_unusable: Option<RejectReason>,
    /// The config file the token was removed from; `None` when it came from elsewhere.
    pub(crate) removed_from: Option<PathBuf>,
    /// Where the token came from.
    pub(crate) source: TokenSource,
}

impl fmt::Display for LogoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.revoked_at, &self.already_unusable) {
            (Some(at), _) => writeln!(f, "token revoked at {}", timefmt::rfc3339(at))?,
            (None, Some(reason)) => {
                writeln!(f, "the server already refuses this token ({reason})")?
            }
            (None, None) => writeln!(f, "token revoked")?,
        }
        match (&self.removed_from, &self.source) {
            (Some(path), _) => write!(f, "removed from {}", path.display()),
            (None, TokenSource::File(path)) => write!(
                f,
                "the token is still in {}: delete it there",
                path.display()
            ),
            (None, _) => write!(f, "unset {TOKEN_ENV}: it still holds the revoked token"),
        }
    }
}

/// Revokes the token, then forgets it. When the server cannot be reached the token is
/// kept (an error, exit 1), so that logging out can be retried rather than leaving a live
/// token behind that nobody holds; a token the server already refuses is simply forgotten.
pub async fn logout(context: &Context) -> Result<LogoutReport, AgentError> {
    let (_, client) = context.client().await?;
    let token = context.token_source.load().await?;
    let revoked = client.revoke(&token, context.request_timeout).await;
    let (revoked_at, already_unusable) =
        match AgentError::from_outcome(revoked, &context.token_source.fix()) {
            Ok(at) => (at, None),
            Err(AgentError::Reauthenticate { reason, .. }) => (None, Some(reason)),
            Err(other) => return Err(other),
        };
    let removed_from = match &context.token_source {
        TokenSource::Config { path, .. } => {
            // Everything but the token stays: the next `login` reaches the same server.
            let kept = config::load(path).await.ok().flatten().unwrap_or_default();
            config::store(
                path,
                &ConfigFile {
                    token: None,
                    ..kept
                },
            )
            .await?;
            // The recorded renewal belongs to the revoked token.
            let _ = tokio::fs::remove_file(&context.state_file).await;
            Some(path.clone())
        }
        TokenSource::File(_) | TokenSource::Env(_) => None,
    };
    Ok(LogoutReport {
        revoked_at,
        already_unusable,
        removed_from,
        source: context.token_source.clone(),
    })
}
