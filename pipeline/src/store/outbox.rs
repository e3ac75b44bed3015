//! Outbox SQL: planned steps, claiming due jobs, and recording how each send ended.

use jiff::Timestamp;
use medrelay_mapping::model::{
    Appointment, AppointmentKey, AppointmentStatus, ContactPhone, EhrConsent, Patient, PhoneUse,
};
use medrelay_mapping::phi::Phi;
use medrelay_mapping::plan::StepKind;
use serde_json::json;
use sqlx::QueryBuilder;

use super::{Store, StoreResult, audit, secs, ts};
use super::{on_db, on_tx};

/// An appointment whose plan must be (re)computed: only the columns planning needs, so planning
/// 100,000 appointments reads no patient data but the service type.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Row id.
    pub appointment_id: i64,
    /// Content revision the plan is made from (a newer one re-plans).
    pub revision: i64,
    /// Decides which step kinds apply.
    pub status: AppointmentStatus,
    /// Slot start: part of each step's idempotency key.
    pub start: Timestamp,
    /// Slot end, when the source gives one (follow-ups are timed from it).
    pub end: Option<Timestamp>,
    /// The source gave the day only: day-level steps (migration 0008).
    pub time_unknown: bool,
    /// Configured site (per-site plans, quiet hours).
    pub site: String,
    /// IANA zone the times are judged in.
    pub time_zone: String,
    /// The patient cancelled on WhatsApp: nothing more is planned.
    pub patient_cancelled: bool,
    /// Appointment type for per-type plans; PHI (wrapped so that it never prints).
    pub service_type: Option<Phi<String>>,
    /// How many times the booked appointment moved to another location at the same time
    /// (migration 0011): a `location_change` step is planned for the latest move.
    pub location_rev: i64,
    /// The state of the stored confirmation step for the current slot (`None`: none stored yet),
    /// read only when the appointment has moved: a confirmation still to go out shows the new
    /// location itself, so the move needs no message of its own.
    pub confirmation_state: Option<String>,
}

/// The states of an outbox job, as stored in `outbox.state` (the store's boundary turns the text
/// into this and back; SQL literals name the same words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobState {
    /// Due (or waiting for its time).
    Pending,
    /// Claimed by a sender; released after `sending_grace` if its outcome never arrives.
    Sending,
    /// Accepted by WhatsApp.
    Sent,
    /// Failed for good.
    Failed,
    /// No longer wanted (rescheduled, cancelled, superseded, removed from the plan).
    Withdrawn,
    /// Planned too late to be useful (expired before it could go).
    Dropped,
    /// Not sent by rule (consent, no usable phone, sensitive service...).
    Skipped,
}

impl JobState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Sending => "sending",
            JobState::Sent => "sent",
            JobState::Failed => "failed",
            JobState::Withdrawn => "withdrawn",
            JobState::Dropped => "dropped",
            JobState::Skipped => "skipped",
        }
    }

    /// Back from the stored word; `None` for one this build does not know.
    pub fn from_name(s: &str) -> Option<JobState> {
        Some(match s {
            "pending" => JobState::Pending,
            "sending" => JobState::Sending,
            "sent" => JobState::Sent,
            "failed" => JobState::Failed,
            "withdrawn" => JobState::Withdrawn,
            "dropped" => JobState::Dropped,
            "skipped" => JobState::Skipped,
            _ => return None,
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One planned step to store.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The appointment it is for.
    pub appointment_id: i64,
    /// The appointment revision it was planned from.
    pub revision: i64,
    /// Configured step name; with the appointment and slot, the message's idempotency key.
    pub step: String,
    /// The step's kind: the sender's send-time re-check depends on it.
    pub kind: StepKind,
    /// The slot the step is about: a reschedule makes new keys, never re-uses old ones.
    pub slot_start: Timestamp,
    /// Priority under a backlog (lower first).
    pub lane: i64,
    /// Configured template key.
    pub template: String,
    /// When to send.
    pub due: Timestamp,
    /// Never send at or after this (a message delayed by an outage must not arrive too late).
    pub expires: Timestamp,
    /// `Pending` or `Dropped`.
    pub state: JobState,
    /// Why it was dropped (shown by `medrelay explain`; never PHI).
    pub state_reason: Option<String>,
    /// Why it is due when it is: its offset, and a quiet-hours move.
    pub plan_note: Option<String>,
}

/// A job claimed for sending (now in state `sending`).
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub appointment_id: i64,
    pub step: String,
    /// `None`: a kind this build does not know (written by a newer medrelay); never sent.
    pub kind: Option<StepKind>,
    pub slot_start: Timestamp,
    pub template: String,
    pub expires: Timestamp,
    pub attempts: i64,
}

/// The stored appointment, rebuilt for rendering and checks.
#[derive(Debug, Clone)]
pub struct AppointmentRecord {
    pub id: i64,
    pub revision: i64,
    pub appointment: Appointment,
    pub contact_hash: Option<String>,
    pub phone_problem: Option<String>,
    pub ehr_consent_at: Timestamp,
    /// The feed whose input set the EHR consent signal (for `explain`).
    pub ehr_consent_feed: Option<String>,
    /// The feed whose input set the protection flag.
    pub protected_feed: Option<String>,
    pub patient_cancelled: bool,
}

/// How a send attempt ended.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// Accepted by WhatsApp.
    Sent {
        wamid: String,
        body: String,
        contact_hash: String,
        /// The recipient's country calling code (the rate table's key; not the number).
        calling_code: Option<u16>,
    },
    /// Try again at `at`.
    Retry { at: Timestamp, reason: String },
    /// Not attempted (the recipient's pair limit was not ready): back to pending at `at` without
    /// counting an attempt, so later backoffs are not stretched.
    Deferred { at: Timestamp, reason: String },
    /// Final, with the state (`failed`, `skipped`, `withdrawn`, `dropped`) and the reason.
    Final { state: JobState, reason: String },
}

