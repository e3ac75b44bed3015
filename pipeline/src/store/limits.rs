//! What the WhatsApp messaging limit needs from the store: who was sent a business-initiated
//! (template) message in the moving 24 hours, and alerts that open and close with a condition.

use std::collections::HashMap;

use jiff::Timestamp;
use sqlx::Row;

use super::{Store, StoreResult, secs, ts};

impl Store {
    /// Each contact sent a template message at or after `since`, with the newest such send: a
    /// contact stops counting against the messaging limit 24 h after it.
    pub async fn recipients_since(
        &self,
        since: Timestamp,
    ) -> StoreResult<HashMap<String, Timestamp>> {
        let rows = sqlx::query(
            "SELECT contact_hash, MAX(sent_at) AS last FROM messages WHERE sent_at >= ? \
             AND contact_hash != '' GROUP BY contact_hash",
        )
        .bind(secs(since))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("contact_hash"), ts(r.get("last"))))
            .collect())
    }

    /// Whether an alert of `kind` is open (raised and not resolved).
    pub async fn alert_open(&self, kind: &str) -> StoreResult<bool> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM alerts WHERE kind = ? AND resolved_at IS NULL",
        )
        .bind(kind)
        .fetch_one(self.pool())
        .await?
            > 0)
    }

    /// Resolves every open alert of `kind` (its condition ended); returns how many.
    pub async fn resolve_alerts(&self, kind: &str, now: Timestamp) -> StoreResult<u64> {
        Ok(
            sqlx::query("UPDATE alerts SET resolved_at = ? WHERE kind = ? AND resolved_at IS NULL")
                .bind(secs(now))
                .bind(kind)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
}
