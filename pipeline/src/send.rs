//! The sender: claims due steps, re-checks everything at send time, renders the template from the
//! allow-list and hands the body to the WhatsApp transport.
//!
//! Send-time checks are the last line of defence: the appointment must still be booked at the same
//! slot, the step must not have expired, and consent is decided again from the ledger (a STOP that
//! arrived a second ago wins).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::AppointmentStatus;
use medrelay_mapping::plan::StepKind;
use medrelay_mapping::policy::{SensitiveAction, Sensitivity};
use medrelay_mapping::reply::ButtonPayload;
use medrelay_mapping::template::render_parameters;
use tracing::{debug, info, warn};

use crate::clock::Clock;
use crate::config::Compiled;
use crate::store::outbox::{AppointmentRecord, ClaimedJob, JobOutcome, JobState};
use crate::store::{Store, StoreResult};
use crate::whatsapp::pacing::Pacing;
use crate::whatsapp::{BodyParameter, SendError, TemplateMessage, WhatsAppTransport};

/// What a sending pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendReport {
    pub claimed: u64,
    pub sent: u64,
    pub skipped: u64,
    pub retried: u64,
    pub failed: u64,
    /// Jobs put back because their recipient's pair limit was not ready (not an error; counted apart
    /// from `retried`).
    pub paced: u64,
    /// Sending stopped because the account cannot send (an alert was raised).
    pub halted: bool,
}

#[derive(Default)]
struct Halts {
    all: Option<String>,
    templates: HashSet<String>,
}

/// Sends due steps through a transport.
pub struct Sender {
    store: Store,
    config: Arc<Compiled>,
    transport: Arc<dyn WhatsAppTransport>,
    clock: Arc<dyn Clock>,
    halts: Arc<Mutex<Halts>>,
    pacer: Option<Arc<dyn Pacing>>,
    /// Templates this process has sent successfully: the first success of each resolves its
    /// `template_halted` alert, and the very first resolves `sending_halted` (a halt lasts until
    /// a restart; a send that goes through afterwards is the recovery).
    proven: Arc<Mutex<HashSet<String>>>,
    /// Where send attempts are counted for `/metrics` (the service shares its own).
    pub instruments: Arc<crate::instruments::Instruments>,
}

/// A read-only view of a [`Sender`]'s halt, for `/readyz`: the service is not ready while all
/// sending is halted (an account-level Cloud API error).
#[derive(Clone)]
pub struct HaltProbe(Arc<Mutex<Halts>>);

impl HaltProbe {
    /// Whether all sending is halted, and why (a Cloud API error, never patient data).
    pub fn halted(&self) -> Option<String> {
        self.0.lock().expect("halts lock").all.clone()
    }
}

/// Alert kind for a template error that halts one template (until a restart; resolved by the
/// template's first successful send after it).
pub const TEMPLATE_HALTED_ALERT: &str = "template_halted";
/// Alert kind for an account error that halts all sending (resolved by the next successful send).
pub const SENDING_HALTED_ALERT: &str = "sending_halted";

/// Alert kind raised when 80 % of the messaging limit is used, resolved when use drops below.
pub const MESSAGING_LIMIT_ALERT: &str = "messaging_limit";

/// WhatsApp's messaging limit within one sending pass: the unique recipients of template messages
/// in the moving 24 h (loaded from the store at the start of the pass, kept up to date as it
/// sends). A recipient already in the window costs nothing; a new one needs a free place. A
/// patient who wrote in the last 24 h (an open customer service window) costs nothing either.
pub struct MessagingBudget {
    pub limit: u32,
    /// Contact hash -> newest template message to it in the window (outside a service window).
    recipients: std::collections::HashMap<String, Timestamp>,
    /// Contact hash -> the patient's last message, for those who wrote in the last 24 h.
    open_windows: std::collections::HashMap<String, Timestamp>,
}

impl MessagingBudget {
    /// The window ending at `now`.
    pub async fn load(store: &Store, limit: u32, now: Timestamp) -> StoreResult<Self> {
        Ok(MessagingBudget {
            limit,
            recipients: store
                .recipients_since(now - SignedDuration::from_hours(24))
                .await?,
            open_windows: store.open_service_windows(now).await?,
        })
    }

    /// Unique recipients in the window.
    pub fn used(&self) -> usize {
        self.recipients.len()
    }

