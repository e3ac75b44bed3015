//! Inbound WhatsApp traffic: delivery statuses, quick-reply taps, keywords and free text.
//!
//! [`Inbound::receive`] stores the raw body and returns once it is durable: that is when the webhook
//! endpoint may answer 200. [`Inbound::process_pending`] then applies stored bodies; re-delivered
//! webhooks (same message id, same status) change nothing.

use std::sync::Arc;

use jiff::Timestamp;
use medrelay_mapping::AppointmentStatus;
use medrelay_mapping::consent::{ConsentSource, Purpose};
use medrelay_mapping::plan::StepKind;
use medrelay_mapping::reply::{
    ButtonPayload, Choice, PayloadError, Rating, ReplyAction, TextIntent, classify_text,
};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::config::Compiled;
use crate::config::RecategorisedPolicy;
use crate::store::inbound::{JobRef, NewReply};
use crate::store::inbox::{ConversationReason, PatientMessage};
use crate::store::outbox::AppointmentRecord;
use crate::store::survey::{NewRating, SurveyQuestion, SurveyRecord};
use crate::store::{Store, StoreResult};
use crate::whatsapp::webhook::{
    AccountEvent, InboundContent, InboundMessage, StatusUpdate, Webhook, parse,
};
use crate::whatsapp::{
    ListRow, SendError, WhatsAppTransport, classify, list_message, text_message,
};

/// What a survey answer leads to once its reply is stored (sent and filed only for a new reply,
/// so that a re-delivered webhook asks nothing twice).
#[derive(Debug, Default)]
struct SurveyNext {
    /// The survey answered.
    survey: Option<SurveyRecord>,
    /// The question to ask next, or the thank-you (`None` in it).
    ask: Option<Option<SurveyQuestion>>,
    /// A note for the inbox: the answer is low (or extends a survey conversation already open).
    file: Option<String>,
}

/// Alert kind for a configured template that WhatsApp paused, disabled, rejected or flagged.
pub const TEMPLATE_STATUS_ALERT: &str = "template_status";
/// Alert kind for a configured template recategorised (or about to be) away from UTILITY.
pub const TEMPLATE_CATEGORY_ALERT: &str = "template_recategorised";
/// Alert kind for the business number flagged or its messaging limit lowered.
pub const NUMBER_QUALITY_ALERT: &str = "phone_number_quality";
/// Alert kind for messages of a template that WhatsApp accepted and then failed with an
/// account- or template-level error (once per template; resolved by its next delivered message).
pub const DELIVERY_FAILED_ALERT: &str = "delivery_failed";

/// Template events after which WhatsApp refuses the template: its steps are held.
const TEMPLATE_STOPPED: &[&str] = &[
    "PAUSED",
    "DISABLED",
    "REJECTED",
    "PENDING_DELETION",
    "DELETED",
    "ARCHIVED",
];
/// Template events after which it can be sent again.
const TEMPLATE_BACK: &[&str] = &["APPROVED", "REINSTATED", "UNPAUSED"];

/// Status-only webhooks applied per transaction: enough to amortise a commit (measured: 32 to 256
/// apply alike, BENCHMARKS.md "Status webhooks"), small enough that a transaction stays short next
/// to the other writers (on SQLite they wait for it).
const STATUS_RUN: usize = 64;

/// The job a status names in `biz_opaque_callback_data` (`job:<id>`), if any.
fn callback_job(s: &StatusUpdate) -> Option<i64> {
    s.callback
        .as_deref()
        .and_then(|c| c.strip_prefix("job:"))
        .and_then(|j| j.parse().ok())
}

/// What processing did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboundReport {
    pub webhooks: u64,
    pub statuses_applied: u64,
    pub replies: u64,
    pub duplicates: u64,
    pub unreadable: u64,
    /// Template and business-number notifications applied.
    pub account_events: u64,
}

/// Handles inbound webhooks.
pub struct Inbound {
    store: Store,
    config: Arc<Compiled>,
    transport: Arc<dyn WhatsAppTransport>,
    clock: Arc<dyn Clock>,
    /// Status-only webhooks applied per transaction ([`STATUS_RUN`]; 1 is one at a time).
    status_run: usize,
}

