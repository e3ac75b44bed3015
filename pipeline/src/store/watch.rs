//! What the after-pass checks ([`crate::watch`]) read: recent quarantine by feed, and opt-outs
//! against patients messaged.

use std::collections::HashMap;

use jiff::Timestamp;
use sqlx::Row;

use super::{Store, StoreResult, secs};

impl Store {
    /// Inputs quarantined at or after `since`, by feed.
    pub async fn quarantined_since(&self, since: Timestamp) -> StoreResult<HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT source, COUNT(*) AS n FROM quarantine WHERE received_at >= ? GROUP BY source",
        )
        .bind(secs(since))
        .fetch_all(self.pool())
        .await?;
        Ok(rows.iter().map(|r| (r.get("source"), r.get("n"))).collect())
    }

    /// Patients (contacts) who sent STOP at or after `since`, and patients sent a message in the
    /// same period.
    pub async fn opt_outs_since(&self, since: Timestamp) -> StoreResult<(i64, i64)> {
        let s = secs(since);
        let stopped: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT contact_hash) FROM replies WHERE action = 'stop' AND received_at >= ?",
        )
        .bind(s)
        .fetch_one(self.pool())
        .await?;
        let messaged: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT contact_hash) FROM messages WHERE sent_at >= ? AND contact_hash != ''",
        )
        .bind(s)
        .fetch_one(self.pool())
        .await?;
        Ok((stopped, messaged))
    }
}
