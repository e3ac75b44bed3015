//! Write-back SQL: replies are assigned to a batch in one transaction, the batch is written by the
//! target (idempotently, keyed by batch id), then completed. A batch left incomplete by a crash is
//! written again with the same id and content: each reply reaches the target exactly once.

use jiff::Timestamp;
use medrelay_mapping::phi::Phi;
use medrelay_mapping::ports::Confirmation;
use medrelay_mapping::reply::ReplyAction;
use serde_json::json;
use sqlx::Row;

use super::{Store, StoreResult, audit, secs, ts};

impl Store {
    /// Batches of `target` that were assigned but not completed.
    pub async fn incomplete_batches(&self, target: &str) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM writeback_batches WHERE target = ? AND completed_at IS NULL ORDER BY id",
        )
        .bind(target)
        .fetch_all(self.pool())
        .await?)
    }

    /// Assigns every accepted, not yet written reply for appointments of `source` to a new batch.
    /// Returns the batch id, or `None` when there is nothing to write.
    pub async fn assign_batch(&self, source: &str, now: Timestamp) -> StoreResult<Option<i64>> {
        let mut tx = self.write_tx().await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM replies r JOIN appointments a ON a.id = r.appointment_id \
             WHERE r.writeback_batch IS NULL AND r.outcome = 'accepted' AND a.source = ?",
        )
        .bind(source)
        .fetch_one(&mut *tx)
        .await?;
        if pending == 0 {
            return Ok(None);
        }
        let batch: i64 = sqlx::query_scalar(
            "INSERT INTO writeback_batches (target, created_at) VALUES (?, ?) RETURNING id",
        )
        .bind(source)
        .bind(secs(now))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE replies SET writeback_batch = ?1 WHERE writeback_batch IS NULL AND outcome = 'accepted' \
             AND appointment_id IN (SELECT id FROM appointments WHERE source = ?2)",
        )
        .bind(batch)
        .bind(source)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(batch))
    }

    /// The confirmations in a batch, in reply order.
    pub async fn batch_items(&self, batch: i64) -> StoreResult<Vec<Confirmation>> {
        let rows = sqlx::query(
            "SELECT r.id, r.action, r.received_at, a.source, a.filler_id, a.placer_id, a.patient_ref, a.start_at, a.time_zone \
             FROM replies r JOIN appointments a ON a.id = r.appointment_id WHERE r.writeback_batch = ? ORDER BY r.id",
        )
        .bind(batch)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(Confirmation {
                    reply_id: r.get("id"),
                    source: r.get("source"),
                    filler_id: r.get("filler_id"),
                    placer_id: r.get("placer_id"),
                    patient_id: r.get::<Option<String>, _>("patient_ref").map(Phi::new),
                    action: ReplyAction::parse(r.get::<Option<&str>, _>("action")?)?,
                    replied_at: ts(r.get("received_at")),
                    appointment_start: ts(r.get("start_at")),
                    time_zone: r.get("time_zone"),
                })
            })
            .collect())
    }

    /// Marks a batch written.
    pub async fn complete_batch(
        &self,
        batch: i64,
        location: &str,
        items: usize,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE writeback_batches SET completed_at = ?, location = ?, last_error = NULL WHERE id = ?",
        )
        .bind(secs(now))
        .bind(location)
        .bind(batch)
        .execute(&mut *tx)
        .await?;
        audit::append(
            &mut tx,
            now,
            "writeback",
            "writeback",
            &format!("batch:{batch}"),
            json!({"items": items, "location": location}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a failed write attempt (the batch stays incomplete and is retried).
    pub async fn fail_batch(&self, batch: i64, error: &str) -> StoreResult<()> {
        sqlx::query("UPDATE writeback_batches SET last_error = ? WHERE id = ?")
            .bind(error)
            .bind(batch)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