    /// Whether `contact` wrote in the 24 h before `at` (their customer service window is open:
    /// a message then does not count against the limit).
    pub fn window_open(&self, contact: &str, at: Timestamp) -> bool {
        self.open_windows.get(contact).is_some_and(|t| {
            *t <= at
                && at < *t + SignedDuration::from_secs(crate::store::limits::SERVICE_WINDOW_SECONDS)
        })
    }

    /// Whether a message to `contact` may go at `at`.
    pub fn admits(&self, contact: &str, at: Timestamp) -> bool {
        self.window_open(contact, at)
            || self.recipients.contains_key(contact)
            || self.used() < self.limit as usize
    }

    /// When the window next frees a place: 24 h after the oldest recipient's newest message.
    pub fn next_free(&self, now: Timestamp) -> Timestamp {
        self.recipients
            .values()
            .min()
            .map_or(now, |t| *t + SignedDuration::from_hours(24))
            .max(now + SignedDuration::from_secs(1))
    }

    /// Counts a sent message (unless it went inside the contact's service window).
    pub fn record(&mut self, contact: &str, at: Timestamp) {
        if !self.window_open(contact, at) {
            self.recipients.insert(contact.to_owned(), at);
        }
    }
}

/// How one attempt ended, before it is recorded.
enum Attempt {
    Done(JobOutcome),
    /// The recipient's pair limit is not ready: back to pending for then.
    Paced(JobOutcome),
}

/// Retry delay for attempt `n` (1-based): 30 s doubling to a 1 h cap, with ±20 % deterministic jitter
/// per job so that retries of a burst do not line up.
pub fn backoff(job_id: i64, attempt: i64) -> SignedDuration {
    let base = 30i64
        .saturating_mul(1i64 << attempt.clamp(1, 8).saturating_sub(1))
        .min(3600);
    let spread = (job_id.wrapping_mul(2654435761).wrapping_add(attempt) % 41 - 20).abs() - 10;
    SignedDuration::from_secs(base + base * spread / 50)
}

/// The outbox keeps whole seconds: round the pair-limit wait up so the job is ready when claimed.
fn paced_outcome(job: &ClaimedJob, now: Timestamp, wait: Duration) -> JobOutcome {
    let secs =
        i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2) + i64::from(wait.subsec_nanos() > 0);
    let at = now + SignedDuration::from_secs(secs.max(1));
    if at >= job.expires {
        JobOutcome::Final {
            state: JobState::Dropped,
            reason: "expired while waiting for the recipient's pair limit".into(),
        }
    } else {
        JobOutcome::Deferred {
            at,
            reason: format!("paced: the pair limit allows this recipient again in {secs} s"),
        }
    }
}

/// How long a survey's rating buttons are accepted after it was sent.
const SURVEY_ANSWER_DAYS: i64 = 7;

fn kind_of(job: &ClaimedJob) -> StepKind {
    job.kind.unwrap_or(StepKind::Reminder)
}

/// Why a step can no longer be sent, judged at send time (None: still valid).
fn still_valid(
    job: &ClaimedJob,
    rec: &AppointmentRecord,
    now: Timestamp,
) -> Option<(JobState, String)> {
    let a = &rec.appointment;
    if now >= job.expires {
        return Some((
            JobState::Dropped,
            "expired before it could be sent (outage or backlog)".into(),
        ));
    }
    if kind_of(job) == StepKind::NoShow {
        if !StepKind::NoShow.wanted_for(a.status) {
            return Some((
                JobState::Withdrawn,
                format!(
                    "appointment is no longer a no-show (now {})",
                    a.status.as_str()
                ),
            ));
        }
        return None;
    }
    if matches!(kind_of(job), StepKind::FollowUp | StepKind::Survey) {
        if a.status.is_withdrawn() {
            return Some((
                JobState::Withdrawn,
                format!("appointment is now {}", a.status.as_str()),
            ));
        }
        return None;
    }
    if rec.patient_cancelled {
        return Some((
            JobState::Withdrawn,
            "the patient cancelled on WhatsApp".into(),
        ));
    }
    if a.status != AppointmentStatus::Booked {
        return Some((
            JobState::Withdrawn,
            format!("appointment is now {}", a.status.as_str()),
        ));
    }
    if a.start != job.slot_start {
        return Some((JobState::Withdrawn, "appointment was rescheduled".into()));
    }
    None
}

