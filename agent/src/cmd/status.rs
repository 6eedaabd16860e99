//! `auth-agent status`: who the token belongs to, when it expires, and when it was last
//! renewed. Read-only: it looks the token up (`LookupCurrentToken`) but never renews it.
use std::{fmt, time::SystemTime};

use super::Context;
use crate::{
    client::Identity,
    clock::Clock,
    error::AgentError,
    server_url::ServerUrl,
    source::TokenSource,
    state::{self, State},
    timefmt,
};

/// What `status` found.
#[derive(Debug)]
pub struct StatusReport {
    /// The server asked.
    pub server: ServerUrl,
    /// Where the token came from.
    pub source: TokenSource,
    /// What the server says about the token.
    pub identity: Identity,
    /// When the report was made.
    pub now: SystemTime,
    /// The last recorded renewal, if any.
    pub last_renewal: Option<State>,
    /// Why the state file could not be read, if it could not.
    pub state_problem: Option<String>,
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.identity;
        writeln!(f, "server:        {}", self.server)?;
        writeln!(f, "token source:  {}", self.source)?;
        writeln!(f, "user:          {}", id.user_id)?;
        writeln!(f, "token:         {} (id {})", id.name, id.token_id)?;
        if !id.scopes.is_empty() {
            writeln!(f, "scopes:        {}", id.scopes.join(", "))?;
        }
        match id.expires_at {
            Some(at) => writeln!(
                f,
                "expires:       {} ({})",
                timefmt::rfc3339(at),
                timefmt::relative(at, self.now)
            )?,
            None => writeln!(f, "expires:       never")?,
        }
        match (&self.last_renewal, &self.state_problem) {
            (Some(last), _) => {
                let what = if last.extended {
                    "extended the expiry"
                } else {
                    "not due yet, unchanged"
                };
                let at = last.last_renewal;
                write!(
                    f,
                    "last renewal:  {} ({}), {what}",
                    timefmt::rfc3339(at),
                    timefmt::relative(at, self.now)
                )
            }
            (None, Some(problem)) => write!(f, "last renewal:  unknown ({problem})"),
            (None, None) => write!(f, "last renewal:  none recorded"),
        }
    }
}

/// Looks the token up. A rejected token is an [`AgentError::Reauthenticate`] (exit 3)
/// whose message names the fix; an unreachable server is [`AgentError::RetryLater`].
pub async fn status(context: &Context, clock: &dyn Clock) -> Result<StatusReport, AgentError> {
    let (server, client) = context.client().await?;
    let token = context.token_source.load().await?;
    let looked_up = client.lookup(&token, context.request_timeout).await;
    let identity = AgentError::from_outcome(looked_up, &context.token_source.fix())?;
    let (last_renewal, state_problem) = match state::load(&context.state_file).await {
        Ok(last) => (last, None),
        Err(err) => (None, Some(err.to_string())),
    };
    Ok(StatusReport {
        server,
        source: context.token_source.clone(),
        identity,
        now: clock.now(),
        last_renewal,
        state_problem,
    })
}
