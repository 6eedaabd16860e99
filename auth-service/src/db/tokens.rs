//! Token queries: rows in, domain values out. Liveness (expired, revoked) is always
//! judged against the database's clock returned by the same statement.
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Db, sql};
use crate::{
    error::{Error, Result, fmt_time},
    renewal::{RenewalPolicy, TokenRecord, check_live, judge, next_renewal_at},
    token::TokenDigest,
};

type Time = DateTime<Utc>;

/// What a lookup found: the token's row (`None`: no token has this hash) and the
/// database's clock when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub record: Option<TokenRecord>,
    pub db_now: Time,
}

/// The result of `RenewCurrentToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    pub(crate) token_id: Uuid,
    pub expires_at: Option<Time>,
    pub renewed: bool,
    /// A concurrent renew extended the token while this one waited for its row lock.
    pub(crate) lost_race: bool,
    pub(crate) next_renewal_at: Option<Time>,
}

/// A newly stored token (the secret itself stays with the caller).
#[derive(Debug, Clone)]
pub struct CreatedToken {
    pub id: Uuid,
    pub(crate) expires_at: Option<Time>,
}

/// One row of `token list`.
#[derive(Debug, Clone)]
pub(crate) struct TokenListing {
    pub(crate) id: Uuid,
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) display_prefix: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) created_at: Time,
    pub(crate) expires_at: Option<Time>,
    pub(crate) revoked_at: Option<Time>,
    pub(crate) last_used_at: Option<Time>,
    pub(crate) db_now: Time,
}