impl Sender {
    /// A sender over `transport`.
    pub fn new(
        store: Store,
        config: Arc<Compiled>,
        transport: Arc<dyn WhatsAppTransport>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Sender {
            store,
            config,
            transport,
            clock,
            halts: Arc::new(Mutex::new(Halts::default())),
            pacer: None,
            proven: Arc::new(Mutex::new(HashSet::new())),
            instruments: crate::instruments::Instruments::new(),
        }
    }

    /// A sender that paces sends: the business number's throughput (waits) and each recipient's pair
    /// limit (a recipient that is not ready is deferred, never waited for). `transport` should be the
    /// bare transport, not a [`crate::whatsapp::pacing::PacedTransport`] (that would take two slots).
    pub fn with_pacer(
        store: Store,
        config: Arc<Compiled>,
        transport: Arc<dyn WhatsAppTransport>,
        clock: Arc<dyn Clock>,
        pacer: Arc<dyn Pacing>,
    ) -> Self {
        let mut s = Sender::new(store, config, transport, clock);
        s.pacer = Some(pacer);
        s
    }

    /// The same sender (transport, pacer, halts, instruments) under a new configuration: a
    /// reload changes templates, plans and policies without forgetting a halt or the pace.
    pub fn with_config(&self, config: Arc<Compiled>) -> Sender {
        Sender {
            store: self.store.clone(),
            config,
            transport: self.transport.clone(),
            clock: self.clock.clone(),
            halts: self.halts.clone(),
            pacer: self.pacer.clone(),
            proven: self.proven.clone(),
            instruments: self.instruments.clone(),
        }
    }

    /// Whether all sending is halted, and why.
    pub fn halted(&self) -> Option<String> {
        self.halts.lock().expect("halts lock").all.clone()
    }

    /// A probe of the halt that outlives borrows of the sender (for the readiness endpoint).
    pub fn halt_probe(&self) -> HaltProbe {
        HaltProbe(self.halts.clone())
    }

    /// Sends up to `limit` due steps.
    pub async fn send_due(&self, limit: i64) -> StoreResult<SendReport> {
        let mut report = SendReport::default();
        if self.halted().is_some() {
            report.halted = true;
            return Ok(report);
        }
        let now = self.clock.now();
        // The limit WhatsApp stated (Graph API, webhook) beats the configured one.
        let messaging_limit = match self.store.reported_messaging_limit().await? {
            Some(reported) => reported.limit,
            None => self.config.messaging_limit,
        };
        let mut budget = match messaging_limit {
            Some(limit) => Some(MessagingBudget::load(&self.store, limit, now).await?),
            None => None,
        };
        // Templates WhatsApp stopped (or recategorised under the halt policy), per its webhooks.
        let held = self.store.held_templates().await?;
        let jobs = self.store.claim_due(now, limit).await?;
        report.claimed = jobs.len() as u64;
        for job in jobs {
            let outcome = match self.attempt(&job, budget.as_ref(), &held).await? {
                Attempt::Done(o) => o,
                Attempt::Paced(o) => {
                    report.paced += 1;
                    self.instruments.send_attempt(&job.template, "paced");
                    debug!(job = job.id, step = %job.step, "recipient not ready (pair limit): deferred");
                    self.store.finish_job(&job, &o, self.clock.now()).await?;
                    continue;
                }
            };
            let now = self.clock.now();
            let result = match &outcome {
                JobOutcome::Sent { .. } => "sent",
                JobOutcome::Retry { .. } => "retry",
                JobOutcome::Deferred { .. } => "deferred",
                JobOutcome::Final { state, .. } => state.as_str(),
            };
            self.instruments.send_attempt(&job.template, result);
            match &outcome {
                JobOutcome::Sent { contact_hash, .. } => {
                    report.sent += 1;
                    self.recovered(&job.template, now).await?;
                    if let Some(b) = budget.as_mut() {
                        b.record(contact_hash, now);
                    }
                    info!(job = job.id, step = %job.step, contact = %contact_hash, "message accepted by WhatsApp");
                }
                JobOutcome::Retry { reason, .. } => {
                    report.retried += 1;
                    warn!(job = job.id, step = %job.step, %reason, "send will be retried");
                }
                JobOutcome::Deferred { .. } => report.paced += 1,
                JobOutcome::Final { state, reason } => {
                    if *state == JobState::Failed {
                        report.failed += 1;
                        warn!(job = job.id, step = %job.step, %reason, "send failed");
                    } else {
                        report.skipped += 1;
                        info!(job = job.id, step = %job.step, state = %state, %reason, "step not sent");
                    }
                }
            }
            self.store.finish_job(&job, &outcome, now).await?;
            if self.halted().is_some() {
                report.halted = true;
                // Put back whatever this pass claimed but did not attempt.
                self.store
                    .release_stale_sending(now + SignedDuration::from_secs(1))
                    .await?;
                break;
            }
        }
        if let Some(p) = &self.pacer {
            p.housekeeping();
        }
        if let Some(b) = &budget {
            self.watch_budget(b, self.clock.now()).await?;
        }
        Ok(report)
    }

