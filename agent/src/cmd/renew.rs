//! `auth-agent renew`: one renewal now, printed, and recorded for `status` (for cron and
//! for people who want to see it happen).
use std::{fmt, time::SystemTime};

use tracing::warn;

use super::Context;
use crate::{
    client::RenewOutcome,
    clock::Clock,
    error::AgentError,
    state::{self, State},
    timefmt,
};

/// What `renew` did.
#[derive(Debug)]
pub struct RenewReport {
    /// Its answer.
    pub(crate) outcome: RenewOutcome,
    /// When it answered.
    pub(crate) now: SystemTime,
}

impl fmt::Display for RenewReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = |at: SystemTime| {
            format!(
                "{} ({})",
                timefmt::rfc3339(at),
                timefmt::relative(at, self.now)
            )
        };
        match (self.outcome.expires_at, self.outcome.renewed) {
            (None, _) => write!(f, "the token never expires: nothing to renew"),
            (Some(at), true) => write!(f, "renewed: the token now expires at {}", when(at)),
            (Some(at), false) => write!(f, "not renewed: the token is valid until {}", when(at)),
        }?;
        match (self.outcome.expires_at, self.outcome.next_renewal_at) {
            (Some(_), Some(next)) => write!(f, "\nnext renewal possible from {}", when(next)),
            (Some(_), None) => write!(
                f,
                "\nit has reached its maximum lifetime and cannot be renewed again: create a new \
                 token and run `auth-agent login` before it expires"
            ),
            (None, _) => Ok(()),
        }
    }
}

/// Renews once. Errors are as for [`super::status::status`].
pub async fn renew(context: &Context, clock: &dyn Clock) -> Result<RenewReport, AgentError> {
    let (_, client) = context.client().await?;
    let token = context.token_source.load().await?;
    let renewed = client.renew(&token, context.request_timeout).await;
    let outcome = AgentError::from_outcome(renewed, &context.token_source.fix())?;
    let now = clock.now();
    // The renewal happened whether or not it can be recorded; say so, but succeed.
    if let Err(err) = state::store(&context.state_file, &State::after(now, &outcome)).await {
        warn!("cannot record the renewal for `auth-agent status`: {err}");
    }
    Ok(RenewReport { outcome, now })
}
