//! Write-back SQL: replies are assigned to a batch in one transaction, the batch is written by the
//! target (idempotently, keyed by batch id), then completed. A batch left incomplete by a crash is
//! written again with the same id and content: each reply reaches the target exactly once.
//!
//! The dead letter: a batch the target refused for good (`refused`) keeps its place, so replies
//! never overtake each other, until staff retry it at once ([`Store::retry_batch`]) or skip it
//! ([`Store::skip_batch`]: closed unwritten, who/when/why recorded and audited, replies kept).

use jiff::Timestamp;
use medrelay_mapping::phi::Phi;
use medrelay_mapping::ports::Confirmation;
use medrelay_mapping::reply::ReplyAction;
use serde::Serialize;
use serde_json::json;

use super::{Store, StoreResult, audit, secs, ts};
use super::{on_db, on_tx};

impl Store {
    /// Batches of `target` that were assigned but not completed, oldest first, each with whether it
    /// is due: never failed, or failed longer ago than its backoff (30 s doubling per failure, at
    /// most 1 h).
    pub async fn incomplete_batches(
        &self,
        target: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<(i64, bool)>> {
        let rows = on_db!(self, |db| sqlx::query(
            "SELECT id, failures, failed_at FROM writeback_batches \
             WHERE target = $1 AND completed_at IS NULL ORDER BY id",
        )
        .bind(target)
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?;
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
        let pending: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM replies r JOIN appointments a ON a.id = r.appointment_id \
             WHERE r.writeback_batch IS NULL AND r.outcome = 'accepted' AND a.source = $1",
        )
        .bind(source)
        .fetch_one(&mut *c)
        .await)?;
        if pending == 0 {
            return Ok(None);
        }
        let batch: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO writeback_batches (target, created_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(source)
        .bind(secs(now))
        .fetch_one(&mut *c)
        .await)?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE replies SET writeback_batch = $1 WHERE writeback_batch IS NULL AND outcome = 'accepted' \
             AND appointment_id IN (SELECT id FROM appointments WHERE source = $2)",
        )
        .bind(batch)
        .bind(source)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(Some(batch))
    }

    /// The confirmations in a batch, in reply order.
    pub async fn batch_items(&self, batch: i64) -> StoreResult<Vec<Confirmation>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT r.id, r.action, r.received_at, a.source, a.filler_id, a.placer_id, a.patient_ref, a.start_at, a.time_zone \
             FROM replies r JOIN appointments a ON a.id = r.appointment_id WHERE r.writeback_batch = $1 ORDER BY r.id",
        )
        .bind(batch)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
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
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE writeback_batches SET completed_at = $1, location = $2, last_error = NULL, refused = 0 WHERE id = $3",
        )
        .bind(secs(now))
        .bind(location)
        .bind(batch)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        super::alerts::resolve(
            &mut tx,
            "writeback_rejected",
            Some(&refusal_prefix(batch)),
            now,
        )
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
        let previous: Option<String> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT last_error FROM writeback_batches WHERE id = $1"
        )
        .bind(batch)
        .fetch_optional(db)
        .await)?
        .flatten();
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE writeback_batches SET last_error = $1, failures = failures + 1, failed_at = $2, refused = $3 WHERE id = $4",
        )
        .bind(error)
        .bind(secs(now))
        .bind(i64::from(permanent))
        .bind(batch)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        // The EHR refused it: staff must look (once per distinct error, not on every retry).
        if permanent && previous.as_deref() != Some(error) {
            self.raise_alert(
                "writeback_rejected",
                &format!("{} {error}", refusal_prefix(batch)),
                now,
            )
            .await?;
        }
        Ok(())
    }
}

/// Where a write-back batch is, for staff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Not written yet, never failed (or retried by staff).
    Pending,
    /// The last attempt failed on the way (connection, timeout, 5xx): retried with backoff.
    Failing,
    /// The target refused it (AE, a 4xx): retried with backoff, but it will not pass by itself;
    /// it holds every later reply of its system until it is retried or skipped.
    Refused,
    /// Written.
    Written,
    /// Skipped by staff: closed without being written.
    Skipped,
}

