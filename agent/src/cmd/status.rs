//! `auth-agent status`: who the token belongs to, when it expires, and when it was last
//! renewed. Read-only: it looks the token up (`LookupCurrentToken`) but never renews it.
//! As text for people, or as one JSON object for scripts ([`StatusJson`]).
use std::{fmt, time::SystemTime};

use serde::Serialize;

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
    pub(crate) server: ServerUrl,
    /// Where the token came from.
    pub(crate) source: TokenSource,
    /// What the server says about the token.
    pub(crate) identity: Identity,
    /// When the report was made.
    pub(crate) now: SystemTime,
    /// The last recorded renewal, if any.
    pub(crate) last_renewal: Option<State>,
    /// Why the state file could not be read, if it could not.
    pub(crate) state_problem: Option<String>,
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

/// What `status --output json` prints, one object on one line: never the token. For a
/// token that is rejected (exit 3) or a server that cannot be reached (exit 1), `state`
/// says which, `last_error_reason` why, and what only the server knows is `null`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct StatusJson {
    /// `active` (the server accepts the token), `rejected` or `unreachable`.
    pub(crate) state: &'static str,
    /// The server asked; `null` when none is known.
    pub(crate) server: Option<String>,
    /// Where the token came from, e.g. `config file /home/u/.config/auth-agent/config`.
    pub(crate) token_source: String,
    /// The user the token belongs to.
    pub(crate) user: Option<String>,
    /// The token's name.
    pub(crate) token_name: Option<String>,
    /// The token's id (safe to show).
    pub(crate) token_id: Option<String>,
    /// The scopes granted to the token.
    pub(crate) scopes: Option<Vec<String>>,
    /// RFC 3339, UTC; `null` for a token that never expires, or when unknown.
    pub(crate) expires_at: Option<String>,
    /// True when the server says the token never expires.
    pub(crate) never_expires: Option<bool>,
    /// The earliest time a renewal would extend the token again, as the last recorded
    /// renewal reported it; `null` when none can, or none is recorded.
    pub(crate) next_renewal_at: Option<String>,
    /// When a renewal last succeeded (from the state file).
    pub(crate) last_renewal_at: Option<String>,
    /// Whether that renewal extended the expiry.
    pub(crate) last_renewal_extended: Option<bool>,
    /// Why the state file could not be read, if it could not.
    pub(crate) state_file_problem: Option<String>,
    /// The ErrorInfo reason of a rejection (`TOKEN_REVOKED`, ...) or the gRPC code of a
    /// failure to reach the server (`UNAVAILABLE`, `DEADLINE_EXCEEDED`); `null` when
    /// the lookup succeeded.
    pub(crate) last_error_reason: Option<String>,
    /// The error's message, naming the fix; `null` when the lookup succeeded.
    pub(crate) last_error: Option<String>,
}

impl StatusJson {
    /// The report of a successful lookup.
    pub(crate) fn from_report(report: &StatusReport) -> StatusJson {
        let id = &report.identity;
        let last = report.last_renewal.as_ref();
        StatusJson {
            state: "active",
            server: Some(report.server.to_string()),
            token_source: report.source.to_string(),
            user: Some(id.user_id.clone()),
            token_name: Some(id.name.clone()),
            token_id: Some(id.token_id.clone()),
            scopes: Some(id.scopes.clone()),
            expires_at: id.expires_at.map(timefmt::rfc3339),
            never_expires: Some(id.expires_at.is_none()),
            next_renewal_at: last.and_then(|l| l.next_renewal_at).map(timefmt::rfc3339),
            last_renewal_at: last.map(|l| timefmt::rfc3339(l.last_renewal)),
            last_renewal_extended: last.map(|l| l.extended),
            state_file_problem: report.state_problem.clone(),
            last_error_reason: None,
            last_error: None,
        }
    }

    /// What is known when the lookup failed with `err`; `None` for a configuration or
    /// local file error (exit 2), which is a usage problem, not a status.
    pub(crate) async fn from_error(context: &Context, err: &AgentError) -> Option<StatusJson> {
        let (state, reason) = match err {
            AgentError::Reauthenticate { reason, .. } => ("rejected", reason.to_string()),
            AgentError::RetryLater { code, .. } => ("unreachable", (*code).to_owned()),
            AgentError::FixConfig(_) | AgentError::LocalFile { .. } => return None,
        };
        let (last, state_problem) = match state::load(&context.state_file).await {
            Ok(last) => (last, None),
            Err(problem) => (None, Some(problem.to_string())),
        };
        Some(StatusJson {
            state,
            server: context.server().await.ok().map(|s| s.to_string()),
            token_source: context.token_source.to_string(),
            user: None,
            token_name: None,
            token_id: None,
            scopes: None,
            expires_at: None,
            never_expires: None,
            next_renewal_at: last
                .as_ref()
                .and_then(|l| l.next_renewal_at)
                .map(timefmt::rfc3339),
            last_renewal_at: last.as_ref().map(|l| timefmt::rfc3339(l.last_renewal)),
            last_renewal_extended: last.as_ref().map(|l| l.extended),
            state_file_problem: state_problem,
            last_error_reason: Some(reason),
            last_error: Some(err.to_string()),
        })
    }
}

impl fmt::Display for StatusJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}