fn status_of(s: &str) -> AppointmentStatus {
    AppointmentStatus::from_code(s).unwrap_or(AppointmentStatus::EnteredInError)
}

impl Store {
    /// Appointments whose plan is out of date, oldest first.
    pub async fn appointments_to_plan(&self, limit: i64) -> StoreResult<Vec<PlanInput>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT a.id, a.revision, a.status, a.start_at, a.end_at, a.time_unknown, a.site, a.time_zone, \
             a.patient_cancelled_at, a.service_type, a.location_rev, \
             CASE WHEN a.location_rev = 0 THEN NULL ELSE \
               (SELECT o.state FROM outbox o WHERE o.appointment_id = a.id AND o.slot_start = a.start_at \
                AND o.kind = 'confirmation' ORDER BY o.state = 'pending' DESC LIMIT 1) END AS confirmation_state \
             FROM appointments a WHERE a.needs_plan = 1 ORDER BY a.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| PlanInput {
                appointment_id: r.get("id"),
                revision: r.get("revision"),
                status: status_of(r.get("status")),
                start: ts(r.get("start_at")),
                end: r.get::<Option<i64>, _>("end_at").map(ts),
                time_unknown: r.get::<i64, _>("time_unknown") != 0,
                site: r.get("site"),
                time_zone: r.get("time_zone"),
                patient_cancelled: r.get::<Option<i64>, _>("patient_cancelled_at").is_some(),
                service_type: r.get::<Option<String>, _>("service_type").map(Phi::new),
                location_rev: r.get("location_rev"),
                confirmation_state: r.get("confirmation_state"),
            })
            .collect())
    }

    /// Stores planned steps and marks the planned revisions as done, in one transaction. A step that
    /// already exists for the same slot is left alone (no duplicate message), unless it had been
    /// withdrawn (an appointment moved away and back), in which case it is re-armed.
    pub async fn save_plan(
        &self,
        planned: &[(i64, i64)],
        jobs: &[NewJob],
        now: Timestamp,
    ) -> StoreResult<u64> {
        let now_s = secs(now);
        // A plan of many appointments is a bulk write: a transaction of its own on SQLite (see
        // `Writer::begin_alone`); a few share the group commit.
        let mut tx = if jobs.len() + planned.len() > 64 {
            self.write_tx_alone().await?
        } else {
            self.write_tx().await?
        };
        let mut created = 0;
        for chunk in jobs.chunks(500) {
            created += on_tx!(tx, |c| {
                let mut q = QueryBuilder::new(
                    "INSERT INTO outbox (appointment_id, step, kind, slot_start, revision, lane, template, due_at, expires_at, \
                 next_attempt_at, state, state_reason, plan_note, created_at, updated_at) ",
                );
                q.push_values(chunk, |mut b, j| {
                    b.push_bind(j.appointment_id)
                        .push_bind(j.step.clone())
                        .push_bind(j.kind.as_str())
                        .push_bind(secs(j.slot_start))
                        .push_bind(j.revision)
                        .push_bind(j.lane)
                        .push_bind(j.template.clone())
                        .push_bind(secs(j.due))
                        .push_bind(secs(j.expires))
                        .push_bind(secs(j.due))
                        .push_bind(j.state.as_str())
                        .push_bind(j.state_reason.clone())
                        .push_bind(j.plan_note.clone())
                        .push_bind(now_s)
                        .push_bind(now_s);
                });
                q.push(
                " ON CONFLICT (appointment_id, step, slot_start) DO UPDATE SET \
                 revision = excluded.revision, due_at = excluded.due_at, expires_at = excluded.expires_at, \
                 next_attempt_at = excluded.next_attempt_at, state = excluded.state, \
                 state_reason = excluded.state_reason, plan_note = excluded.plan_note, updated_at = excluded.updated_at \
                 WHERE outbox.state = 'withdrawn'",
            );
                q.build().execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
        }
        if !planned.is_empty() {
            // One statement: each planned (id, revision) is looked up by rowid. A revision that
            // changed meanwhile keeps needs_plan and is planned again.
            let pairs: Vec<[i64; 2]> = planned.iter().map(|(a, r)| [*a, *r]).collect();
            on_tx!(tx, |c, pg| {
                sqlx::query(if pg {
                "UPDATE appointments SET needs_plan = 0 \
                 FROM (SELECT (e->>0)::BIGINT AS id, (e->>1)::BIGINT AS rev \
                       FROM jsonb_array_elements($1::jsonb) e) AS p \
                 WHERE appointments.id = p.id AND appointments.revision = p.rev AND appointments.needs_plan = 1"
            } else {
                "UPDATE appointments SET needs_plan = 0 \
                 FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS rev \
                       FROM json_each($1)) AS p \
                 WHERE appointments.id = p.id AND appointments.revision = p.rev AND appointments.needs_plan = 1"
            })
            .bind(serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
        }
        if !planned.is_empty() {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "scheduler",
                "plan",
                &format!("appointments:{}", planned.len()),
                json!({"steps_stored": created}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(created)
    }

    /// Claims up to `limit` due jobs (nearest-term lanes first) by moving them to `sending`.
    pub async fn claim_due(&self, now: Timestamp, limit: i64) -> StoreResult<Vec<ClaimedJob>> {
        let mut tx = self.write_tx().await?;
        // PostgreSQL: instances claiming at once skip each other's locked rows instead of waiting
        // for them (and a row one claims is never claimed twice: the claim is the state change).
        let rows = on_tx!(tx, |c, pg| {
            sqlx::query(if pg {
            "UPDATE outbox SET state = 'sending', sending_since = $1, attempts = attempts + 1, updated_at = $1 \
             WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= $1 AND next_attempt_at <= $1 \
                          ORDER BY lane, due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, appointment_id, step, kind, slot_start, template, expires_at, attempts, lane, due_at"
            } else {
            "UPDATE outbox SET state = 'sending', sending_since = $1, attempts = attempts + 1, updated_at = $1 \
             WHERE id IN (SELECT id FROM outbox WHERE state = 'pending' AND due_at <= $1 AND next_attempt_at <= $1 \
                          ORDER BY lane, due_at, id LIMIT $2) \
             RETURNING id, appointment_id, step, kind, slot_start, template, expires_at, attempts, lane, due_at"
            })
        .bind(secs(now))
        .bind(limit)
        .fetch_all(&mut *c).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        tx.commit().await?;
        // RETURNING gives no order: the batch is sent in the order it was chosen (lane, then due
        // time), so that within a batch too a nearer-term message goes first (the messaging limit
        // and the pacer spend their budget in that order).
        let mut rows: Vec<_> = rows.iter().collect();
        rows.sort_by_key(|r| {
            (
                r.get::<i64, _>("lane"),
                r.get::<i64, _>("due_at"),
                r.get::<i64, _>("id"),
            )
        });
        let jobs: Vec<ClaimedJob> = rows
            .into_iter()
            .map(|r| ClaimedJob {
                id: r.get("id"),
                appointment_id: r.get("appointment_id"),
                step: r.get("step"),
                kind: StepKind::from_name(r.get("kind")),
                slot_start: ts(r.get("slot_start")),
                template: r.get("template"),
                expires: ts(r.get("expires_at")),
                attempts: r.get("attempts"),
            })
            .collect();
        Ok(jobs)
    }

    /// Puts jobs left in `sending` for longer than `older_than` back to pending (after a crash). The
    /// WhatsApp layer narrows the duplicate window further by reconciling status webhooks first.
    pub async fn release_stale_sending(&self, older_than: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let released = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE outbox SET state = 'pending', state_reason = 'released after an interrupted send', \
             next_attempt_at = $1 WHERE state = 'sending' AND sending_since < $1",
        )
        .bind(secs(older_than))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(released)
    }

    /// Loads an appointment for rendering and send-time checks.
    pub async fn load_appointment(&self, id: i64) -> StoreResult<Option<AppointmentRecord>> {
        let Some(r) = on_db!(self, |db| sqlx::query(
            "SELECT * FROM appointments WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(db)
        .await
        .map(|v| v.map(super::StoredRow::from)))?
        else {
            return Ok(None);
        };
        let phi = |col: &str| r.get::<Option<String>, _>(col).map(Phi::new);
        let phone: Option<String> = r.get("phone_e164");
        let appointment = Appointment {
            key: AppointmentKey {
                source: r.get("source"),
                id: r.get("filler_id"),
            },
            placer_id: r.get("placer_id"),
            status: status_of(r.get("status")),
            start: ts(r.get("start_at")),
            end: r.get::<Option<i64>, _>("end_at").map(ts),
            time_unknown: r.get::<i64, _>("time_unknown") != 0,
            site: r.get("site"),
            time_zone: r.get("time_zone"),
            location: r.get("location"),
            practitioner: r.get("practitioner"),
            service_type: phi("service_type"),
            reason: phi("reason"),
            patient: Patient {
                id: phi("patient_ref"),
                given_name: phi("given_name"),
                family_name: phi("family_name"),
                phones: phone
                    .map(|p| ContactPhone {
                        e164: Some(Phi::new(p)),
                        unusable: None,
                        use_: PhoneUse::Mobile,
                        rank: 0,
                    })
                    .into_iter()
                    .collect(),
                preferred_language: r.get("language"),
                protected: Some(r.get::<i64, _>("protected") != 0),
            },
            ehr_consent: match r.get::<Option<&str>, _>("ehr_consent") {
                Some("opt_in") => Some(EhrConsent::OptIn),
                Some("opt_out") => Some(EhrConsent::OptOut),
                _ => None,
            },
        };
        Ok(Some(AppointmentRecord {
            id,
            revision: r.get("revision"),
            appointment,
            contact_hash: r.get("contact_hash"),
            phone_problem: r.get("phone_problem"),
            // When the EHR value last changed (an unchanged value repeated by a later export is
            // an old grant, which a newer revocation beats).
            ehr_consent_at: Timestamp::from_microsecond(
                r.get::<Option<i64>, _>("ehr_consent_at_us")
                    .unwrap_or_else(|| r.get("sv_at_us")),
            )
            .unwrap_or(Timestamp::UNIX_EPOCH),
            ehr_consent_feed: r.get("ehr_consent_feed"),
            protected_feed: r.get("protected_feed"),
            patient_cancelled: r.get::<Option<i64>, _>("patient_cancelled_at").is_some(),
        }))
    }

    /// Records how a claimed job ended (and the message, when sent), with an audit record.
    pub async fn finish_job(
        &self,
        job: &ClaimedJob,
        outcome: &JobOutcome,
        now: Timestamp,
    ) -> StoreResult<()> {
        let now_s = secs(now);
        let mut tx = self.write_tx().await?;
        match outcome {
            JobOutcome::Sent {
                wamid,
                body,
                contact_hash,
                calling_code,
            } => {
                on_tx!(tx, |c| {
                    sqlx::query(
                    "UPDATE outbox SET state = 'sent', wamid = $1, state_reason = NULL, updated_at = $2 WHERE id = $3",
                )
                .bind(wamid)
                .bind(now_s)
                .bind(job.id)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
                on_tx!(tx, |c| {
                    sqlx::query(
                    "INSERT INTO messages (job_id, wamid, contact_hash, body, sent_at, status, status_rank, calling_code) \
                     VALUES ($1, $2, $3, $4, $5, 'accepted', 0, $6) ON CONFLICT (wamid) DO NOTHING",
                )
                .bind(job.id)
                .bind(wamid)
                .bind(contact_hash)
                .bind(body)
                .bind(now_s)
                .bind(calling_code.map(i64::from))
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
                audit::append(
                    &mut tx,
                    &self.keys,
                    now,
                    "sender",
                    "send",
                    &format!("job:{}", job.id),
                    json!({"wamid": wamid, "contact": contact_hash, "step": job.step, "template": job.template}),
                )
                .await?;
            }
            JobOutcome::Retry { at, reason } => {
                on_tx!(tx, |c| {
                    sqlx::query(
                    "UPDATE outbox SET state = 'pending', next_attempt_at = $1, state_reason = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(secs(*at))
                .bind(reason)
                .bind(now_s)
                .bind(job.id)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
            }
            JobOutcome::Deferred { at, reason } => {
                on_tx!(tx, |c| {
                    sqlx::query(
                    "UPDATE outbox SET state = 'pending', attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END, next_attempt_at = $1, \
                     state_reason = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(secs(*at))
                .bind(reason)
                .bind(now_s)
                .bind(job.id)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
            }
            JobOutcome::Final { state, reason } => {
                on_tx!(tx, |c| {
                    sqlx::query(
                    "UPDATE outbox SET state = $1, state_reason = $2, updated_at = $3 WHERE id = $4",
                )
                .bind(state.as_str())
                .bind(reason)
                .bind(now_s)
                .bind(job.id)
                .execute(&mut *c).await.map(|r| r.rows_affected())
                })?;
                audit::append(
                    &mut tx,
                    &self.keys,
                    now,
                    "sender",
                    state.as_str(),
                    &format!("job:{}", job.id),
                    json!({"reason": reason, "step": job.step}),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }
}