impl BatchState {
    /// The name `writeback list` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Pending => "pending",
            BatchState::Failing => "failing",
            BatchState::Refused => "refused",
            BatchState::Written => "written",
            BatchState::Skipped => "skipped",
        }
    }
}

/// One write-back batch as `medrelay writeback list` shows it: ids, counts, times and the target's
/// answer (medrelay's own error texts carry no values), no patient data.
#[derive(Clone, Debug, Serialize)]
pub struct BatchLine {
    pub id: i64,
    /// The system the replies go back to.
    pub target: String,
    pub state: BatchState,
    pub created_at: Timestamp,
    pub replies: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub failed_at: Option<Timestamp>,
    /// When it was written, or skipped.
    pub completed_at: Option<Timestamp>,
    pub location: Option<String>,
    pub skipped_by: Option<String>,
    pub skip_reason: Option<String>,
}

/// One reply of a batch, for `writeback show`: what staff need to pass it on by hand.
#[derive(Clone, Debug, Serialize)]
pub struct BatchReply {
    pub reply_id: i64,
    /// `source/filler id`, as `medrelay explain` takes it.
    pub appointment: String,
    pub action: Option<String>,
    pub received_at: Timestamp,
}

/// Why staff could not act on a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchActionError {
    #[error("there is no write-back batch {0}")]
    Unknown(i64),
    #[error("write-back batch {0} is already {1}")]
    Closed(i64, &'static str),
}

/// The columns of a [`BatchLine`] (a macro so that queries stay static strings).
macro_rules! batch_line_sql {
    () => {
        "SELECT b.id, b.target, b.created_at, b.completed_at, b.location, \
         b.last_error, b.failures, b.failed_at, b.refused, b.skipped_at, b.skipped_by, b.skip_reason, \
         (SELECT COUNT(*) FROM replies r WHERE r.writeback_batch = b.id) AS replies \
         FROM writeback_batches b"
    };
}

fn batch_line(r: &super::StoredRow) -> BatchLine {
    let completed_at: Option<i64> = r.get("completed_at");
    let skipped_at: Option<i64> = r.get("skipped_at");
    let failures: i64 = r.get("failures");
    let state = if skipped_at.is_some() {
        BatchState::Skipped
    } else if completed_at.is_some() {
        BatchState::Written
    } else if r.get::<i64, _>("refused") != 0 {
        BatchState::Refused
    } else if failures > 0 && r.get::<Option<i64>, _>("failed_at").is_some() {
        BatchState::Failing
    } else {
        BatchState::Pending
    };
    BatchLine {
        id: r.get("id"),
        target: r.get("target"),
        state,
        created_at: ts(r.get("created_at")),
        replies: r.get("replies"),
        failures,
        last_error: r.get("last_error"),
        failed_at: r.get::<Option<i64>, _>("failed_at").map(ts),
        completed_at: completed_at.map(ts),
        location: r.get("location"),
        skipped_by: r.get("skipped_by"),
        skip_reason: r.get("skip_reason"),
    }
}

impl Store {
    /// Write-back batches, oldest first: the open ones (`all = false`), or the newest `limit` of
    /// every state.
    pub async fn writeback_batches(&self, all: bool, limit: i64) -> StoreResult<Vec<BatchLine>> {
        let rows = if all {
            on_db!(self, |db| sqlx::query(concat!(
                "SELECT * FROM (",
                batch_line_sql!(),
                " ORDER BY b.id DESC LIMIT ?) ORDER BY id"
            ))
            .bind(limit)
            .fetch_all(db)
            .await
            .map(|v| v
                .into_iter()
                .map(super::StoredRow::from)
                .collect::<Vec<_>>()))?
        } else {
            on_db!(self, |db| sqlx::query(concat!(
                batch_line_sql!(),
                " WHERE b.completed_at IS NULL ORDER BY b.id"
            ))
            .fetch_all(db)
            .await
            .map(|v| v
                .into_iter()
                .map(super::StoredRow::from)
                .collect::<Vec<_>>()))?
        };
        Ok(rows.iter().map(batch_line).collect())
    }

