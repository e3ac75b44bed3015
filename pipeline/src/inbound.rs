//! Inbound WhatsApp traffic: delivery statuses, quick-reply taps, keywords and free text.
//!
//! [`Inbound::receive`] stores the raw body and returns once it is durable: that is when the webhook
//! endpoint may answer 200. [`Inbound::process_pending`] then applies stored bodies; re-delivered
//! webhooks (same message id, same status) change nothing.

use std::sync::Arc;

use jiff::Timestamp;
use medrelay_mapping::AppointmentStatus;
use medrelay_mapping::consent::{ConsentSource, Purpose};
use medrelay_mapping::reply::{
    ButtonPayload, PayloadError, ReplyAction, TextIntent, classify_text,
};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::Compiled;
use crate::store::inbound::NewReply;
use crate::store::{Store, StoreResult};
use crate::whatsapp::webhook::{InboundContent, InboundMessage, parse};
use crate::whatsapp::{SendError, WhatsAppTransport, classify, text_message};

/// What processing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundReport {
    pub webhooks: u64,
    pub statuses_applied: u64,
    pub replies: u64,
    pub duplicates: u64,
    pub unreadable: u64,
}

/// Handles inbound webhooks.
pub struct Inbound {
    store: Store,
    config: Arc<Compiled>,
    transport: Arc<dyn WhatsAppTransport>,
    clock: Arc<dyn Clock>,
}

impl Inbound {
    /// An inbound handler answering patients through `transport`.
    pub fn new(
        store: Store,
        config: Arc<Compiled>,
        transport: Arc<dyn WhatsAppTransport>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Inbound {
            store,
            config,
            transport,
            clock,
        }
    }

    /// Stores a raw (already signature-checked) body. Returns once it is committed.
    pub async fn receive(&self, body: &[u8]) -> StoreResult<i64> {
        self.store.store_webhook(body, self.clock.now()).await
    }

    /// Applies every stored, unprocessed webhook.
    pub async fn process_pending(&self) -> StoreResult<InboundReport> {
        let mut report = InboundReport::default();
        for (id, body) in self.store.unprocessed_webhooks().await? {
            report.webhooks += 1;
            match parse(&body) {
                Ok(webhook) => {
                    for s in &webhook.statuses {
                        let job = s
                            .callback
                            .as_deref()
                            .and_then(|c| c.strip_prefix("job:"))
                            .and_then(|j| j.parse().ok());
                        let at = Timestamp::from_second(s.timestamp).unwrap_or(self.clock.now());
                        if self
                            .store
                            .apply_status(
                                &s.wamid,
                                &s.status,
                                at,
                                s.error_code,
                                job,
                                self.clock.now(),
                            )
                            .await?
                        {
                            report.statuses_applied += 1;
                        }
                        if s.status == "failed" {
                            self.on_failed_status(s.error_code, job, &s.wamid).await?;
                        }
                    }
                    for m in &webhook.messages {
                        if self.handle_message(m).await? {
                            report.replies += 1;
                        } else {
                            report.duplicates += 1;
                        }
                    }
                    self.store.mark_webhook(id, None, self.clock.now()).await?;
                }
                Err(e) => {
                    report.unreadable += 1;
                    warn!(webhook = id, error = %e, "stored webhook could not be read; kept for review");
                    self.store
                        .mark_webhook(id, Some(&e.to_string()), self.clock.now())
                        .await?;
                }
            }
        }
        Ok(report)
    }