impl Inbound {
    /// The same handler under a new configuration (texts, templates, policies: a reload).
    pub fn with_config(&self, config: Arc<Compiled>) -> Inbound {
        Inbound {
            store: self.store.clone(),
            config,
            transport: self.transport.clone(),
            clock: self.clock.clone(),
            status_run: self.status_run,
        }
    }

    /// The same handler applying at most `n` status-only webhooks per transaction (at least 1):
    /// `medrelay bench webhooks --status-run 1` measures the one-at-a-time baseline with it.
    pub fn with_status_run(mut self, n: usize) -> Inbound {
        self.status_run = n.max(1);
        self
    }

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
            status_run: STATUS_RUN,
        }
    }

    /// Stores a raw (already signature-checked) body. Returns once it is committed.
    pub async fn receive(&self, body: &[u8]) -> StoreResult<i64> {
        self.store.store_webhook(body, self.clock.now()).await
    }

    /// Applies every stored, unprocessed webhook, in order.
    ///
    /// A run of webhooks that carry delivery statuses only (WhatsApp's bulk of traffic) is applied
    /// in one transaction and marked processed in a second, so that applying keeps pace with storing
    /// under load; any other webhook (a reply, an account event, an unreadable body) is handled on
    /// its own as before. A crash between the two commits reprocesses the run: merging a status is
    /// monotonic and the follow-ups of a failed status are idempotent, so nothing is applied twice.
    pub async fn process_pending(&self) -> StoreResult<InboundReport> {
        let mut report = InboundReport::default();
        let pending = self.store.unprocessed_webhooks().await?;
        let mut run: Vec<(i64, Webhook)> = Vec::new();
        for (id, body) in pending {
            report.webhooks += 1;
            match parse(&body) {
                Ok(webhook) if webhook.account.is_empty() && webhook.messages.is_empty() => {
                    run.push((id, webhook));
                    if run.len() >= self.status_run {
                        self.apply_status_run(std::mem::take(&mut run), &mut report)
                            .await?;
                    }
                }
                parsed => {
                    if !run.is_empty() {
                        self.apply_status_run(std::mem::take(&mut run), &mut report)
                            .await?;
                    }
                    match parsed {
                        Ok(webhook) => {
                            self.apply_webhook(&webhook, &mut report).await?;
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
            }
        }
        if !run.is_empty() {
            self.apply_status_run(run, &mut report).await?;
        }
        Ok(report)
    }

    /// One webhook of any kind: statuses, account events, then patient messages.
    async fn apply_webhook(
        &self,
        webhook: &Webhook,
        report: &mut InboundReport,
    ) -> StoreResult<()> {
        for s in &webhook.statuses {
            let job = callback_job(s);
            let changed = self.store.apply_status(s, job, self.clock.now()).await?;
            self.after_status(s, job, changed, report).await?;
        }
        for e in &webhook.account {
            self.handle_account(e).await?;
            report.account_events += 1;
        }
        for m in &webhook.messages {
            if self.handle_message(m).await? {
                report.replies += 1;
            } else {
                report.duplicates += 1;
            }
        }
        Ok(())
    }

    /// Webhooks with statuses only: every status in one transaction, the follow-ups, then the
    /// webhooks marked processed together.
    async fn apply_status_run(
        &self,
        run: Vec<(i64, Webhook)>,
        report: &mut InboundReport,
    ) -> StoreResult<()> {
        let statuses: Vec<(&StatusUpdate, Option<i64>)> = run
            .iter()
            .flat_map(|(_, w)| w.statuses.iter().map(|s| (s, callback_job(s))))
            .collect();
        let changed = self
            .store
            .apply_statuses(&statuses, self.clock.now())
            .await?;
        for ((s, job), changed) in statuses.iter().zip(changed) {
            self.after_status(s, *job, changed, report).await?;
        }
        let ids: Vec<i64> = run.iter().map(|(id, _)| *id).collect();
        self.store.mark_webhooks(&ids, self.clock.now()).await
    }

    /// What follows a merged status: a delivery resolves its template's delivery alert; a failure
    /// is acted on (also when it changed nothing: it may be the reprocessing after a crash).
    async fn after_status(
        &self,
        s: &StatusUpdate,
        job: Option<i64>,
        changed: bool,
        report: &mut InboundReport,
    ) -> StoreResult<()> {
        // A staff reply from the inbox (`reply:<id>`): its conversation message records it.
        if let Some(reply) = crate::inbox::callback_reply(s.callback.as_deref()) {
            if changed {
                report.statuses_applied += 1;
            }
            return self
                .store
                .apply_staff_reply_status(reply, &s.wamid, &s.status, s.error_code)
                .await;
        }
        if changed {
            report.statuses_applied += 1;
            if matches!(s.status.as_str(), "delivered" | "read") {
                self.delivered(job, &s.wamid).await?;
            }
        }
        if s.status == "failed" {
            self.on_failed_status(s.error_code, job, &s.wamid).await?;
        }
        Ok(())
    }

    /// A template or business-number notification: alerts that fire once per incident and
    /// recover once, and holds on templates WhatsApp will refuse (the sender defers their steps
    /// instead of failing them). Templates this installation does not use are only logged.
    async fn handle_account(&self, e: &AccountEvent) -> StoreResult<()> {
        let now = self.clock.now();
        let used = |name: &str| self.config.templates.values().any(|t| t.name == name);
        match e {
            AccountEvent::TemplateStatus {
                name,
                language,
                event,
                reason,
            } => {
                if !used(name) {
                    info!(template = %name, %event, "status of a template this installation does not use");
                    return Ok(());
                }
                let key = format!("template {name}");
                let why = reason
                    .as_deref()
                    .filter(|r| *r != "NONE")
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                if TEMPLATE_STOPPED.contains(&event.as_str()) {
                    warn!(template = %name, %event, "WhatsApp stopped a configured template: its steps are held");
                    let reason = format!("WhatsApp: {event}{why}");
                    self.store
                        .hold_template(name, "status", &reason, now)
                        .await?;
                    self.store
                        .raise_incident(
                            TEMPLATE_STATUS_ALERT,
                            &key,
                            &format!(
                                "{key} ({language}): WhatsApp says {event}{why}; its steps wait until WhatsApp approves or reinstates it"
                            ),
                            now,
                        )
                        .await?;
                } else if event == "FLAGGED" {
                    self.store
                        .raise_incident(
                            TEMPLATE_STATUS_ALERT,
                            &key,
                            &format!(
                                "{key} ({language}): FLAGGED by WhatsApp (negative feedback; it may be paused next)"
                            ),
                            now,
                        )
                        .await?;
                } else if TEMPLATE_BACK.contains(&event.as_str()) {
                    if self
                        .store
                        .release_template(name, "status", &format!("WhatsApp: {event}"), now)
                        .await?
                    {
                        info!(template = %name, %event, "template released");
                    }
                    self.store
                        .resolve_incident(TEMPLATE_STATUS_ALERT, &key, now)
                        .await?;
                }
            }
            AccountEvent::TemplateCategory {
                name,
                language,
                previous,
                new,
                upcoming,
                effective_at,
            } => {
                if !used(name) {
                    info!(template = %name, category = %new, "category of a template this installation does not use");
                    return Ok(());
                }
                let key = format!("template {name}");
                let halt = self.config.on_recategorised == RecategorisedPolicy::Halt;
                let consequence = "appointment messages are UTILITY: as MARKETING it is priced differently and not delivered to +1 numbers (131049)";
                match upcoming {
                    Some(next) if next != "UTILITY" => {
                        let when = effective_at
                            .and_then(|t| Timestamp::from_second(t).ok())
                            .map(|t| format!(" at {t}"))
                            .unwrap_or_default();
                        self.store
                            .raise_incident(
                                TEMPLATE_CATEGORY_ALERT,
                                &key,
                                &format!(
                                    "{key} ({language}): WhatsApp will recategorise it {new} -> {next}{when}; {consequence}"
                                ),
                                now,
                            )
                            .await?;
                    }
                    Some(_) => {}
                    None if new != "UTILITY" => {
                        let from = previous.as_deref().unwrap_or("its category");
                        let action = if halt {
                            "held by policy (on_recategorised = \"halt\") until it is UTILITY again"
                        } else {
                            "still sent (on_recategorised = \"warn\")"
                        };
                        warn!(template = %name, category = %new, halt, "configured template recategorised");
                        if halt {
                            self.store
                                .hold_template(
                                    name,
                                    "category",
                                    &format!("recategorised {new}"),
                                    now,
                                )
                                .await?;
                        }
                        self.store
                            .raise_incident(
                                TEMPLATE_CATEGORY_ALERT,
                                &key,
                                &format!(
                                    "{key} ({language}): recategorised {from} -> {new}; {consequence}; {action}"
                                ),
                                now,
                            )
                            .await?;
                    }
                    None => {
                        self.store
                            .release_template(name, "category", "UTILITY again", now)
                            .await?;
                        self.store
                            .resolve_incident(TEMPLATE_CATEGORY_ALERT, &key, now)
                            .await?;
                    }
                }
            }
            AccountEvent::NumberQuality {
                display_phone_number,
                event,
                limit,
            } => {
                let key = format!("business number {display_phone_number}");
                let limit_text = limit
                    .as_deref()
                    .map(|l| format!(", messaging limit {l}"))
                    .unwrap_or_default();
                let configured = self
                    .config
                    .messaging_limit
                    .map(|n| format!(" (whatsapp.messaging_limit is {n})"))
                    .unwrap_or_default();
                // The limit the webhook states is the one the sender now spends.
                if let Some(stated) = limit
                    .as_deref()
                    .and_then(crate::whatsapp::cloud::parse_messaging_limit)
                    && self
                        .store
                        .set_messaging_limit(stated, "webhook", now)
                        .await?
                {
                    info!(limit = ?stated, "messaging limit changed (phone_number_quality_update)");
                }
                match event.as_str() {
                    "FLAGGED" | "DOWNGRADE" => {
                        warn!(%event, "business number quality dropped");
                        self.store
                            .raise_incident(
                                NUMBER_QUALITY_ALERT,
                                &key,
                                &format!(
                                    "{key}: {event}{limit_text}{configured}; fewer unique recipients may be messaged per 24 h"
                                ),
                                now,
                            )
                            .await?;
                    }
                    "UNFLAGGED" | "UPGRADE" | "THROUGHPUT_UPGRADE" => {
                        info!(%event, "business number quality recovered");
                        self.store
                            .resolve_incident(NUMBER_QUALITY_ALERT, &key, now)
                            .await?;
                    }
                    _ => info!(%event, "business number update"),
                }
            }
        }
        Ok(())
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
                // One incident per template, whatever the number of its messages that fail;
                // the next delivered message of the template ends it (`delivered`).
                let template = self.store.job_template(job).await?.unwrap_or_default();
                let key = format!("template `{template}`:");
                self.store
                    .raise_incident(
                        DELIVERY_FAILED_ALERT,
                        &key,
                        &format!("{key} delivery failed after WhatsApp accepted job {job}: {e}"),
                        now,
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// A message was delivered: its template's `delivery_failed` incident, if any, is over.
    async fn delivered(&self, callback_job: Option<i64>, wamid: &str) -> StoreResult<()> {
        if !self.store.alert_open(DELIVERY_FAILED_ALERT).await? {
            return Ok(());
        }
        let job = match callback_job {
            Some(j) => Some(j),
            None => self.store.job_for_wamid(wamid).await?,
        };
        let Some(template) = (match job {
            Some(j) => self.store.job_template(j).await?,
            None => None,
        }) else {
            return Ok(());
        };
        let key = format!("template `{template}`:");
        if self
            .store
            .resolve_incident(DELIVERY_FAILED_ALERT, &key, self.clock.now())
            .await?
            > 0
        {
            info!(%template, "messages of the template are delivered again (delivery_failed resolved)");
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
        let context = self.store.contact_context(&contact_hash).await?;
        let site = context
            .as_ref()
            .and_then(|(site, _)| self.config.sites.get(site));
        let texts = self.config.reply_texts.for_language(
            context.as_ref().and_then(|(_, l)| l.as_deref()),
            site.map(|s| s.fallback_languages.as_slice()).unwrap_or(&[]),
        );
        let mut answer: Option<&str> = None;
        let mut survey = SurveyNext::default();
        match &m.content {
            InboundContent::Button { payload }
            | InboundContent::Interactive { id: payload, .. } => {
                reply.kind = "button";
                match ButtonPayload::verify(payload, self.store.keys().button_key(), now) {
                    Ok(p) => {
                        reply.job_id = Some(p.job_id);
                        reply.action = Some(p.choice.name());
                        let (outcome, appointment) = match p.choice {
                            Choice::Reply(action) => {
                                self.judge_tap(p.job_id, action, &contact_hash, now).await?
                            }
                            Choice::Rating(_) | Choice::Score(_) => {
                                self.survey_answer(
                                    p.job_id,
                                    p.choice,
                                    &contact_hash,
                                    now,
                                    &mut survey,
                                )
                                .await?
                            }
                        };
                        reply.outcome = outcome;
                        reply.appointment_id = appointment;
                        if outcome == "stale" {
                            answer = Some(texts.stale);
                        }
                    }
                    Err(PayloadError::Expired) => {
                        reply.outcome = "stale";
                        answer = Some(texts.stale);
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
                        answer = Some(texts.stopped);
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
                        answer = Some(texts.started);
                    }
                    TextIntent::Emergency => {
                        reply.action = Some("emergency".into());
                        reply.outcome = "safety_reply";
                        reply.text = Some(body.clone());
                        answer = Some(texts.emergency);
                    }
                    TextIntent::Other => {
                        reply.action = Some("free_text".into());
                        reply.outcome = "staff_queue";
                        reply.text = Some(body.clone());
                        // The answer to a survey question just asked (a typed score, a comment).
                        if let Some(outcome) = self
                            .survey_text(body, &contact_hash, now, &mut survey)
                            .await?
                        {
                            reply.action = Some("survey_text".into());
                            reply.outcome = outcome;
                            reply.appointment_id = survey.survey.as_ref().map(|s| s.appointment_id);
                            reply.job_id = survey.survey.as_ref().map(|s| s.job_id);
                        }
                    }
                }
            }
            InboundContent::Media { .. } | InboundContent::Other { .. } => {
                reply.kind = "media";
                reply.outcome = "staff_queue";
            }
        }
        // A reaction (an emoji on one of our messages) needs no one.
        if matches!(&m.content, InboundContent::Other { kind } if kind == "reaction") {
            reply.kind = "other";
            reply.outcome = "ignored";
        }
        let new = self.store.insert_reply(&reply, now).await?;
        if !new {
            return Ok(false);
        }
        info!(contact = %contact_hash, kind = reply.kind, action = ?reply.action, outcome = reply.outcome, "patient reply");
        let conversation = self
            .file_in_inbox(m, &reply, &contact_hash, site, &texts, received_at, now)
            .await?;
        if reply.outcome == "safety_reply" {
            let link = conversation
                .map(|c| format!(" (inbox conversation {c})"))
                .unwrap_or_default();
            self.store
                .raise_alert(
                    "emergency_phrase",
                    &format!(
                        "emergency phrase from contact {contact_hash}: call the patient{link}"
                    ),
                    now,
                )
                .await?;
        }
        if let Some(text) = answer {
            self.answer(&m.from, text, &m.id).await;
        }
        self.after_survey_answer(m, survey, &texts, received_at, now)
            .await?;
        Ok(true)
    }

    /// A survey rating or score tap on job `job_id`: recorded (the first answer counts), with
    /// what to ask next in `next`. Returns the reply's outcome and appointment.
    async fn survey_answer(
        &self,
        job_id: i64,
        choice: Choice,
        contact_hash: &str,
        now: Timestamp,
        next: &mut SurveyNext,
    ) -> StoreResult<(&'static str, Option<i64>)> {
        let (job, rec) = match self.tapped(job_id, contact_hash).await? {
            Ok(found) => found,
            Err(appointment) => return Ok(("invalid", appointment)),
        };
        if job.kind != Some(StepKind::Survey) {
            return Ok(("invalid", Some(rec.id)));
        }
        let cfg = &self.config.survey;
        match choice {
            Choice::Rating(rating) => {
                let low = rating <= cfg.low_rating;
                let ask = if cfg.score {
                    Some(SurveyQuestion::Score)
                } else if cfg.comment {
                    Some(SurveyQuestion::Comment)
                } else {
                    None
                };
                let (record, new) = self
                    .store
                    .record_survey_rating(
                        &NewRating {
                            job_id,
                            appointment_id: rec.id,
                            contact_hash,
                            rating,
                            low,
                            awaiting: ask,
                        },
                        now,
                    )
                    .await?;
                if !new {
                    return Ok(("repeat", Some(rec.id)));
                }
                next.ask = Some(ask);
                if low {
                    next.file = Some(format!("Survey: rated the visit {}", rating_word(rating)));
                }
                next.survey = Some(record);
                Ok(("survey", Some(rec.id)))
            }
            Choice::Score(score) => {
                let Some(record) = self.store.survey_by_job(job_id).await? else {
                    // A score row is only ever sent after a rating.
                    return Ok(("invalid", Some(rec.id)));
                };
                self.survey_score(record, score, now, next)
                    .await
                    .map(|o| (o, Some(rec.id)))
            }
            Choice::Reply(_) => Ok(("invalid", Some(rec.id))),
        }
    }

    /// Records a 0-10 score for `record` (once) and decides what follows.
    async fn survey_score(
        &self,
        record: SurveyRecord,
        score: u8,
        now: Timestamp,
        next: &mut SurveyNext,
    ) -> StoreResult<&'static str> {
        let cfg = &self.config.survey;
        let low = score <= cfg.low_score;
        let ask = cfg.comment.then_some(SurveyQuestion::Comment);
        if !self
            .store
            .record_survey_score(record.id, score, low, ask, now)
            .await?
        {
            return Ok("repeat");
        }
        next.ask = Some(ask);
        if low || record.conversation_id.is_some() {
            next.file = Some(format!("Survey: {score} of 10 for recommending the clinic"));
        }
        next.survey = Some(record);
        Ok("survey")
    }

    /// Free text that answers the survey question the contact was just asked: a typed score
    /// (while the 0-10 list is open) or the comment. `None`: the text is not about a survey.
    async fn survey_text(
        &self,
        body: &str,
        contact_hash: &str,
        now: Timestamp,
        next: &mut SurveyNext,
    ) -> StoreResult<Option<&'static str>> {
        let since = now - self.config.survey.answer_window();
        let Some(record) = self.store.survey_awaiting(contact_hash, since).await? else {
            return Ok(None);
        };
        if record.awaiting == Some(SurveyQuestion::Score)
            && let Ok(score) = body.trim().parse::<u8>()
            && score <= 10
        {
            return self.survey_score(record, score, now, next).await.map(Some);
        }
        // Words instead of a score are the comment (asked or not, they are what the patient
        // wants to tell the clinic).
        if !self
            .store
            .record_survey_comment(record.id, body, now)
            .await?
        {
            return Ok(None);
        }
        next.ask = Some(None);
        if record.low || record.conversation_id.is_some() {
            next.file = Some(body.to_owned());
        }
        next.survey = Some(record);
        Ok(Some("survey"))
    }

    /// What follows a new survey answer: a low one (and anything said after it) in the inbox,
    /// flagged for follow-up with the site's reply SLA; then the next question or the thanks,
    /// inside the window the answer opened.
    async fn after_survey_answer(
        &self,
        m: &InboundMessage,
        next: SurveyNext,
        texts: &crate::config::Texts<'_>,
        received_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<()> {
        let Some(record) = next.survey else {
            return Ok(());
        };
        if let Some(note) = &next.file {
            let site = match self.store.load_appointment(record.appointment_id).await? {
                Some(a) => self.config.sites.get(&a.appointment.site),
                None => None,
            };
            let (_, due) = reply_clock(site, received_at);
            let (conversation, _) = self
                .store
                .file_patient_message(
                    &PatientMessage {
                        wa_message_id: &m.id,
                        contact_hash: &record.contact_hash,
                        phone_e164: &m.from,
                        reason: ConversationReason::Survey,
                        kind: "survey",
                        body: Some(note),
                        media_id: None,
                        received_at,
                        appointment_id: Some(record.appointment_id),
                    },
                    Some(due),
                    now,
                )
                .await?;
            if record.conversation_id != Some(conversation) {
                self.store
                    .set_survey_conversation(record.id, conversation, now)
                    .await?;
            }
            info!(
                conversation,
                survey = record.id,
                "low survey answer filed for follow-up"
            );
        }
        match next.ask {
            Some(Some(SurveyQuestion::Score)) => {
                let key = self.store.keys().button_key();
                let expires = now + self.config.survey.answer_window();
                let rows = score_rows(record.job_id, key, expires);
                let body = list_message(
                    &m.from,
                    texts.survey_score,
                    texts.survey_score_button,
                    &rows,
                    Some(&m.id),
                );
                if let Err(e) = self.transport.send(&body).await {
                    warn!(error = %e, "survey score list could not be sent");
                }
            }
            Some(Some(SurveyQuestion::Comment)) => {
                self.answer(&m.from, texts.survey_comment, &m.id).await;
            }
            Some(None) => self.answer(&m.from, texts.survey_thanks, &m.id).await,
            None => {}
        }
        Ok(())
    }

    /// Files a message that needs a person (free text, an emergency phrase, media) in the staff
    /// inbox, with the reply SLA of the site it most likely concerns. Returns its conversation.
    #[allow(clippy::too_many_arguments)]
    async fn file_in_inbox(
        &self,
        m: &InboundMessage,
        reply: &NewReply,
        contact_hash: &str,
        site: Option<&crate::config::CompiledSite>,
        texts: &crate::config::Texts<'_>,
        received_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<Option<i64>> {
        let (reason, kind, body, media_id) = match (&m.content, reply.outcome) {
            (InboundContent::Text { body }, "safety_reply") => (
                ConversationReason::Emergency,
                "text",
                Some(body.as_str()),
                None,
            ),
            (InboundContent::Text { body }, "staff_queue") => (
                ConversationReason::FreeText,
                "text",
                Some(body.as_str()),
                None,
            ),
            (
                InboundContent::Media {
                    kind,
                    media_id,
                    caption,
                },
                "staff_queue",
            ) => (
                ConversationReason::Media,
                kind.as_str(),
                caption.as_deref(),
                media_id.as_deref(),
            ),
            (InboundContent::Other { kind }, "staff_queue") => {
                (ConversationReason::Media, kind.as_str(), None, None)
            }
            _ => return Ok(None),
        };
        let (sla, due) = reply_clock(site, received_at);
        let (id, new) = self
            .store
            .file_patient_message(
                &PatientMessage {
                    wa_message_id: &m.id,
                    contact_hash,
                    phone_e164: &m.from,
                    reason,
                    kind,
                    body,
                    media_id,
                    received_at,
                    appointment_id: None,
                },
                Some(due),
                now,
            )
            .await?;
        info!(
            conversation = id,
            new,
            reason = reason.as_str(),
            "filed in the staff inbox"
        );
        // A new conversation is acknowledged, so that the patient knows a person will answer
        // and when (an emergency has had its safety reply instead).
        if new && reason != ConversationReason::Emergency {
            let open = site.is_none_or(|s| {
                s.opening_hours
                    .as_ref()
                    .is_none_or(|h| h.is_open(received_at, &s.zone))
            });
            let text = if open {
                texts
                    .acknowledgement
                    .replace("{within}", &crate::inbox::spoken_duration(sla))
            } else {
                texts.out_of_hours.to_owned()
            };
            if !text.trim().is_empty() {
                self.answer(&m.from, &text, &m.id).await;
            }
        }
        Ok(Some(id))
    }

    /// The job a verified payload names and its appointment, when that appointment is this
    /// contact's; else `Err` with the appointment, when known (the tap is `invalid`).
    async fn tapped(
        &self,
        job_id: i64,
        contact_hash: &str,
    ) -> StoreResult<Result<(JobRef, AppointmentRecord), Option<i64>>> {
        let Some(job) = self.store.job_ref(job_id).await? else {
            return Ok(Err(None));
        };
        let Some(rec) = self.store.load_appointment(job.appointment_id).await? else {
            return Ok(Err(None));
        };
        if rec.contact_hash.as_deref() != Some(contact_hash) {
            return Ok(Err(Some(rec.id)));
        }
        Ok(Ok((job, rec)))
    }

    /// Decides whether a verified tap still refers to the appointment as it is now.
    async fn judge_tap(
        &self,
        job_id: i64,
        action: ReplyAction,
        contact_hash: &str,
        now: Timestamp,
    ) -> StoreResult<(&'static str, Option<i64>)> {
        let (job, rec) = match self.tapped(job_id, contact_hash).await? {
            Ok(found) => found,
            Err(appointment) => return Ok(("invalid", appointment)),
        };
        let a = &rec.appointment;
        let stale = a.start != job.slot_start
            || a.status != AppointmentStatus::Booked
            || now >= a.start
            || (rec.patient_cancelled && action != ReplyAction::Cancel);
        if stale {
            return Ok(("stale", Some(rec.id)));
        }
        // Confirming an appointment already confirmed (a tap on the 2 h reminder after one on the
        // 48 h reminder) changes nothing for the EHR: recorded, not written back again.
        let previous = self
            .store
            .latest_accepted_action(rec.id, job.slot_start)
            .await?;
        if previous.as_deref() == Some(action.as_str()) {
            return Ok(("repeat", Some(rec.id)));
        }
        Ok(("accepted", Some(rec.id)))
    }
}

/// The reply SLA of `site` (60 minutes without one) and when a staff answer to a message
/// received at `received_at` is due, counted in the site's opening hours.
fn reply_clock(
    site: Option<&crate::config::CompiledSite>,
    received_at: Timestamp,
) -> (jiff::SignedDuration, Timestamp) {
    let sla = site.map_or(jiff::SignedDuration::from_mins(60), |s| s.reply_sla);
    let due = match site {
        Some(s) => crate::inbox::reply_due(received_at, sla, s.opening_hours.as_ref(), &s.zone),
        None => received_at + sla,
    };
    (sla, due)
}

/// A rating as the inbox note says it.
fn rating_word(r: Rating) -> &'static str {
    match r {
        Rating::Good => "Good",
        Rating::Ok => "OK",
        Rating::Poor => "Poor",
    }
}

/// The 0-10 list's rows, each a signed score for survey message `job_id`. A list holds at most
/// ten rows (the Cloud API's limit), so 0 and 1 share the first: both are NPS detractors, so the
/// NPS is exact; the row records 0.
fn score_rows(job_id: i64, key: &[u8], expires: Timestamp) -> Vec<ListRow> {
    let row = |score: u8, title: String| ListRow {
        id: ButtonPayload {
            job_id,
            choice: Choice::Score(score),
            expires,
        }
        .sign(key),
        title,
        description: None,
    };
    std::iter::once(row(0, "0-1".into()))
        .chain((2..=10).map(|n| row(n, n.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_score_list_fits_the_cloud_api_limit_and_covers_0_to_10() {
        let expires = "2026-06-02T00:00:00Z".parse().unwrap();
        let rows = super::score_rows(42, b"key", expires);
        assert_eq!(rows.len(), crate::whatsapp::interactive_limits::LIST_ROWS);
        let titles: Vec<&str> = rows.iter().map(|r| r.title.as_str()).collect();
        assert_eq!(
            titles,
            ["0-1", "2", "3", "4", "5", "6", "7", "8", "9", "10"]
        );
        let now = "2026-06-01T00:00:00Z".parse().unwrap();
        let first =
            medrelay_mapping::reply::ButtonPayload::verify(&rows[0].id, b"key", now).unwrap();
        assert_eq!(first.choice, medrelay_mapping::reply::Choice::Score(0));
        assert!(
            rows.iter()
                .all(|r| r.id.len() <= crate::whatsapp::interactive_limits::ROW_ID_CHARS)
        );
    }
}
