//! What the after-pass checks ([`crate::watch`]) read: recent quarantine by feed, and opt-outs
//! against patients messaged.

use std::collections::HashMap;

use jiff::Timestamp;

use super::on_db;
use super::{Store, StoreResult, secs};

impl Store {
    /// Inputs quarantined at or after `since`, by feed.
    pub async fn quarantined_since(&self, since: Timestamp) -> StoreResult<HashMap<String, i64>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT source, COUNT(*) AS n FROM quarantine WHERE received_at >= $1 GROUP BY source",
        )
        .bind(secs(since))
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows.iter().map(|r| (r.get("source"), r.get("n"))).collect())
    }

    /// Patients (contacts) who sent STOP at or after `since`, and patients sent a message in the
    /// same period.
    pub async fn opt_outs_since(&self, since: Timestamp) -> StoreResult<(i64, i64)> {
        let s = secs(since);
        let stopped: i64 = on_db!(self, |db| {
            sqlx::query_scalar(
            "SELECT COUNT(DISTINCT contact_hash) FROM replies WHERE action = 'stop' AND received_at >= $1",
        )
        .bind(s)
        .fetch_one(db).await
        })?;
        let messaged: i64 = on_db!(self, |db| {
            sqlx::query_scalar(
            "SELECT COUNT(DISTINCT contact_hash) FROM messages WHERE sent_at >= $1 AND contact_hash != ''",
        )
        .bind(s)
        .fetch_one(db).await
        })?;
        Ok((stopped, messaged))
    }
}
