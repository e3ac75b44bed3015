//! Inbound SQL: raw webhook storage, delivery statuses, replies and alerts.

use jiff::Timestamp;
use serde_json::json;

use super::{Store, StoreResult, audit, secs, ts};
use super::{on_db, on_tx};
use crate::whatsapp::webhook::StatusUpdate;

/// A reply to store. `wa_message_id` makes re-deliveries idempotent.
#[derive(Debug, Clone)]
pub struct NewReply {
    pub wa_message_id: String,
    pub contact_hash: String,
    pub context_wamid: Option<String>,
    pub job_id: Option<i64>,
    pub appointment_id: Option<i64>,
    pub kind: &'static str,
    pub action: Option<String>,
    pub outcome: &'static str,
    /// Free text for the staff queue (PHI).
    pub text: Option<String>,
    pub received_at: Timestamp,
}

/// What a job looks like to the inbound side.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub id: i64,
    pub appointment_id: i64,
    pub slot_start: Timestamp,
    pub state: String,
    pub wamid: Option<String>,
    /// The step kind (`None`: a kind this build does not know).
    pub kind: Option<medrelay_mapping::plan::StepKind>,
}

/// The rank of a delivery status: statuses only move forward.
pub fn status_rank(status: &str) -> Option<i64> {
    match status {
        "accepted" => Some(0),
        "sent" => Some(1),
        "delivered" => Some(2),
        "read" => Some(3),
        "failed" => Some(4),
        _ => None,
    }
}

/// The patient cancelled `appointment` (a tap, or staff recording it): its pending steps are
/// withdrawn by the trigger on `patient_cancelled_at`. Runs in the caller's transaction.
pub(crate) async fn mark_patient_cancelled(
    tx: &mut super::Tx,
    appointment: i64,
    now: Timestamp,
) -> StoreResult<()> {
    on_tx!(tx, |c| {
        sqlx::query(
        "UPDATE appointments SET patient_cancelled_at = $1, updated_at = $1 WHERE id = $2 AND patient_cancelled_at IS NULL",
    )
    .bind(secs(now))
    .bind(appointment)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected())
    })?;
    Ok(())
}