/// A `LOOKUP` row (its columns from `at` on): the token, if any, and `now()`.
fn lookup_from(row: &tokio_postgres::Row, at: usize) -> Result<Lookup> {
    let id: Option<Uuid> = row.try_get(at)?;
    let record = match id {
        None => None,
        Some(id) => Some(TokenRecord {
            id,
            user_id: row.try_get(at + 1)?,
            name: row.try_get(at + 2)?,
            scopes: row.try_get(at + 3)?,
            created_at: row.try_get(at + 4)?,
            expires_at: row.try_get(at + 5)?,
            revoked_at: row.try_get(at + 6)?,
        }),
    };
    Ok(Lookup {
        record,
        db_now: row.try_get(at + 7)?,
    })
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
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                    &&digest.hash[..],
                    &secs(policy.threshold),
                    &secs(policy.extension),
                    &cap,
                    &caller,
                ];
                self.query_opt(c, &sql::RENEW, &params).await
            })
            .await?
            .ok_or(Error::TokenUnknown)?;
        let token_id: Uuid = row.try_get(0)?;
        let mut created_at: Time = row.try_get(1)?;
        let mut expires_at: Option<Time> = row.try_get(2)?;
        let revoked_at: Option<Time> = row.try_get(3)?;
        let renewed: bool = row.try_get(4)?;
        let lost_race: bool = row.try_get(5)?;
        let now: Time = row.try_get(6)?;
        if !renewed {
            check_live(revoked_at, expires_at, now)?;
        }
        if lost_race {
            // Another caller extended the token while we waited on its row lock: our
            // snapshot holds the old expiry. Report the committed one, never a stale one.
            let row = self
                .run(async |c| self.query_one(c, &sql::READ_BY_ID, &[&token_id]).await)
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
            lost_race,
        })
    }

    /// `ValidateToken` / `LookupCurrentToken` on a cache miss: one round trip, whether
    /// or not the token exists, alone or batched with other lookups queued at the same
    /// time (see [`super::batch`]). Liveness is judged by the caller.
    pub async fn lookup(&self, digest: &TokenDigest) -> Result<Lookup> {
        self.batched_lookup(digest.hash).await
    }

    /// One lookup, one statement (the batcher's single path; public for the tests).
    pub async fn lookup_one(&self, hash: &[u8; 32]) -> Result<Lookup> {
        let row = self
            .read(async |c| self.read_rows(c, &sql::LOOKUP, &[&&hash[..]]).await)
            .await?;
        let row = row
            .first()
            .ok_or_else(|| Error::Internal("lookup: no row".into()))?;
        self.lookups.inc();
        lookup_from(row, 0)
    }

    /// Several lookups, one statement: each hash with what `lookup_one` would say (the
    /// batcher's batch path; public for the tests).
    pub async fn lookup_many(&self, hashes: &[[u8; 32]]) -> Result<Vec<([u8; 32], Lookup)>> {
        let mut distinct: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let rows = self
            .read(async |c| self.read_rows(c, &sql::LOOKUP_BATCH, &[&distinct]).await)
            .await?;
        self.lookups.inc_by(distinct.len() as u64);
        rows.iter()
            .map(|row| {
                let hash: &[u8] = row.try_get(0)?;
                let hash = <[u8; 32]>::try_from(hash)
                    .map_err(|_| Error::Internal("a stored hash is not 32 bytes".into()))?;
                Ok((hash, lookup_from(row, 1)?))
            })
            .collect()
    }

    /// `RevokeCurrentToken`: revokes a live token; otherwise says why it cannot.
    pub(crate) async fn revoke_by_hash(
        &self,
        digest: &TokenDigest,
        caller: &str,
    ) -> Result<(Uuid, Time)> {
        let row = self
            .run(async |c| {
                self.query_opt(c, &sql::REVOKE_BY_HASH, &[&&digest.hash[..], &caller])
                    .await
            })
            .await?;
        match row {
            Some(row) => Ok((row.try_get(0)?, row.try_get(1)?)),
            // Unknown, expired or already revoked: the lookup says which.
            None => {
                let found = self.lookup(digest).await?;
                judge(found.record.as_ref(), found.db_now)?;
                Err(Error::Internal(
                    "token is live but could not be revoked".into(),
                ))
            }
        }
    }

    /// `token revoke ID`.
    pub async fn revoke_by_id(&self, id: Uuid, caller: &str) -> Result<Time> {
        self.run(async |c| {
            if let Some(row) = self
                .query_opt(c, &sql::REVOKE_BY_ID, &[&id, &caller])
                .await?
            {
                return Ok(row.try_get(0)?);
            }
            match self.query_opt(c, &sql::EXISTS_BY_ID, &[&id]).await? {
                None => Err(Error::NotFound(format!("no token with id {id}"))),
                Some(row) => {
                    let at: Option<Time> = row.try_get(0)?;
                    Err(Error::InvalidArgument(match at {
                        Some(at) => format!("token {id} was already revoked at {}", fmt_time(at)),
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
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
                    &user,
                    &name,
                    &&digest.hash[..],
                    &digest.display_prefix,
                    &scopes,
                    &lifetime,
                    &caller,
                ];
                self.query_one(c, &sql::CREATE, &params).await
            })
            .await?;
        Ok(CreatedToken {
            id: row.try_get(0)?,
            expires_at: row.try_get(1)?,
        })
    }

    /// Every token (or one user's), oldest first, without secrets.
    pub(crate) async fn list(&self, user: Option<&str>) -> Result<Vec<TokenListing>> {
        let rows = self
            .run(async |c| self.query(c, &sql::LIST, &[&user]).await)
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

    /// `token prune`: deletes tokens dead for longer than `older_than` (by the database
    /// clock) and their audit rows, `batch` at a time, and returns how many tokens it
    /// deleted. Each batch is a statement of its own, within the operation timeout, so
    /// a large backlog is worked off in steps that each commit. A short batch means
    /// nothing is left but rows a concurrent prune holds, which that prune deletes.
    pub async fn prune(&self, older_than: Duration, batch: u32) -> Result<u64> {
        let limit = i64::from(batch.max(1));
        let mut pruned = 0;
        loop {
            let deleted = self
                .run(async |c| {
                    self.execute(c, &sql::PRUNE, &[&secs(older_than), &limit])
                        .await
                })
                .await?;
            pruned += deleted;
            if deleted < limit.unsigned_abs() {
                return Ok(pruned);
            }
        }
    }

    /// Stamps `last_used_at = now()` on a batch of tokens.
    pub(crate) async fn touch(&self, ids: &[Uuid]) -> Result<()> {
        self.run(async |c| {
            self.execute(c, &sql::TOUCH, &[&ids]).await?;
            Ok(())
        })
        .await
    }
}
