//! The scheduler: turns appointments whose plan is out of date into outbox steps.
//!
//! Planning is idempotent: a step is keyed by (appointment, step, slot start), so re-planning an
//! unchanged appointment, re-importing a file or restarting never creates a second message. A
//! reschedule plans new steps for the new slot; the old slot's pending steps were already withdrawn in
//! the transaction that stored the change.

use std::sync::Arc;

use jiff::tz::TimeZone;
use medrelay_mapping::AppointmentStatus;
use medrelay_mapping::plan::{StepKind, StepOutcome, plan_step};

use crate::clock::Clock;
use crate::config::Compiled;
use crate::store::outbox::NewJob;
use crate::store::{Store, StoreResult};

/// What a planning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    pub appointments: u64,
    pub steps_stored: u64,
}

/// Plans message steps.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    config: Arc<Compiled>,
    clock: Arc<dyn Clock>,
}

/// Stored name of a step kind.
pub fn kind_name(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Confirmation => "confirmation",
        StepKind::Reminder => "reminder",
        StepKind::FollowUp => "follow_up",
    }
}

impl Scheduler {
    /// A scheduler over `store` with the compiled plan.
    pub fn new(store: Store, config: Arc<Compiled>, clock: Arc<dyn Clock>) -> Self {
        Scheduler {
            store,
            config,
            clock,
        }
    }

    /// Plans every appointment that needs it, in chunks, until none is left.
    pub async fn plan_pending(&self) -> StoreResult<PlanReport> {
        let mut report = PlanReport::default();
        loop {
            let inputs = self.store.appointments_to_plan(2000).await?;
            if inputs.is_empty() {
                return Ok(report);
            }
            let now = self.clock.now();
            let mut jobs = Vec::new();
            let mut planned = Vec::with_capacity(inputs.len());
            for a in &inputs {
                planned.push((a.appointment_id, a.revision));
                if a.patient_cancelled {
                    continue;
                }
                let Some(site) = self
                    .config
                    .sites
                    .get(&a.site)
                    .or_else(|| self.config.sites.values().next())
                else {
                    continue;
                };
                let zone = TimeZone::get(&a.time_zone).unwrap_or_else(|_| site.zone.clone());
                for spec in &self.config.steps {
                    let wanted = match spec.kind {
                        StepKind::Confirmation | StepKind::Reminder => {
                            a.status == AppointmentStatus::Booked
                        }
                        StepKind::FollowUp => matches!(
                            a.status,
                            AppointmentStatus::Booked
                                | AppointmentStatus::Arrived
                                | AppointmentStatus::CheckedIn
                                | AppointmentStatus::Fulfilled
                        ),
                    };
                    if !wanted {
                        continue;
                    }
                    let (due, expires, state, reason, note) =
                        match plan_step(spec, a.start, a.end, &zone, now, &site.plan_policy) {
                            StepOutcome::Due { due, expires, note } => {
                                (due, expires, "pending", None, note)
                            }
                            StepOutcome::Dropped(reason) => {
                                (now, now, "dropped", Some(reason), None)
                            }
                        };
                    jobs.push(NewJob {
                        appointment_id: a.appointment_id,
                        revision: a.revision,
                        step: spec.name.clone(),
                        kind: kind_name(spec.kind),
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
            }
            report.appointments += inputs.len() as u64;
            report.steps_stored += self.store.save_plan(&planned, &jobs, now).await?;
        }
    }
}
