//! Retention: raw payloads and PHI columns are pruned after a configurable period, while everything
//! an auditor needs (ids, states, hashes, the audit chain) stays.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use serde_json::json;

use super::on_tx;
use super::{Store, StoreResult, audit, secs};

/// What a prune removed, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub quarantine_raw: u64,
    pub webhook_bodies: u64,
    pub message_bodies: u64,
    pub reply_texts: u64,
    pub appointments_scrubbed: u64,
    /// Inbox message texts and captions (and the number of a conversation closed that long ago).
    pub conversation_texts: u64,
}

impl Store {
    /// Prunes raw inputs older than `raw_after` and patient data of appointments that ended more than
    /// `phi_after` ago, in one transaction, with an audit record of the counts.
    pub async fn prune(
        &self,
        now: Timestamp,
        raw_after: SignedDuration,
        phi_after: SignedDuration,
    ) -> StoreResult<PruneReport> {
        let raw_cutoff = secs(now - raw_after);
        let phi_cutoff = secs(now - phi_after);
        let mut tx = self.write_tx_alone().await?;
        let quarantine_raw = on_tx!(tx, |c| sqlx::query(
            "UPDATE quarantine SET raw = NULL WHERE raw IS NOT NULL AND received_at < $1",
        )
        .bind(raw_cutoff)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        let webhook_bodies = on_tx!(tx, |c, pg| {
            sqlx::query(if pg {
                "UPDATE webhook_inbox SET body = ''::BYTEA WHERE length(body) > 0 AND processed_at IS NOT NULL AND received_at < $1"
            } else {
                "UPDATE webhook_inbox SET body = X'' WHERE length(body) > 0 AND processed_at IS NOT NULL AND received_at < $1"
            })
        .bind(raw_cutoff)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        let message_bodies = on_tx!(tx, |c| sqlx::query(
            "UPDATE messages SET body = NULL WHERE body IS NOT NULL AND sent_at < $1"
        )
        .bind(raw_cutoff)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        let reply_texts = on_tx!(tx, |c| sqlx::query(
            "UPDATE replies SET text = NULL WHERE text IS NOT NULL AND received_at < $1",
        )
        .bind(raw_cutoff)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        // The appointment keeps its ids, times, status and contact hash (for consent and audit); the
        // patient's name, number, identifiers, service type and reason go. Pending steps cannot
        // exist for an appointment that ended long ago.
        let appointments_scrubbed = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE appointments SET given_name = NULL, family_name = NULL, phone_e164 = NULL, patient_ref = NULL, \
             service_type = NULL, reason = NULL \
             WHERE COALESCE(end_at, start_at) < $1 AND (given_name IS NOT NULL OR family_name IS NOT NULL \
             OR phone_e164 IS NOT NULL OR patient_ref IS NOT NULL OR service_type IS NOT NULL OR reason IS NOT NULL)",
        )
        .bind(phi_cutoff)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        // The inbox: what was said goes with the other raw texts; a conversation closed before
        // the cutoff keeps its ids, times and states, not the patient's number.
        let conversation_texts = on_tx!(tx, |c| sqlx::query(
            "UPDATE conversation_messages SET body = NULL, media_id = NULL \
             WHERE (body IS NOT NULL OR media_id IS NOT NULL) AND at < $1",
        )
        .bind(raw_cutoff)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE conversations SET phone_e164 = '' WHERE state = 'closed' AND closed_at < $1 AND phone_e164 <> ''",
        )
        .bind(raw_cutoff)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        let report = PruneReport {
            conversation_texts,
            quarantine_raw,
            webhook_bodies,
            message_bodies,
            reply_texts,
            appointments_scrubbed,
        };
        audit::append(
            &mut tx,
            &self.keys,
            now,
            "retention",
            "prune",
            "store",
            json!({"report": report, "raw_after_days": raw_after.as_hours() / 24, "phi_after_days": phi_after.as_hours() / 24}),
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }
}
