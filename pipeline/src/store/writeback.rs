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
    /// Batches of `target` that were assigned but not completed, oldest first, each with whether it
    /// is due: never failed, or failed longer ago than its backoff (30 s doubling per failure, at
    /// most 1 h).
    pub async fn incomplete_batches(
        &self,
        target: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<(i64, bool)>> {
        let rows = sqlx::query(
            "SELECT id, failures, failed_at FROM writeback_batches \
             WHERE target = ? AND completed_at IS NULL ORDER BY id",
        )
        .bind(target)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let failures: i64 = r.get("failures");
                let failed_at: Option<i64> = r.get("failed_at");
                let due =
                    failed_at.is_none_or(|at| secs(now) - at >= write_back_backoff_secs(failures));
                (r.get("id"), due)
            })
            .collect())
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
            &self.keys,
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
    pub async fn fail_batch(
        &self,
        batch: i64,
        error: &str,
        permanent: bool,
        now: Timestamp,
    ) -> StoreResult<()> {
        let previous: Option<String> =
            sqlx::query_scalar("SELECT last_error FROM writeback_batches WHERE id = ?")
                .bind(batch)
                .fetch_optional(self.pool())
                .await?
                .flatten();
        sqlx::query(
            "UPDATE writeback_batches SET last_error = ?, failures = failures + 1, failed_at = ? WHERE id = ?",
        )
        .bind(error)
        .bind(secs(now))
        .bind(batch)
        .execute(self.pool())
        .await?;
        // The EHR refused it: staff must look (once per distinct error, not on every retry).
        if permanent && previous.as_deref() != Some(error) {
            self.raise_alert(
                "writeback_rejected",
                &format!("write-back batch {batch} refused by the EHR: {error}"),
                now,
            )
            .await?;
        }
        Ok(())
    }
}

/// Seconds a write-back batch that has failed `failures` times waits before it is tried again:
/// 30 s after the first failure, doubling with each further one, at most an hour.
pub fn write_back_backoff_secs(failures: i64) -> i64 {
    (30i64 << (failures - 1).clamp(0, 7)).min(3600)
}

#[cfg(test)]
mod tests {
    use super::write_back_backoff_secs;

    #[test]
    fn backoff_doubles_from_30_seconds_up_to_an_hour() {
        let waits: Vec<i64> = (1..=9).map(write_back_backoff_secs).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(write_back_backoff_secs(1_000), 3600);
    }
}