impl Store {
    /// Stores a raw webhook body; returns its id once committed (the moment a 200 may be given).
    pub async fn store_webhook(&self, body: &[u8], now: Timestamp) -> StoreResult<i64> {
        let mut tx = self.write_tx().await?;
        let id = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO webhook_inbox (received_at, body) VALUES ($1, $2) RETURNING id",
        )
        .bind(secs(now))
        .bind(body)
        .fetch_one(&mut *c)
        .await)?;
        tx.commit().await?;
        Ok(id)
    }

    /// Marks a stored webhook processed (with the error, if processing failed; no PHI in it).
    pub async fn mark_webhook(
        &self,
        id: i64,
        error: Option<&str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| sqlx::query(
            "UPDATE webhook_inbox SET processed_at = $1, error = $2 WHERE id = $3"
        )
        .bind(secs(now))
        .bind(error)
        .bind(id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await
    }

    /// Marks several stored webhooks processed without error, in one transaction.
    pub async fn mark_webhooks(&self, ids: &[i64], now: Timestamp) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        for id in ids {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE webhook_inbox SET processed_at = $1, error = NULL WHERE id = $2"
            )
            .bind(secs(now))
            .bind(id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await
    }

    /// Stored webhooks not yet processed (after a crash), oldest first.
    pub async fn unprocessed_webhooks(&self) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let rows = on_db!(self, |db| sqlx::query(
            "SELECT id, body FROM webhook_inbox WHERE processed_at IS NULL ORDER BY id",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?;
        Ok(rows.iter().map(|r| (r.get("id"), r.get("body"))).collect())
    }

    /// Merges a delivery status monotonically. Returns true if it changed anything. A status for an
    /// unknown message that carries our job id (`biz_opaque_callback_data`) reconciles a job whose send
    /// was interrupted after WhatsApp accepted it.
    ///
    /// The status's `pricing` (Meta's category and type, whether billable) is kept from the first
    /// status that carries it, whatever order the statuses arrive in.
    pub async fn apply_status(
        &self,
        update: &StatusUpdate,
        callback_job: Option<i64>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let changed = self
            .apply_status_in(&mut tx, update, callback_job, now)
            .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// [`Store::apply_status`] for a run of statuses in one transaction: one commit for many status
    /// webhooks, so that applying keeps up with storing when WhatsApp delivers statuses on many
    /// connections at once (BENCHMARKS.md, "Status webhooks"). Returns, per status, whether it
    /// changed anything.
    pub async fn apply_statuses(
        &self,
        updates: &[(&StatusUpdate, Option<i64>)],
        now: Timestamp,
    ) -> StoreResult<Vec<bool>> {
        let mut tx = self.write_tx().await?;
        let mut changed = Vec::with_capacity(updates.len());
        for (update, callback_job) in updates {
            changed.push(
                self.apply_status_in(&mut tx, update, *callback_job, now)
                    .await?,
            );
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn apply_status_in(
        &self,
        tx: &mut super::Tx,
        update: &StatusUpdate,
        callback_job: Option<i64>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let (wamid, status, error_code) = (
            update.wamid.as_str(),
            update.status.as_str(),
            update.error_code,
        );
        let at = Timestamp::from_second(update.timestamp).unwrap_or(now);
        let Some(rank) = status_rank(status) else {
            return Ok(false);
        };
        let known: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT job_id FROM messages WHERE wamid = $1"
        )
        .bind(wamid)
        .fetch_optional(&mut *c)
        .await)?;
        if known.is_none()
            && let Some(job) = callback_job
        {
            let reconciled = on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE outbox SET state = 'sent', wamid = $1, state_reason = 'reconciled from a status webhook', updated_at = $2 \
                 WHERE id = $3 AND state IN ('sending', 'pending')",
            )
            .bind(wamid)
            .bind(secs(now))
            .bind(job)
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
            if reconciled > 0 {
                on_tx!(tx, |c| {
                    sqlx::query(
                    "INSERT INTO messages (job_id, wamid, contact_hash, body, sent_at, status, status_rank) \
                     SELECT o.id, $1, COALESCE(a.contact_hash, ''), NULL, $2, 'accepted', 0 FROM outbox o \
                     JOIN appointments a ON a.id = o.appointment_id WHERE o.id = $3",
                )
                .bind(wamid)
                .bind(secs(now))
                .bind(job)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
            }
        }
        let changed = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE messages SET status = $1, status_rank = $2, status_at = $3, error_code = COALESCE($4, error_code) \
             WHERE wamid = $5 AND status_rank < $6",
        )
        .bind(status)
        .bind(rank)
        .bind(secs(at))
        .bind(error_code)
        .bind(wamid)
        .bind(rank)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })? > 0;
        if let Some(p) = &update.pricing {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE messages SET pricing_category = $1, pricing_type = $2, billable = $3 \
                 WHERE wamid = $4 AND pricing_category IS NULL",
            )
            .bind(&p.category)
            .bind(&p.kind)
            .bind(i64::from(p.billable))
            .bind(wamid)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        if changed {
            audit::append(
                tx,
                &self.keys,
                now,
                "whatsapp",
                "status",
                wamid,
                json!({"status": status, "error_code": error_code}),
            )
            .await?;
        }
        Ok(changed)
    }

    /// The job a message or payload refers to.
    pub async fn job_ref(&self, job_id: i64) -> StoreResult<Option<JobRef>> {
        let row = on_db!(self, |db| {
            sqlx::query(
            "SELECT id, appointment_id, slot_start, state, wamid, kind FROM outbox WHERE id = $1",
        )
        .bind(job_id)
        .fetch_optional(db)
        .await
        .map(|v| v.map(super::StoredRow::from))
        })?;
        Ok(row.map(|r| JobRef {
            id: r.get("id"),
            appointment_id: r.get("appointment_id"),
            slot_start: ts(r.get("slot_start")),
            state: r.get("state"),
            wamid: r.get("wamid"),
            kind: medrelay_mapping::plan::StepKind::from_name(&r.get::<String, _>("kind")),
        }))
    }

    /// The action of the patient's latest accepted tap about this appointment's slot, if any.
    pub async fn latest_accepted_action(
        &self,
        appointment_id: i64,
        slot_start: Timestamp,
    ) -> StoreResult<Option<String>> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT r.action FROM replies r JOIN outbox o ON o.id = r.job_id \
             WHERE r.appointment_id = $1 AND r.outcome = 'accepted' AND o.slot_start = $2 \
             ORDER BY r.id DESC LIMIT 1",
        )
        .bind(appointment_id)
        .bind(secs(slot_start))
        .fetch_optional(db)
        .await)?)
    }

    /// The job a WhatsApp message id belongs to.
    pub async fn job_for_wamid(&self, wamid: &str) -> StoreResult<Option<i64>> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT job_id FROM messages WHERE wamid = $1"
        )
        .bind(wamid)
        .fetch_optional(db)
        .await)?)
    }

    /// The template (its configured key) a job was planned with.
    pub async fn job_template(&self, job_id: i64) -> StoreResult<Option<String>> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT template FROM outbox WHERE id = $1"
        )
        .bind(job_id)
        .fetch_optional(db)
        .await)?)
    }

    /// WhatsApp could not deliver a step for good: the job becomes `failed` and, once per appointment
    /// slot, a `not_notified` record is queued for write-back so that staff reach the patient another
    /// way. Idempotent (re-delivered failure webhooks add nothing).
    pub async fn record_not_notified(
        &self,
        job_id: i64,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE outbox SET state = 'failed', state_reason = $1, updated_at = $2 WHERE id = $3 AND state IN ('sent', 'sending')",
        )
        .bind(reason)
        .bind(secs(now))
        .bind(job_id)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        let inserted = on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO replies (wa_message_id, contact_hash, job_id, appointment_id, kind, action, outcome, received_at) \
             SELECT 'not-notified:' || a.id || ':' || o.slot_start, COALESCE(a.contact_hash, ''), o.id, a.id, 'system', \
                    'not_notified', 'accepted', $1 \
             FROM outbox o JOIN appointments a ON a.id = o.appointment_id WHERE o.id = $2 \
             ON CONFLICT (wa_message_id) DO NOTHING",
        )
        .bind(secs(now))
        .bind(job_id)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })? > 0;
        if inserted {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "whatsapp",
                "not_notified",
                &format!("job:{job_id}"),
                json!({"reason": reason}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// A message WhatsApp reported as failed for a temporary reason goes back to the queue.
    pub async fn requeue_failed(
        &self,
        job_id: i64,
        at: Timestamp,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE outbox SET state = 'pending', next_attempt_at = $1, state_reason = $2, updated_at = $3 \
             WHERE id = $4 AND state = 'sent' AND expires_at > $5",
        )
        .bind(secs(at))
        .bind(reason)
        .bind(secs(now))
        .bind(job_id)
        .bind(secs(at))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await
    }

    /// Stores a reply. Returns false if this WhatsApp message was already stored (a re-delivery).
    /// A patient Cancel also marks the appointment, which withdraws its pending steps (trigger).
    pub async fn insert_reply(&self, reply: &NewReply, now: Timestamp) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let inserted = on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO replies (wa_message_id, contact_hash, context_wamid, job_id, appointment_id, kind, action, outcome, text, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (wa_message_id) DO NOTHING",
        )
        .bind(&reply.wa_message_id)
        .bind(&reply.contact_hash)
        .bind(&reply.context_wamid)
        .bind(reply.job_id)
        .bind(reply.appointment_id)
        .bind(reply.kind)
        .bind(&reply.action)
        .bind(reply.outcome)
        .bind(&reply.text)
        .bind(secs(reply.received_at))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })? > 0;
        if inserted {
            if reply.outcome == "accepted"
                && reply.action.as_deref() == Some("cancel")
                && let Some(a) = reply.appointment_id
            {
                mark_patient_cancelled(&mut tx, a, now).await?;
            }
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "whatsapp",
                "reply",
                &reply.contact_hash,
                json!({"wa_message_id": reply.wa_message_id, "job": reply.job_id, "kind": reply.kind, "action": reply.action, "outcome": reply.outcome}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }
}
