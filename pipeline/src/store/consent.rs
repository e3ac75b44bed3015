//! Consent ledger SQL.

use jiff::Timestamp;
use medrelay_mapping::consent::{
    ConsentDecision, ConsentFacts, ConsentSignal, ConsentSource, Purpose, decide,
};
use medrelay_mapping::model::EhrConsent;
use serde_json::json;

use super::{Store, StoreResult, audit, secs, ts};
use super::{on_db, on_tx};

/// One ledger entry as shown by `medrelay consent show`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LedgerEntry {
    pub purpose: String,
    pub granted: bool,
    pub source: String,
    pub actor: String,
    pub reason: String,
    pub at: Timestamp,
}

impl Store {
    /// Ledger signals for a contact and purpose.
    pub async fn consent_signals(
        &self,
        contact_hash: &str,
        purpose: Purpose,
    ) -> StoreResult<Vec<ConsentSignal>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT granted, source, at FROM consent_ledger WHERE contact_hash = $1 AND purpose = $2",
        )
        .bind(contact_hash)
        .bind(purpose.as_str())
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(ConsentSignal {
                    source: ConsentSource::parse(r.get("source"))?,
                    granted: r.get::<i64, _>("granted") != 0,
                    at: ts(r.get("at")),
                })
            })
            .collect())
    }

    /// The combined consent decision for an appointment's contact and a purpose: the ledger (patient
    /// and staff), the appointment's own EHR signal and protection flag, under the site policy. Used by
    /// the sender at send time and by `medrelay explain`, so both always agree.
    pub async fn consent_decision(
        &self,
        rec: &super::outbox::AppointmentRecord,
        purpose: Purpose,
        opt_in_required: bool,
    ) -> StoreResult<ConsentDecision> {
        let mut signals = match &rec.contact_hash {
            Some(h) => self.consent_signals(h, purpose).await?,
            None => Vec::new(),
        };
        if let Some(c) = rec.appointment.ehr_consent {
            signals.push(ConsentSignal {
                source: ConsentSource::Ehr,
                granted: c == EhrConsent::OptIn,
                at: rec.ehr_consent_at,
            });
        }
        Ok(decide(
            &ConsentFacts {
                protected: rec.appointment.patient.protected == Some(true),
                signals,
            },
            opt_in_required,
        ))
    }

    /// Full ledger for a contact.
    pub async fn consent_ledger(&self, contact_hash: &str) -> StoreResult<Vec<LedgerEntry>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT purpose, granted, source, actor, reason, at FROM consent_ledger WHERE contact_hash = $1 ORDER BY at, id",
        )
        .bind(contact_hash)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| LedgerEntry {
                purpose: r.get("purpose"),
                granted: r.get::<i64, _>("granted") != 0,
                source: r.get("source"),
                actor: r.get("actor"),
                reason: r.get("reason"),
                at: ts(r.get("at")),
            })
            .collect())
    }

    /// Records a grant or revocation for the given purposes. A revocation withdraws the contact's
    /// pending steps for those purposes in the same transaction (and consent is re-checked at send
    /// time anyway, for steps already being sent).
    #[allow(clippy::too_many_arguments)]
    pub async fn record_consent(
        &self,
        contact_hash: &str,
        purposes: &[Purpose],
        granted: bool,
        source: ConsentSource,
        actor: &str,
        reason: &str,
        at: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let mut withdrawn = 0;
        for p in purposes {
            on_tx!(tx, |c| {
                sqlx::query(
                "INSERT INTO consent_ledger (contact_hash, purpose, granted, source, actor, reason, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(contact_hash)
            .bind(p.as_str())
            .bind(i64::from(granted))
            .bind(source.as_str())
            .bind(actor)
            .bind(reason)
            .bind(secs(at))
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
            let kinds = match p {
                Purpose::Logistics => "('confirmation', 'reminder')",
                Purpose::FollowUp => "('follow_up')",
            };
            if granted {
                // Steps withdrawn by an earlier revocation come back if they can still be useful;
                // the sender re-checks everything (including the combined consent) before sending.
                on_tx!(tx, |c, pg| {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE outbox SET state = 'pending', state_reason = 'consent granted again', \
                     next_attempt_at = {greatest}(due_at, $1), updated_at = $1 \
                     WHERE state = 'skipped' AND (state_reason LIKE 'consent revoked%' OR state_reason LIKE 'no consent:%') AND kind IN {kinds} \
                     AND expires_at > $1 AND appointment_id IN (SELECT id FROM appointments WHERE contact_hash = $2)",
                    greatest = super::greatest(pg)
                )))
                .bind(secs(at))
                .bind(contact_hash)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
            } else {
                withdrawn += on_tx!(tx, |c| {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE outbox SET state = 'skipped', state_reason = 'consent revoked ({})', updated_at = $1 \
                     WHERE state = 'pending' AND kind IN {kinds} \
                     AND appointment_id IN (SELECT id FROM appointments WHERE contact_hash = $2)",
                    source.as_str()
                )))
                .bind(secs(at))
                .bind(contact_hash)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
            }
        }
        audit::append(
            &mut tx,
            &self.keys,
            at,
            actor,
            if granted { "consent_grant" } else { "consent_revoke" },
            contact_hash,
            json!({"source": source.as_str(), "purposes": purposes.iter().map(|p| p.as_str()).collect::<Vec<_>>(), "reason": reason, "pending_steps_withdrawn": withdrawn}),
        )
        .await?;
        tx.commit().await?;
        Ok(withdrawn)
    }
}
