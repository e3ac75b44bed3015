//! What the WhatsApp messaging limit needs from the store: who was sent a business-initiated
//! (template) message outside a customer service window in the moving 24 hours, and whose
//! window is open now.

use std::collections::HashMap;

use jiff::Timestamp;

use super::{Store, StoreResult, secs, ts};
use super::{on_db, on_tx};

/// `contact_hash` -> `last` of each row.
fn by_contact(rows: &[super::StoredRow]) -> HashMap<String, Timestamp> {
    rows.iter()
        .map(|r| (r.get("contact_hash"), ts(r.get("last"))))
        .collect()
}

/// The messaging limit as WhatsApp last stated it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedLimit {
    /// `None`: unlimited.
    pub limit: Option<u32>,
    /// `graph_api` or `webhook`.
    pub source: String,
    pub at: Timestamp,
}

/// WhatsApp's customer service window: 24 h from the patient's last message.
pub const SERVICE_WINDOW_SECONDS: i64 = 24 * 3600;

impl Store {
    /// Each contact sent a template message at or after `since` **outside** a customer service
    /// window (the patient had not written in the 24 h before it), with the newest such send: a
    /// contact stops counting against the messaging limit 24 h after it. Messages inside a window
    /// do not count (Meta's limit is on business-initiated messages outside one).
    pub async fn recipients_since(
        &self,
        since: Timestamp,
    ) -> StoreResult<HashMap<String, Timestamp>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT m.contact_hash, MAX(m.sent_at) AS last FROM messages m WHERE m.sent_at >= $1 \
             AND m.contact_hash != '' AND NOT EXISTS (SELECT 1 FROM replies r \
               WHERE r.contact_hash = m.contact_hash AND r.received_at <= m.sent_at \
               AND r.received_at > m.sent_at - $2) \
             GROUP BY m.contact_hash",
        )
        .bind(secs(since))
        .bind(SERVICE_WINDOW_SECONDS)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(by_contact(&rows))
    }

    /// Records the messaging limit WhatsApp stated (`None`: unlimited) and where it came from
    /// (`graph_api`, `webhook`); returns whether it changed.
    pub async fn set_messaging_limit(
        &self,
        limit: Option<u32>,
        source: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let before = self.reported_messaging_limit().await?;
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO account_limits (name, value, source, updated_at) VALUES ('messaging_limit', $1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, source = excluded.source, updated_at = excluded.updated_at",
        )
        .bind(limit.map(i64::from))
        .bind(source)
        .bind(secs(now))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(before.is_none_or(|b| b.limit != limit))
    }

    /// The messaging limit WhatsApp last stated, if it ever did.
    pub async fn reported_messaging_limit(&self) -> StoreResult<Option<ReportedLimit>> {
        let row = on_db!(self, |db| {
            sqlx::query(
            "SELECT value, source, updated_at FROM account_limits WHERE name = 'messaging_limit'",
        )
        .fetch_optional(db).await.map(|v| v.map(super::StoredRow::from))
        })?;
        Ok(row.map(|r| ReportedLimit {
            limit: r
                .get::<Option<i64>, _>("value")
                .and_then(|v| u32::try_from(v).ok()),
            source: r.get("source"),
            at: ts(r.get("updated_at")),
        }))
    }

    /// Pending template steps due in `[from, until)`, and their distinct recipients: what a day
    /// will ask of the messaging limit.
    pub async fn pending_need(&self, from: Timestamp, until: Timestamp) -> StoreResult<(i64, i64)> {
        let r = on_db!(self, |db| {
            sqlx::query(
            "SELECT COUNT(*) AS jobs, COUNT(DISTINCT a.contact_hash) AS recipients FROM outbox o \
             JOIN appointments a ON a.id = o.appointment_id \
             WHERE o.state = 'pending' AND o.due_at >= $1 AND o.due_at < $2 AND a.contact_hash IS NOT NULL",
        )
        .bind(secs(from))
        .bind(secs(until))
        .fetch_one(db).await.map(super::StoredRow::from)
        })?;
        Ok((r.get("jobs"), r.get("recipients")))
    }

    /// Messages accepted by WhatsApp at or after `since` (the send rate over a period).
    pub async fn messages_sent_since(&self, since: Timestamp) -> StoreResult<i64> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE sent_at >= $1"
        )
        .bind(secs(since))
        .fetch_one(db)
        .await)?)
    }

    /// Contacts whose customer service window is open at `now`, with their last message's time
    /// (the window closes 24 h after it).
    pub async fn open_service_windows(
        &self,
        now: Timestamp,
    ) -> StoreResult<HashMap<String, Timestamp>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT contact_hash, MAX(received_at) AS last FROM replies \
             WHERE received_at > $1 AND received_at <= $2 AND contact_hash != '' GROUP BY contact_hash",
        )
        .bind(secs(now) - SERVICE_WINDOW_SECONDS)
        .bind(secs(now))
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(by_contact(&rows))
    }
}