    /// One batch and its replies.
    pub async fn writeback_batch(
        &self,
        batch: i64,
    ) -> StoreResult<Option<(BatchLine, Vec<BatchReply>)>> {
        let Some(row) = on_db!(self, |db| sqlx::query(concat!(
            batch_line_sql!(),
            " WHERE b.id = $1"
        ))
        .bind(batch)
        .fetch_optional(db)
        .await
        .map(|v| v.map(super::StoredRow::from)))?
        else {
            return Ok(None);
        };
        let replies = on_db!(self, |db| sqlx::query(
            "SELECT r.id, r.action, r.received_at, a.source, a.filler_id FROM replies r \
             JOIN appointments a ON a.id = r.appointment_id WHERE r.writeback_batch = $1 ORDER BY r.id",
        )
        .bind(batch)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>()))?
        .iter()
        .map(|r| BatchReply {
            reply_id: r.get("id"),
            appointment: format!(
                "{}/{}",
                r.get::<String, _>("source"),
                r.get::<String, _>("filler_id")
            ),
            action: r.get("action"),
            received_at: ts(r.get("received_at")),
        })
        .collect();
        Ok(Some((batch_line(&row), replies)))
    }

    /// The state of an open batch, or why staff cannot act on it.
    async fn open_batch(&self, batch: i64) -> StoreResult<Result<(), BatchActionError>> {
        let Some(line) = self.writeback_batch(batch).await?.map(|(l, _)| l) else {
            return Ok(Err(BatchActionError::Unknown(batch)));
        };
        Ok(match line.state {
            BatchState::Written | BatchState::Skipped => {
                Err(BatchActionError::Closed(batch, line.state.as_str()))
            }
            _ => Ok(()),
        })
    }

    /// Makes an open batch due at the next pass (its backoff is forgotten), audited with `actor`.
    pub async fn retry_batch(
        &self,
        batch: i64,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<Result<(), BatchActionError>> {
        if let Err(e) = self.open_batch(batch).await? {
            return Ok(Err(e));
        }
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE writeback_batches SET failed_at = NULL, failures = 0 WHERE id = $1 AND completed_at IS NULL",
        )
        .bind(batch)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "writeback_retry",
            &format!("batch:{batch}"),
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Closes an open batch without writing it, so the replies after it go back: who, when and
    /// why are kept on the batch and in the audit trail; its replies stay attached to it (staff pass
    /// them on by hand). A batch being written at that moment by a running service may still be
    /// written.
    pub async fn skip_batch(
        &self,
        batch: i64,
        actor: &str,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<Result<(), BatchActionError>> {
        if let Err(e) = self.open_batch(batch).await? {
            return Ok(Err(e));
        }
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE writeback_batches SET completed_at = $1, skipped_at = $1, skipped_by = $2, skip_reason = $3 \
             WHERE id = $4 AND completed_at IS NULL",
        )
        .bind(secs(now))
        .bind(actor)
        .bind(reason)
        .bind(batch)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        super::alerts::resolve(
            &mut tx,
            "writeback_rejected",
            Some(&refusal_prefix(batch)),
            now,
        )
        .await?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "writeback_skip",
            &format!("batch:{batch}"),
            json!({"reason": reason}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}

/// Accepted replies not yet written back (in no batch, or in one not yet written): `status` and
/// `/metrics` count the same rows.
pub(crate) const BACKLOG_SQL: &str = "SELECT COUNT(*) FROM replies WHERE outcome = 'accepted' AND (writeback_batch IS NULL \
     OR writeback_batch IN (SELECT id FROM writeback_batches WHERE completed_at IS NULL))";

/// How the `writeback_rejected` alert of `batch` begins (written and resolved by that prefix).
fn refusal_prefix(batch: i64) -> String {
    format!("write-back batch {batch} refused by the EHR:")
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