    /// After a send of `template` went through: on the first of this process resolve the
    /// `sending_halted` alert, on the first of each template its `template_halted` alert.
    async fn recovered(&self, template: &str, now: Timestamp) -> StoreResult<()> {
        let (first_ever, first_of_template) = {
            let mut proven = self.proven.lock().expect("proven lock");
            let first_ever = proven.is_empty();
            (first_ever, proven.insert(template.to_string()))
        };
        if first_ever && self.store.resolve_alerts(SENDING_HALTED_ALERT, now).await? > 0 {
            info!("sending works again (alert sending_halted resolved)");
        }
        if first_of_template
            && self
                .store
                .resolve_incident(
                    TEMPLATE_HALTED_ALERT,
                    &format!("template `{template}`"),
                    now,
                )
                .await?
                > 0
        {
            info!(%template, "template works again (alert template_halted resolved)");
        }
        Ok(())
    }

    /// Raises the messaging-limit alert when 80 % of the limit is used (once, while it lasts) and
    /// resolves it when use falls below.
    async fn watch_budget(&self, b: &MessagingBudget, now: Timestamp) -> StoreResult<()> {
        let high = b.used() * 5 >= b.limit as usize * 4;
        let open = self.store.alert_open(MESSAGING_LIMIT_ALERT).await?;
        if high && !open {
            warn!(
                used = b.used(),
                limit = b.limit,
                "messaging limit 80 % used"
            );
            self.store
                .raise_alert(
                    MESSAGING_LIMIT_ALERT,
                    &format!(
                        "{} of the {} unique recipients WhatsApp allows in 24 h were messaged (80 % or more); \
                         new recipients wait for the window to move (raise the portfolio's tier with Meta)",
                        b.used(),
                        b.limit
                    ),
                    now,
                )
                .await?;
        } else if !high && open {
            self.store
                .resolve_alerts(MESSAGING_LIMIT_ALERT, now)
                .await?;
        }
        Ok(())
    }

