//! The scheduler: turns appointments whose plan is out of date into outbox steps.
//!
//! Planning is idempotent: a step is keyed by (appointment, step, slot start), so re-planning an
//! unchanged appointment, re-importing a file or restarting never creates a second message. A
//! reschedule plans new steps for the new slot; the old slot's pending steps were already withdrawn in
//! the transaction that stored the change.
//!
//! Which steps an appointment gets depends on its status (reminders only while booked, a no-show
//! follow-up only once it is a no-show), its site and its service type (per-site, per-type plans).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use medrelay_mapping::plan::{Slot, StepKind, StepOutcome, StepSpec, fmt_duration, plan_slot};

use crate::clock::Clock;
use crate::config::Compiled;
use crate::store::outbox::{JobState, NewJob, PlanInput};
use crate::store::{Store, StoreResult};

/// What a planning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// Appointments whose plan was (re)computed.
    pub appointments: u64,
    /// Outbox rows created or re-armed (existing steps for the same slot are left alone).
    pub steps_stored: u64,
}

/// Plans message steps.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    config: Arc<Compiled>,
    clock: Arc<dyn Clock>,
}

/// Stored name of a step kind (the outbox `kind` column).
pub fn kind_name(kind: StepKind) -> &'static str {
    kind.as_str()
}

/// Appointments planned per transaction: large enough to amortise the commit, small enough to keep
/// memory flat and the write lock short.
const PLAN_CHUNK: i64 = 5000;

/// Why a due step is due when it is, for `medrelay explain`.
fn timing(spec: &StepSpec, time_unknown: bool) -> String {
    let d = fmt_duration(spec.offset);
    match spec.kind {
        StepKind::Confirmation => "at booking".into(),
        StepKind::Reminder if time_unknown => {
            format!("{d} before the start, by day: the appointment's time is unknown")
        }
        StepKind::Reminder => format!("{d} before the start"),
        StepKind::FollowUp => format!("{d} after the end"),
        StepKind::Survey => format!("{d} after the end (post-visit survey)"),
        StepKind::NoShow => format!("{d} after the end of the missed visit"),
        StepKind::LocationChange => "when the location changed".into(),
    }
}

impl Scheduler {
    /// The same scheduler under a new configuration (a reload).
    pub fn with_config(&self, config: Arc<Compiled>) -> Scheduler {
        Scheduler {
            config,
            ..self.clone()
        }
    }

    /// A scheduler over `store` with the compiled plan.
    pub fn new(store: Store, config: Arc<Compiled>, clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            store,
            config,
            clock,
        }
    }

    /// The steps `a` should get, with their planned outcome: pure, so `medrelay plan` and tests can
    /// ask the same question the scheduler does.
    pub fn plan_one(&self, a: &PlanInput, zone: &TimeZone, now: Timestamp) -> Vec<NewJob> {
        let mut jobs = Vec::new();
        if a.patient_cancelled {
            return jobs;
        }
        let Some(site) = self
            .config
            .sites
            .get(&a.site)
            .or_else(|| self.config.sites.values().next())
        else {
            return jobs;
        };
        // PHI: the service type selects per-type steps; it is compared, never logged.
        #[allow(clippy::disallowed_methods)]
        let service_type = a.service_type.as_ref().map(|s| s.expose().as_str());
        let slot = Slot {
            start: a.start,
            end: a.end,
            time_unknown: a.time_unknown,
        };
        // Moves last: whether one needs a message depends on the confirmation planned before it.
        let is_move = |s: &&StepSpec| s.kind == StepKind::LocationChange;
        let specs = self.config.steps.iter();
        for spec in specs
            .clone()
            .filter(|s| !is_move(s))
            .chain(specs.filter(is_move))
        {
            if !spec.kind.wanted_for(a.status) || !spec.applies_to(&a.site, service_type) {
                continue;
            }
            // A move is announced once per move (the step name carries its number), and only
            // when no confirmation is still to go out: that one shows the new location itself.
            let is_move = is_move(&spec);
            if is_move && a.location_rev == 0 {
                continue;
            }
            let step = if is_move {
                format!("{}#{}", spec.name, a.location_rev)
            } else {
                spec.name.clone()
            };
            let confirmation_to_go = || match a.confirmation_state.as_deref() {
                Some("pending") => true,
                // None stored yet, or withdrawn and re-armed by this plan.
                None | Some("withdrawn") => jobs.iter().any(|j: &NewJob| {
                    j.kind == StepKind::Confirmation && j.state == JobState::Pending
                }),
                Some(_) => false,
            };
            let outcome = if is_move && confirmation_to_go() {
                StepOutcome::Dropped(
                    "the confirmation still waiting to go out shows the new location".into(),
                )
            } else {
                plan_slot(spec, slot, zone, now, &site.plan_policy)
            };
            let (due, expires, state, reason, note) = match outcome {
                StepOutcome::Due { due, expires, note } => {
                    let why = match note {
                        Some(n) => format!("{}; {n}", timing(spec, a.time_unknown)),
                        None => timing(spec, a.time_unknown),
                    };
                    (due, expires, JobState::Pending, None, Some(why))
                }
                StepOutcome::Dropped(reason) => (now, now, JobState::Dropped, Some(reason), None),
            };
            jobs.push(NewJob {
                appointment_id: a.appointment_id,
                revision: a.revision,
                step,
                kind: spec.kind,
                slot_start: a.start,
                lane: spec.lane(),
                template: spec.template.clone(),
                due,
                expires,
                state,
                state_reason: reason,
                plan_note: note,
            });
        }
        jobs
    }

    /// Plans every appointment that needs it, in chunks, until none is left. Each chunk is one read
    /// and one write transaction (multi-row statements), whatever its size.
    pub async fn plan_pending(&self) -> StoreResult<PlanReport> {
        let mut report = PlanReport::default();
        let mut zones: HashMap<String, TimeZone> = HashMap::new();
        loop {
            let inputs = self.store.appointments_to_plan(PLAN_CHUNK).await?;
            if inputs.is_empty() {
                return Ok(report);
            }
            let now = self.clock.now();
            let mut jobs = Vec::with_capacity(inputs.len() * self.config.steps.len());
            let mut planned = Vec::with_capacity(inputs.len());
            for a in &inputs {
                planned.push((a.appointment_id, a.revision));
                let zone = match zones.get(&a.time_zone) {
                    Some(z) => z.clone(),
                    None => {
                        let fallback = self
                            .config
                            .sites
                            .get(&a.site)
                            .or_else(|| self.config.sites.values().next())
                            .map_or(TimeZone::UTC, |s| s.zone.clone());
                        let z = TimeZone::get(&a.time_zone).unwrap_or(fallback);
                        zones.insert(a.time_zone.clone(), z.clone());
                        z
                    }
                };
                jobs.extend(self.plan_one(a, &zone, now));
            }
            report.appointments += inputs.len() as u64;
            report.steps_stored += self.store.save_plan(&planned, &jobs, now).await?;
        }
    }
}
