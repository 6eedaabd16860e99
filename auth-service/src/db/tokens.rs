//! Token queries: rows in, domain values out. Liveness (expired, revoked) is always
//! judged against the database's clock returned by the same statement.
use std::time::{Duration, SystemTime};

use tokio_postgres::Row;

use super::{Db, sql};
use crate::{
    config::RenewalPolicy,
    error::{Error, Result},
    token::TokenDigest,
};

/// What `ValidateToken` and `LookupCurrentToken` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
}

/// The result of `RenewCurrentToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub token_id: String,
    pub expires_at: Option<SystemTime>,
    pub renewed: bool,
    pub next_renewal_at: Option<SystemTime>,
}

/// A newly stored token (the secret itself stays with the caller).
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub id: String,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
}

/// One row of `token list`.
#[derive(Debug, Clone)]
pub struct TokenListing {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    pub revoked_at: Option<SystemTime>,
    pub last_used_at: Option<SystemTime>,
    pub db_now: SystemTime,
}

/// A token is live unless revoked (reported first: it is the more specific cause) or
/// past its expiry by the database clock `now`.
pub fn check_live(
    revoked_at: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    now: SystemTime,
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
pub fn next_renewal_at(
    policy: &RenewalPolicy,
    created_at: SystemTime,
    expires_at: Option<SystemTime>,
) -> Option<SystemTime> {
    let expires_at = expires_at?;
    if let Some(cap) = policy.max_lifetime
        && expires_at >= created_at + cap
    {
        return None;
    }
    Some(
        expires_at
            .checked_sub(policy.threshold)
            .unwrap_or(SystemTime::UNIX_EPOCH),
    )
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Db {
    /// `RenewCurrentToken`: one round trip, two for the loser of a concurrent race.
    pub async fn renew(
        &self,
        digest: &TokenDigest,
        policy: &RenewalPolicy,
        caller: &str,
    ) -> Result<Renewal> {
        let cap = policy.max_lifetime.map(secs);
        let row = self
            .run(async |c| {
                let stmt = c.prepare_cached(sql::RENEW).await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                    &&digest.hash[..],
                    &secs(policy.threshold),
                    &secs(policy.extension),
                    &cap,
                    &caller,
                ];
                Ok(c.query_opt(&stmt, &params).await?)
            })
            .await?
            .ok_or(Error::TokenUnknown)?;
        let token_id: String = row.try_get(0)?;
        let mut created_at: SystemTime = row.try_get(1)?;
        let mut expires_at: Option<SystemTime> = row.try_get(2)?;
        let revoked_at: Option<SystemTime> = row.try_get(3)?;
        let renewed: bool = row.try_get(4)?;
        let lost_race: bool = row.try_get(5)?;
        let now: SystemTime = row.try_get(6)?;
        if !renewed {
            check_live(revoked_at, expires_at, now)?;
        }
        if lost_race {
            // Another caller extended the token while we waited on its row lock: our
            // snapshot holds the old expiry. Report the committed one, never a stale one.
            let row = self
                .run(async |c| {
                    let stmt = c.prepare_cached(sql::READ_BY_ID).await?;
                    Ok(c.query_one(&stmt, &[&token_id]).await?)
                })
                .await?;
            created_at = row.try_get(0)?;
            expires_at = row.try_get(1)?;
            check_live(row.try_get(2)?, expires_at, row.try_get(3)?)?;
        }
        Ok(Renewal {
            next_renewal_at: next_renewal_at(policy, created_at, expires_at),
            token_id,
            expires_at,
            renewed,
        })
    }

    /// `ValidateToken` / `LookupCurrentToken`: one round trip.
    pub async fn lookup(&self, digest: &TokenDigest) -> Result<TokenInfo> {
        let row = self
            .run(async |c| {
                let stmt = c.prepare_cached(sql::LOOKUP).await?;
                Ok(c.query_opt(&stmt, &[&&digest.hash[..]]).await?)
            })
            .await?
            .ok_or(Error::TokenUnknown)?;
        token_info(&row)
    }

    /// `RevokeCurrentToken`: revokes a live token; otherwise says why it cannot.
    pub async fn revoke_by_hash(
        &self,
        digest: &TokenDigest,
        caller: &str,
    ) -> Result<(String, SystemTime)> {
        let row = self
            .run(async |c| {
                let stmt = c.prepare_cached(sql::REVOKE_BY_HASH).await?;
                Ok(c.query_opt(&stmt, &[&&digest.hash[..], &caller]).await?)
            })
            .await?;
        match row {
            Some(row) => Ok((row.try_get(0)?, row.try_get(1)?)),
            // Unknown, expired or already revoked: the lookup returns that error.
            None => Err(match self.lookup(digest).await {
                Err(e) => e,
                Ok(_) => Error::Internal("token is live but could not be revoked".into()),
            }),
        }
    }

    /// `token revoke ID`.
    pub async fn revoke_by_id(&self, id: &str, caller: &str) -> Result<SystemTime> {
        if !is_uuid(id) {
            return Err(Error::InvalidArgument(format!(
                "{id:?} is not a token id; ids are UUIDs, as shown by `auth-service token list`"
            )));
        }
        self.run(async |c| {
            let stmt = c.prepare_cached(sql::REVOKE_BY_ID).await?;
            if let Some(row) = c.query_opt(&stmt, &[&id, &caller]).await? {
                return Ok(row.try_get(0)?);
            }
            let stmt = c.prepare_cached(sql::EXISTS_BY_ID).await?;
            match c.query_opt(&stmt, &[&id]).await? {
                None => Err(Error::NotFound(format!("no token with id {id}"))),
                Some(row) => {
                    let at: Option<SystemTime> = row.try_get(0)?;
                    Err(Error::InvalidArgument(match at {
                        Some(at) => format!(
                            "token {id} was already revoked at {}",
                            crate::error::fmt_time(at)
                        ),
                        None => format!("token {id} could not be revoked"),
                    }))
                }
            }
        })
        .await
    }

    /// Stores a new token's digest (never the secret) with its audit row.
    pub async fn create_token(
        &self,
        user: &str,
        name: &str,
        digest: &TokenDigest,
        scopes: &[String],
        lifetime: Option<Duration>,
        caller: &str,
    ) -> Result<CreatedToken> {
        let lifetime = lifetime.map(secs);
        let row = self
            .run(async |c| {
                let stmt = c.prepare_cached(sql::CREATE).await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                    &user,
                    &name,
                    &&digest.hash[..],
                    &digest.display_prefix,
                    &scopes,
                    &lifetime,
                    &caller,
                ];
                Ok(c.query_one(&stmt, &params).await?)
            })
            .await?;
        Ok(CreatedToken {
            id: row.try_get(0)?,
            created_at: row.try_get(1)?,
            expires_at: row.try_get(2)?,
        })
    }

    /// Every token (or one user's), oldest first, without secrets.
    pub async fn list(&self, user: Option<&str>) -> Result<Vec<TokenListing>> {
        let rows = self
            .run(async |c| {
                let stmt = c.prepare_cached(sql::LIST).await?;
                Ok(c.query(&stmt, &[&user]).await?)
            })
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenListing {
                    id: r.try_get(0)?,
                    user_id: r.try_get(1)?,
                    name: r.try_get(2)?,
                    display_prefix: r.try_get(3)?,
                    scopes: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                    expires_at: r.try_get(6)?,
                    revoked_at: r.try_get(7)?,
                    last_used_at: r.try_get(8)?,
                    db_now: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// Stamps `last_used_at = now()` on a batch of tokens.
    pub async fn touch(&self, ids: &[String]) -> Result<()> {
        self.run(async |c| {
            let stmt = c.prepare_cached(sql::TOUCH).await?;
            c.execute(&stmt, &[&ids]).await?;
            Ok(())
        })
        .await
    }
}

fn token_info(row: &Row) -> Result<TokenInfo> {
    let expires_at: Option<SystemTime> = row.try_get(5)?;
    check_live(row.try_get(6)?, expires_at, row.try_get(7)?)?;
    Ok(TokenInfo {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        name: row.try_get(2)?,
        scopes: row.try_get(3)?,
        expires_at,
    })
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::error::Reason;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn revoked_wins_over_expired_and_expiry_is_inclusive() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let past = now - DAY;
        assert_eq!(
            check_live(Some(past), Some(past), now)
                .unwrap_err()
                .reason(),
            Some(Reason::TokenRevoked)
        );
        assert_eq!(
            check_live(None, Some(now), now).unwrap_err().reason(),
            Some(Reason::TokenExpired)
        );
        assert!(check_live(None, Some(now + DAY), now).is_ok());
        assert!(check_live(None, None, now).is_ok());
    }

    #[test]
    fn next_renewal_is_expiry_minus_threshold_unless_capped() {
        let created = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let mut policy = RenewalPolicy::default();
        let exp = created + 90 * DAY;
        assert_eq!(
            next_renewal_at(&policy, created, Some(exp)),
            Some(exp - 7 * DAY)
        );
        assert_eq!(next_renewal_at(&policy, created, None), None);
        policy.max_lifetime = Some(90 * DAY);
        assert_eq!(next_renewal_at(&policy, created, Some(exp)), None);
        policy.max_lifetime = Some(180 * DAY);
        assert_eq!(
            next_renewal_at(&policy, created, Some(exp)),
            Some(exp - 7 * DAY)
        );
    }

    #[test]
    fn uuid_shape() {
        assert!(is_uuid("3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6c"));
        assert!(!is_uuid("3f2b6c1e-8a4d-4b3a-9c2e-1d2e3f4a5b6"));
        assert!(!is_uuid("'; DROP TABLE tokens; --'''''''''''''''"));
    }
}