    async fn attempt(
        &self,
        job: &ClaimedJob,
        budget: Option<&MessagingBudget>,
        held: &HashMap<String, String>,
    ) -> StoreResult<Attempt> {
        let now = self.clock.now();
        let final_ = |state: JobState, reason: String| {
            Ok(Attempt::Done(JobOutcome::Final { state, reason }))
        };
        if job.kind.is_none() {
            // Stored by a newer medrelay: what it is for cannot be checked, so it is not sent.
            return final_(
                JobState::Failed,
                "a step kind this version does not know (stored by a newer medrelay)".into(),
            );
        }
        let Some(rec) = self.store.load_appointment(job.appointment_id).await? else {
            return final_(JobState::Failed, "appointment no longer exists".into());
        };
        if let Some((state, reason)) = still_valid(job, &rec, now) {
            return final_(state, reason);
        }
        // The plan changed since the step was planned (a reload or a restart with a new file).
        if !self.config.has_step(&job.step) {
            return final_(
                JobState::Withdrawn,
                format!(
                    "step `{}` is no longer in [[plan.steps]] (the configuration changed)",
                    job.step
                ),
            );
        }
        let (Some(phone), Some(contact_hash)) = (
            rec.appointment.patient.best_phone(),
            rec.contact_hash.clone(),
        ) else {
            return final_(
                JobState::Skipped,
                rec.phone_problem
                    .clone()
                    .unwrap_or_else(|| "no usable phone number".into()),
            );
        };
        let decision = self
            .store
            .consent_decision(&rec, kind_of(job).purpose(), self.config.opt_in_required)
            .await?;
        if !decision.permits() {
            return final_(
                JobState::Skipped,
                format!("no consent: {}", decision.reason()),
            );
        }
        // Sensitive services: nothing at all, or only the neutral template (which names no
        // department, place or person). Decided at send time, so a changed service type counts.
        let template_key = match self.config.sensitive.classify(&rec.appointment) {
            Sensitivity::Ordinary => job.template.as_str(),
            Sensitivity::Sensitive(field) => match self.config.sensitive.action {
                SensitiveAction::Suppress => {
                    return final_(
                        JobState::Skipped,
                        format!(
                            "sensitive service ({field} on the deny-list): no WhatsApp message by site policy"
                        ),
                    );
                }
                // A survey says that a visit took place; the neutral template cannot ask it.
                SensitiveAction::Neutral if kind_of(job) == StepKind::Survey => {
                    return final_(
                        JobState::Skipped,
                        format!(
                            "sensitive service ({field} on the deny-list): no post-visit survey (it would say that the visit took place)"
                        ),
                    );
                }
                // The neutral template names no place, so it cannot say where the visit moved.
                SensitiveAction::Neutral if kind_of(job) == StepKind::LocationChange => {
                    return final_(
                        JobState::Skipped,
                        format!(
                            "sensitive service ({field} on the deny-list): a move is not announced, the neutral template names no place"
                        ),
                    );
                }
                SensitiveAction::Neutral => self
                    .config
                    .sensitive
                    .neutral_template
                    .as_deref()
                    .unwrap_or(job.template.as_str()),
            },
        };
        let Some(template) = self.config.templates.get(template_key) else {
            return final_(
                JobState::Failed,
                format!("template `{template_key}` is not configured"),
            );
        };
        if self
            .halts
            .lock()
            .expect("halts lock")
            .templates
            .contains(&template.key)
        {
            return Ok(Attempt::Done(JobOutcome::Retry {
                at: now + SignedDuration::from_hours(1),
                reason: format!(
                    "template `{}` is halted after a template error",
                    template.key
                ),
            }));
        }
        if let Some(why) = held.get(&template.name) {
            // Looked at again every few minutes: a release takes effect soon after WhatsApp's news.
            return Ok(Attempt::Done(JobOutcome::Retry {
                at: now + SignedDuration::from_mins(5),
                reason: format!("template `{}` is held: {why}", template.key),
            }));
        }
        let Some(site) = self
            .config
            .sites
            .get(&rec.appointment.site)
            .or_else(|| self.config.sites.values().next())
        else {
            return final_(JobState::Failed, "no site configured".into());
        };
        // The appointment lacks what its template shows (a location, a given name): no message
        // can be sent for it, so, like a permanent WhatsApp failure, the EHR hears "not notified".
        // The header's one parameter, if any, renders with the body (same allow-list, one check).
        let fields: Vec<_> = template
            .header
            .iter()
            .chain(&template.body)
            .copied()
            .collect();
        let mut params = match render_parameters(&fields, &rec.appointment, &site.facts) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("cannot render template: {e}");
                self.store.record_not_notified(job.id, &reason, now).await?;
                return final_(JobState::Failed, reason);
            }
        };
        let header = template.header.map(|_| BodyParameter {
            name: template.header_parameter_name.clone(),
            text: params.remove(0),
        });
        let language = template.choose_language(
            rec.appointment.patient.preferred_language.as_deref(),
            &site.fallback_languages,
        );
        let key = self.store.keys().button_key();
        // A tap about the appointment means something until it starts; a survey rating, for a
        // week after the survey was sent.
        let expires = if kind_of(job) == StepKind::Survey {
            now + SignedDuration::from_hours(SURVEY_ANSWER_DAYS * 24)
        } else {
            rec.appointment.start
        };
        let quick_replies = template
            .buttons
            .iter()
            .map(|choice| {
                ButtonPayload {
                    job_id: job.id,
                    choice: *choice,
                    expires,
                }
                .sign(key)
            })
            .collect();
        // PHI: the recipient's number is what the Cloud API needs; it goes into the request body
        // only. Its country calling code is kept for the rate table.
        #[allow(clippy::disallowed_methods)]
        let calling_code = medrelay_mapping::phone::calling_code(phone.expose());
        #[allow(clippy::disallowed_methods)]
        let message = TemplateMessage {
            to: phone.expose().trim_start_matches('+').to_string(),
            template: template.name.clone(),
            language,
            body: params
                .into_iter()
                .enumerate()
                .map(|(i, text)| BodyParameter {
                    name: template.parameter_names.as_ref().map(|n| n[i].clone()),
                    text,
                })
                .collect(),
            header,
            quick_replies,
            callback: format!("job:{}", job.id),
        };
        let body = message.to_json();
        // WhatsApp's messaging limit: a new recipient beyond it waits for the moving window
        // (never a failure: Meta would refuse it, and the step is still useful later).
        if let Some(b) = budget
            && !b.admits(&contact_hash, now)
        {
            return Ok(Attempt::Done(JobOutcome::Deferred {
                at: b.next_free(now),
                reason: format!(
                    "messaging limit: {} unique recipients in 24 h reached; waits for the window to move",
                    b.limit
                ),
            }));
        }
        if let Some(pacer) = &self.pacer {
            if let Err(wait) = pacer.recipient_ready(&contact_hash) {
                return Ok(match paced_outcome(job, now, wait) {
                    o @ JobOutcome::Deferred { .. } => Attempt::Paced(o),
                    o => Attempt::Done(o),
                });
            }
            pacer.until_ready().await;
        }
        // The pacer may have waited: judge the outcome at the time of the send.
        let now = self.clock.now();
        match self.transport.send(&body).await {
            Ok(accepted) => Ok(Attempt::Done(JobOutcome::Sent {
                wamid: accepted.wamid,
                body: body.to_string(),
                contact_hash,
                calling_code,
            })),
            Err(e) => Ok(Attempt::Done(self.on_error(job, e, now).await?)),
        }
    }

    async fn on_error(
        &self,
        job: &ClaimedJob,
        e: SendError,
        now: Timestamp,
    ) -> StoreResult<JobOutcome> {
        let retry = |delay: SignedDuration, reason: String| {
            let at = now + delay;
            if at >= job.expires {
                JobOutcome::Final {
                    state: JobState::Dropped,
                    reason: format!("expired while retrying ({reason})"),
                }
            } else {
                JobOutcome::Retry { at, reason }
            }
        };
        Ok(match e {
            SendError::Retry { .. } => retry(backoff(job.id, job.attempts), e.to_string()),
            SendError::RecipientBusy { .. } => {
                let secs =
                    6i64.saturating_mul(4i64.saturating_pow(job.attempts.clamp(1, 5) as u32 - 1));
                retry(SignedDuration::from_secs(secs), e.to_string())
            }
            SendError::Permanent { .. } => {
                // The EHR hears "could not notify" (once per appointment slot).
                self.store
                    .record_not_notified(job.id, &e.to_string(), now)
                    .await?;
                JobOutcome::Final {
                    state: JobState::Failed,
                    reason: e.to_string(),
                }
            }
            SendError::HaltTemplate { .. } => {
                self.halts
                    .lock()
                    .expect("halts lock")
                    .templates
                    .insert(job.template.clone());
                let key = format!("template `{}`", job.template);
                self.store
                    .raise_incident(
                        TEMPLATE_HALTED_ALERT,
                        &key,
                        &format!("{key} halted: {e}"),
                        now,
                    )
                    .await?;
                JobOutcome::Retry {
                    at: now + SignedDuration::from_hours(1),
                    reason: e.to_string(),
                }
            }
            SendError::HaltAll { .. } => {
                self.halts.lock().expect("halts lock").all = Some(e.to_string());
                self.store
                    .raise_incident(
                        SENDING_HALTED_ALERT,
                        "all sending halted",
                        &format!("all sending halted: {e}"),
                        now,
                    )
                    .await?;
                JobOutcome::Retry {
                    at: now + SignedDuration::from_mins(5),
                    reason: e.to_string(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let d1 = backoff(7, 1).as_secs();
        let d3 = backoff(7, 3).as_secs();
        assert!((24..=36).contains(&d1), "{d1}");
        assert!((96..=144).contains(&d3), "{d3}");
        assert!(backoff(7, 30).as_secs() <= 3600 * 12 / 10);
        let spread: HashSet<i64> = (1..50).map(|j| backoff(j, 2).as_secs()).collect();
        assert!(spread.len() > 5, "jitter spreads retries");
    }
}
