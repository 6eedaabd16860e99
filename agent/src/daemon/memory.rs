//! What the renewal loop remembers about what it has already seen and said: the token
//! that was rejected, the token whose identity was logged, and the one-time notices.
//! Pure decisions, so each rule is unit-tested here rather than through the daemon.
use std::time::SystemTime;

use crate::{error::RejectReason, schedule, token::Token};

/// The token that was rejected (`None`: there was none), so that a change is noticed.
#[derive(Debug)]
struct Rejected {
    reason: RejectReason,
    token: Option<Token>,
}

/// The daemon's memory. Every method is a decision the loop acts on.
#[derive(Debug, Default)]
pub(super) struct Memory {
    rejected: Option<Rejected>,
    /// Why the token was last rejected, when a different token has since met only
    /// outages: "token accepted again" still names it once one is accepted.
    recovering_from: Option<RejectReason>,
    /// The token whose identity was last looked up and logged.
    identified: Option<Token>,
    said_never_expires: bool,
    /// The expiry last warned about as unrenewable, and whether the final warning is done.
    warned_unrenewable: Option<(SystemTime, bool)>,
}

impl Memory {
    /// `token` (`None`: there was none) was rejected for `reason`.
    pub(super) fn rejected(&mut self, reason: RejectReason, token: Option<Token>) {
        self.recovering_from = None;
        self.rejected = Some(Rejected { reason, token });
    }

    /// A renewal with `token` failed for a reason that is not a login problem. Returns
    /// whether the agent is still rejected: only when this is the token that was. A
    /// different token (a new login, a rotated Secret) that meets an outage is presumed
    /// good, and the rejection it replaces is remembered for the recovery line.
    pub(super) fn failed(&mut self, token: &Token) -> bool {
        let still_rejected = self
            .rejected
            .as_ref()
            .is_some_and(|r| r.token.as_ref() == Some(token));
        if !still_rejected && let Some(previous) = self.rejected.take() {
            self.recovering_from = Some(previous.reason);
        }
        still_rejected
    }

    /// A renewal succeeded: the rejection it recovers from, if any, to say so once.
    pub(super) fn accepted(&mut self) -> Option<RejectReason> {
        let recovered = self.rejected.take().map(|r| r.reason);
        recovered.or(self.recovering_from.take())
    }

    /// While a token is rejected: whether `token`, just read from the source, is a
    /// different one worth retrying at once.
    pub(super) fn is_replacement(&self, token: &Token) -> bool {
        self.rejected
            .as_ref()
            .is_some_and(|r| r.token.as_ref() != Some(token))
    }

    /// Whether the token source is being watched for a replacement (a token is rejected).
    pub(super) fn is_rejected(&self) -> bool {
        self.rejected.is_some()
    }

    /// Whether `token`'s identity still has to be looked up and logged.
    pub(super) fn needs_identity(&self, token: &Token) -> bool {
        self.identified.as_ref() != Some(token)
    }

    /// `token`'s identity was looked up and logged.
    pub(super) fn identified(&mut self, token: &Token) {
        self.identified = Some(token.clone());
    }

    /// Whether to say that the token never expires: the first time only.
    pub(super) fn first_never_expires(&mut self) -> bool {
        !std::mem::replace(&mut self.said_never_expires, true)
    }

    /// Whether to warn that the token expiring at `expires_at` cannot be renewed: when
    /// first seen, and once more at the final check ([`schedule::FINAL_NOTICE`] before
    /// expiry), while the token still works.
    pub(super) fn should_warn_unrenewable(
        &mut self,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> bool {
        let in_final_notice = expires_at
            .duration_since(now)
            .map_or(true, |left| left <= schedule::FINAL_NOTICE);
        let due = match self.warned_unrenewable {
            Some((at, final_done)) if at == expires_at => in_final_notice && !final_done,
            _ => true,
        };
        if due {
            self.warned_unrenewable = Some((expires_at, in_final_notice));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use auth_api::{ErrorReason, token::generate};

    use super::*;

    fn token() -> Token {
        Token::parse(&generate(&Default::default()).unwrap()).unwrap()
    }

    const REVOKED: RejectReason = RejectReason::Known(ErrorReason::TokenRevoked);

    #[test]
    fn the_rejected_token_stays_rejected_through_an_outage() {
        let (old, new) = (token(), token());
        let mut memory = Memory::default();
        memory.rejected(REVOKED, Some(old.clone()));
        assert!(memory.is_rejected());
        assert!(
            memory.failed(&old),
            "the same token is still the rejected one"
        );
        assert!(!memory.is_replacement(&old));
        assert!(memory.is_replacement(&new));
        assert_eq!(memory.accepted(), Some(REVOKED));
        assert_eq!(memory.accepted(), None, "the recovery is said once");
    }

    #[test]
    fn a_new_token_meeting_an_outage_still_names_the_old_rejection_when_accepted() {
        let (old, new) = (token(), token());
        let mut memory = Memory::default();
        memory.rejected(REVOKED, Some(old));
        assert!(!memory.failed(&new), "a new token is presumed good");
        assert!(!memory.is_rejected());
        assert_eq!(memory.accepted(), Some(REVOKED));
        memory.rejected(REVOKED, None);
        assert!(!memory.failed(&token()));
        memory.rejected(REVOKED, None);
        assert_eq!(memory.accepted(), Some(REVOKED));
    }

    #[test]
    fn identity_is_logged_once_per_token() {
        let (a, b) = (token(), token());
        let mut memory = Memory::default();
        assert!(memory.needs_identity(&a));
        memory.identified(&a);
        assert!(!memory.needs_identity(&a));
        assert!(memory.needs_identity(&b));
    }

    #[test]
    fn never_expires_is_said_once() {
        let mut memory = Memory::default();
        assert!(memory.first_never_expires());
        assert!(!memory.first_never_expires());
    }

    #[test]
    fn unrenewable_is_warned_when_seen_and_once_more_in_the_final_notice() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let expires = now + Duration::from_secs(10 * 86400);
        let mut memory = Memory::default();
        assert!(memory.should_warn_unrenewable(expires, now));
        assert!(!memory.should_warn_unrenewable(expires, now + Duration::from_secs(3600)));
        let final_check = expires - schedule::FINAL_NOTICE;
        assert!(memory.should_warn_unrenewable(expires, final_check));
        assert!(!memory.should_warn_unrenewable(expires, final_check));
        // Another expiry (a new token) starts over.
        let other = expires + Duration::from_secs(86400);
        assert!(memory.should_warn_unrenewable(other, now));
        // First seen inside the final notice: one warning, not two.
        let mut late = Memory::default();
        assert!(late.should_warn_unrenewable(expires, final_check));
        assert!(!late.should_warn_unrenewable(expires, final_check));
    }
}
