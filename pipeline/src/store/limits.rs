//! What the WhatsApp messaging limit needs from the store: who was sent a business-initiated
//! (template) message in the moving 24 hours.

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
}