    /// A `failed` status goes through the same taxonomy as a synchronous error: permanent -> the step
    /// failed and the EHR hears "could not notify"; temporary -> queued again; template or account
    /// problems -> an alert for staff.
    async fn on_failed_status(
        &self,
        code: Option<i64>,
        callback_job: Option<i64>,
        wamid: &str,
    ) -> StoreResult<()> {
        let now = self.clock.now();
        let job = match callback_job {
            Some(j) => Some(j),
            None => self.store.job_for_wamid(wamid).await?,
        };
        let Some(job) = job else {
            return Ok(());
        };
        match classify(400, code) {
            e @ SendError::Permanent { .. } => {
                self.store
                    .record_not_notified(job, &format!("delivery failed: {e}"), now)
                    .await?;
            }
            e @ (SendError::Retry { .. } | SendError::RecipientBusy { .. }) => {
                let at = now + crate::send::backoff(job, 1);
                self.store
                    .requeue_failed(job, at, &format!("delivery failed, will retry: {e}"), now)
                    .await?;
            }
            e @ (SendError::HaltTemplate { .. } | SendError::HaltAll { .. }) => {
                self.store
                    .raise_alert("delivery_failed", &format!("job {job}: {e}"), now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Stores and processes one body (the simulator and tests deliver this way).
    pub async fn deliver(&self, body: &[u8]) -> StoreResult<InboundReport> {
        self.receive(body).await?;
        self.process_pending().await
    }

    async fn answer(&self, to: &str, text: &str, context: &str) {
        if let Err(e) = self
            .transport
            .send(&text_message(to, text, Some(context)))
            .await
        {
            warn!(error = %e, "service reply could not be sent");
        }
    }

    /// Handles one inbound message. Returns false for a re-delivery.
    async fn handle_message(&self, m: &InboundMessage) -> StoreResult<bool> {
        let now = self.clock.now();
        let contact_hash = self.store.keys().contact_hash(&m.from);
        let received_at = Timestamp::from_second(m.timestamp).unwrap_or(now);
        let mut reply = NewReply {
            wa_message_id: m.id.clone(),
            contact_hash: contact_hash.clone(),
            context_wamid: m.context_id.clone(),
            job_id: None,
            appointment_id: None,
            kind: "other",
            action: None,
            outcome: "ignored",
            text: None,
            received_at,
        };
        let mut answer: Option<&str> = None;
        match &m.content {
            InboundContent::Button { payload } | InboundContent::Interactive { id: payload } => {
                reply.kind = "button";
                match ButtonPayload::verify(payload, self.store.keys().button_key(), now) {
                    Ok(p) => {
                        reply.job_id = Some(p.job_id);
                        reply.action = Some(p.action.as_str().into());
                        let (outcome, appointment) = self.judge_tap(&p, &contact_hash, now).await?;
                        reply.outcome = outcome;
                        reply.appointment_id = appointment;
                        if outcome == "stale" {
                            answer = Some(&self.config.reply_texts.stale);
                        }
                    }
                    Err(PayloadError::Expired) => {
                        reply.outcome = "stale";
                        answer = Some(&self.config.reply_texts.stale);
                    }
                    Err(_) => reply.outcome = "invalid",
                }
            }
            InboundContent::Text { body } => {
                reply.kind = "text";
                match classify_text(body) {
                    TextIntent::Stop => {
                        reply.action = Some("stop".into());
                        reply.outcome = "consent";
                        self.store
                            .record_consent(
                                &contact_hash,
                                &[Purpose::Logistics, Purpose::FollowUp],
                                false,
                                ConsentSource::Patient,
                                "patient:whatsapp",
                                "patient sent an opt-out keyword",
                                now,
                            )
                            .await?;
                        answer = Some(&self.config.reply_texts.stopped);
                    }
                    TextIntent::Start => {
                        reply.action = Some("start".into());
                        reply.outcome = "consent";
                        self.store
                            .record_consent(
                                &contact_hash,
                                &[Purpose::Logistics, Purpose::FollowUp],
                                true,
                                ConsentSource::Patient,
                                "patient:whatsapp",
                                "patient sent an opt-in keyword",
                                now,
                            )
                            .await?;
                        answer = Some(&self.config.reply_texts.started);
                    }
                    TextIntent::Emergency => {
                        reply.action = Some("emergency".into());
                        reply.outcome = "safety_reply";
                        reply.text = Some(body.clone());
                        answer = Some(&self.config.reply_texts.emergency);
                    }
                    TextIntent::Other => {
                        reply.action = Some("free_text".into());
                        reply.outcome = "staff_queue";
                        reply.text = Some(body.clone());
                    }
                }
            }
            InboundContent::Other { .. } => {}
        }
        let new = self.store.insert_reply(&reply, now).await?;
        if !new {
            return Ok(false);
        }
        info!(contact = %contact_hash, kind = reply.kind, action = ?reply.action, outcome = reply.outcome, "patient reply");
        if reply.outcome == "safety_reply" {
            self.store
                .raise_alert(
                    "emergency_phrase",
                    &format!("emergency phrase from contact {contact_hash}: call the patient"),
                    now,
                )
                .await?;
        }
        if let Some(text) = answer {
            self.answer(&m.from, text, &m.id).await;
        }
        Ok(true)
    }

    /// Decides whether a verified tap still refers to the appointment as it is now.
    async fn judge_tap(
        &self,
        p: &ButtonPayload,
        contact_hash: &str,
        now: Timestamp,
    ) -> StoreResult<(&'static str, Option<i64>)> {
        let Some(job) = self.store.job_ref(p.job_id).await? else {
            return Ok(("invalid", None));
        };
        let Some(rec) = self.store.load_appointment(job.appointment_id).await? else {
            return Ok(("invalid", None));
        };
        if rec.contact_hash.as_deref() != Some(contact_hash) {
            return Ok(("invalid", Some(rec.id)));
        }
        let a = &rec.appointment;
        let stale = a.start != job.slot_start
            || a.status != AppointmentStatus::Booked
            || now >= a.start
            || (rec.patient_cancelled && p.action != ReplyAction::Cancel);
        if stale {
            return Ok(("stale", Some(rec.id)));
        }
        // Confirming an appointment already confirmed (a tap on the 2 h reminder after one on the
        // 48 h reminder) changes nothing for the EHR: recorded, not written back again.
        let previous = self
            .store
            .latest_accepted_action(rec.id, job.slot_start)
            .await?;
        if previous.as_deref() == Some(p.action.as_str()) {
            return Ok(("repeat", Some(rec.id)));
        }
        Ok(("accepted", Some(rec.id)))
    }
}
