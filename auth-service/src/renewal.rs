//! The renewal and liveness rules, as pure functions of a token's record and the times
//! the database reported.
//!
//! The database applies the same rules in `db::sql::RENEW` (a compare-and-set on the
//! threshold); these functions judge the rows it returns, always against the database's
//! own `now()`, never the local clock, so replicas with skewed clocks agree.
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::error::{Error, Result};

/// What the service knows about a token (never its secret or hash): what
/// `ValidateToken` and `LookupCurrentToken` report, and what decides whether it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: Uuid,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// `None`: the token never expires.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The record of a live token, or why there is none: unknown, revoked or expired at
/// `now` (the database's clock, or the cache's estimate of it).
pub(crate) fn judge(record: Option<&TokenRecord>, now: DateTime<Utc>) -> Result<&TokenRecord> {
    let record = record.ok_or(Error::TokenUnknown)?;
    check_live(record.revoked_at, record.expires_at, now)?;
    Ok(record)
}

/// The renewal rules of `RenewCurrentToken`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// A renew extends a token only when less than this remains.
    pub threshold: Duration,
    /// A renew sets the expiry to now plus this.
    pub extension: Duration,
    /// Renewal never moves the expiry past `created_at` plus this (Vault's max TTL).
    pub max_lifetime: Option<Duration>,
}

/// The default `--renew-threshold`.
pub(crate) const DEFAULT_THRESHOLD: Duration = Duration::from_secs(7 * 86400);
/// The default `--renew-extension`.
pub(crate) const DEFAULT_EXTENSION: Duration = Duration::from_secs(90 * 86400);

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            threshold: DEFAULT_THRESHOLD,
            extension: DEFAULT_EXTENSION,
            max_lifetime: None,
        }
    }
}

/// A configured duration as a time delta. Configuration bounds every duration far below
/// chrono's range, so the saturation is never reached in practice.
pub(crate) fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A token is live unless revoked (reported first: it is the more specific cause) or
/// past its expiry by the database clock `now`.
pub(crate) fn check_live(
    revoked_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<()> {
    if let Some(at) = revoked_at {
        return Err(Error::TokenRevoked(at));
    }
    match expires_at {
        Some(at) if at <= now => Err(Error::TokenExpired(at)),
        _ => Ok(()),
    }
}

/// The earliest time a renew would extend the token: its expiry minus the threshold;
/// none when it never expires or has reached the maximum lifetime.
pub(crate) fn next_renewal_at(
    policy: &RenewalPolicy,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let expires_at = expires_at?;
    if let Some(cap) = policy.max_lifetime
        && created_at
            .checked_add_signed(delta(cap))
            .is_some_and(|limit| expires_at >= limit)
    {
        return None;
    }
    Some(
        expires_at
            .checked_sub_signed(delta(policy.threshold))
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

#[cfg(test)]
mod tests {
    use auth_api::ErrorReason;

    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn day() -> TimeDelta {
        delta(DAY)
    }

    fn at(days: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + TimeDelta::days(days)
    }

    #[test]
    fn revoked_wins_over_expired_and_expiry_is_inclusive() {
        let now = at(1000);
        let past = now - day();
        assert_eq!(
            check_live(Some(past), Some(past), now)
                .unwrap_err()
                .reason(),
            Some(ErrorReason::TokenRevoked)
        );
        assert_eq!(
            check_live(None, Some(now), now).unwrap_err().reason(),
            Some(ErrorReason::TokenExpired)
        );
        assert!(check_live(None, Some(now + day()), now).is_ok());
        assert!(check_live(None, None, now).is_ok());
    }

    #[test]
    fn judge_names_why_a_token_is_not_live() {
        let now = at(1000);
        let live = TokenRecord {
            id: Uuid::nil(),
            user_id: "alice".into(),
            name: "n".into(),
            scopes: vec![],
            created_at: at(0),
            expires_at: Some(now + day()),
            revoked_at: None,
        };
        assert_eq!(judge(Some(&live), now).unwrap(), &live);
        assert_eq!(
            judge(None, now).unwrap_err().reason(),
            Some(ErrorReason::TokenUnknown)
        );
        assert_eq!(
            judge(Some(&live), now + day()).unwrap_err().reason(),
            Some(ErrorReason::TokenExpired)
        );
    }

    #[test]
    fn next_renewal_is_expiry_minus_threshold_unless_capped() {
        let created = at(1000);
        let mut policy = RenewalPolicy::default();
        let exp = created + day() * 90;
        assert_eq!(
            next_renewal_at(&policy, created, Some(exp)),
            Some(exp - day() * 7)
        );
        assert_eq!(next_renewal_at(&policy, created, None), None);
        policy.max_lifetime = Some(90 * DAY);
        assert_eq!(next_renewal_at(&policy, created, Some(exp)), None);
        policy.max_lifetime = Some(180 * DAY);
        assert_eq!(
            next_renewal_at(&policy, created, Some(exp)),
            Some(exp - day() * 7)
        );
    }

    #[test]
    fn extreme_values_saturate_instead_of_panicking() {
        let policy = RenewalPolicy {
            threshold: Duration::MAX,
            extension: Duration::MAX,
            max_lifetime: Some(Duration::MAX),
        };
        // A cap beyond the representable range is no cap; a threshold beyond it puts
        // the next renewal at the earliest representable time (renew now).
        let created = DateTime::<Utc>::MAX_UTC - day();
        assert_eq!(
            next_renewal_at(&policy, created, Some(DateTime::<Utc>::MAX_UTC)),
            Some(DateTime::<Utc>::MIN_UTC)
        );
    }
}
