//! Expiry notices: claiming the due ones, taking over abandoned claims, and recording
//! how each ended. The rules are in the statements (`sql::CLAIM_DUE_NOTICES`).
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Db, sql};
use crate::error::Result;

/// A notice this replica has claimed and must now deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub(crate) token_id: Uuid,
    pub(crate) user_id: String,
    pub(crate) name: String,
    pub(crate) expires_at: DateTime<Utc>,
    /// The threshold crossed, in seconds.
    pub(crate) threshold_secs: i64,
    /// The same on every attempt (`X-Auth-Delivery`).
    pub(crate) delivery_id: Uuid,
    /// Attempts made before this claim (a takeover continues the count).
    pub(crate) attempts: i32,
}

fn notice(row: &tokio_postgres::Row) -> Result<Notice> {
    Ok(Notice {
        token_id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        name: row.try_get(2)?,
        expires_at: row.try_get(3)?,
        threshold_secs: row.try_get(4)?,
        delivery_id: row.try_get(5)?,
        attempts: row.try_get(6)?,
    })
}

impl Db {
    /// Claims up to `limit` due notices for `thresholds` (seconds, ascending), and takes
    /// over claims older than `lease` that were never finished.
    pub async fn claim_notices(
        &self,
        thresholds: &[i64],
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<Notice>> {
        let largest = thresholds.iter().copied().max().unwrap_or(0);
        let lease = lease.as_secs_f64();
        let rows = self
            .run(async |c| {
                let mut rows = self
                    .query(c, &sql::RECLAIM_STALE_NOTICES, &[&lease])
                    .await?;
                rows.extend(
                    self.query(c, &sql::CLAIM_DUE_NOTICES, &[&thresholds, &largest, &limit])
                        .await?,
                );
                Ok(rows)
            })
            .await?;
        rows.iter().map(notice).collect()
    }

    /// Records a delivered notice, with its audit event (`kind = 'notify'`).
    pub(crate) async fn notice_sent(&self, n: &Notice, attempts: i32, caller: &str) -> Result<()> {
        self.run(async |c| {
            self.execute(
                c,
                &sql::NOTICE_SENT,
                &[
                    &n.token_id,
                    &n.threshold_secs,
                    &n.expires_at,
                    &attempts,
                    &caller,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Records a notice whose retries ran out.
    pub(crate) async fn notice_failed(&self, n: &Notice, attempts: i32) -> Result<()> {
        self.run(async |c| {
            self.execute(
                c,
                &sql::NOTICE_FAILED,
                &[&n.token_id, &n.threshold_secs, &n.expires_at, &attempts],
            )
            .await?;
            Ok(())
        })
        .await
    }
}
