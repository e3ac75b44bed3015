//! Property tests of the appointment lifecycle: random event sequences for a few appointments
//! (create, reschedule, cancel, no-show, visit done, re-delivered duplicates, late arrivals of older
//! versions) interleaved with clock advances and service ticks, against the in-process WhatsApp
//! simulator and a manual clock (nothing sleeps).
//!
//! After every step the test checks what a patient could see:
//! - no reminder or confirmation unless the appointment is booked when it is sent (never after a
//!   cancellation or a no-show); no follow-up of a withdrawn visit; no no-show message unless it
//!   is a no-show;
//! - never the old time: every rendered `local_date` / `local_time` equals the appointment's start
//!   at the moment of sending;
//! - never two messages for one step (a job, keyed by appointment, step and slot, is sent once);
//! - the stored appointment is always the delivered event with the highest source version.

mod lifecycle_common;

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use lifecycle_common::{Harness, event, job_of, param, phone, rendered};
use medrelay_mapping::model::{AppointmentEvent, AppointmentStatus, SourceVersion};
use medrelay_pipeline::clock::Clock;
use proptest::prelude::*;

/// Appointments per case: enough for interleavings, few enough for short sequences to matter.
const APPTS: usize = 2;

#[derive(Clone, Debug)]
enum Op {
    /// A new version: booked at `slot` (creates, reschedules, or re-books a cancelled one).
    Book { appt: usize, slot: u8 },
    /// A new version with another status at the current slot.
    Status { appt: usize, status: u8 },
    /// The same event delivered again (`back` picks one of the delivered ones).
    Duplicate { appt: usize, back: u8 },
    /// An event that happened before the newest delivered one arrives only now.
    Late { appt: usize, slot: u8, status: u8 },
    /// The clock moves on.
    Advance { mins: u16 },
    /// The service plans, sends and processes webhooks until idle.
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let appt = 0..APPTS;
    prop_oneof![
        4 => (appt.clone(), 0u8..14).prop_map(|(appt, slot)| Op::Book { appt, slot }),
        2 => (appt.clone(), 0u8..4).prop_map(|(appt, status)| Op::Status { appt, status }),
        2 => (appt.clone(), any::<u8>()).prop_map(|(appt, back)| Op::Duplicate { appt, back }),
        2 => (appt, 0u8..14, 0u8..4).prop_map(|(appt, slot, status)| Op::Late { appt, slot, status }),
        3 => (10u16..900).prop_map(|mins| Op::Advance { mins }),
        4 => Just(Op::Tick),
    ]
}

fn status_of(code: u8) -> AppointmentStatus {
    match code {
        0 => AppointmentStatus::Cancelled,
        1 => AppointmentStatus::Noshow,
        2 => AppointmentStatus::Fulfilled,
        _ => AppointmentStatus::Booked,
    }
}

/// 5 March 2026 09:00 EST: slots run across the spring-forward change of 8 March.
fn t0() -> Timestamp {
    "2026-03-05T14:00:00Z".parse().unwrap()
}

/// Slot `i`: from 20 h after the start, every 7 h (so some fall in quiet hours, some at night).
fn slot(i: u8) -> Timestamp {
    t0() + SignedDuration::from_hours(20 + 7 * i64::from(i))
}

/// The test's model: every event delivered per appointment.
struct Model {
    delivered: Vec<Vec<AppointmentEvent>>,
    /// Source clock of the next fresh event (microsecond ticks keep versions unique).
    next_version: i64,
    seq: i64,
}

impl Model {
    fn current(&self, appt: usize) -> Option<&AppointmentEvent> {
        self.delivered[appt].iter().max_by_key(|e| e.version)
    }

    fn fresh_version(&mut self) -> (Timestamp, i64) {
        self.next_version += 10;
        self.seq += 1;
        (
            Timestamp::from_second(1_700_000_000 + self.next_version).unwrap(),
            self.seq,
        )
    }
}

fn id(appt: usize) -> String {
    format!("A{appt}")
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let h = Harness::new(t0()).await;
    let mut m = Model {
        delivered: vec![Vec::new(); APPTS],
        next_version: 0,
        seq: 0,
    };
    let mut sent_jobs = BTreeSet::new();
    let mut seen = 0usize;
    // After the random part, walk five days on so that every pending step comes due and is judged.
    let drain = (0..40).flat_map(|_| [Op::Advance { mins: 180 }, Op::Tick]);
    for op in ops.into_iter().chain(drain) {
        let mut delivered = None;
        match op {
            Op::Book { appt, slot: s } => {
                let (at, seq) = m.fresh_version();
                delivered = Some(event(
                    "sys",
                    &id(appt),
                    appt,
                    AppointmentStatus::Booked,
                    slot(s),
                    at,
                    seq,
                ));
            }
            Op::Status { appt, status } => {
                let start = m.current(appt).map_or(slot(0), |e| e.appointment.start);
                let (at, seq) = m.fresh_version();
                delivered = Some(event(
                    "sys",
                    &id(appt),
                    appt,
                    status_of(status),
                    start,
                    at,
                    seq,
                ));
            }
            Op::Duplicate { appt, back } => {
                let list = &m.delivered[appt];
                if !list.is_empty() {
                    delivered = Some(list[back as usize % list.len()].clone());
                }
            }
            Op::Late {
                appt,
                slot: s,
                status,
            } => {
                // Older than the newest version delivered for this appointment, and unique.
                m.seq += 1;
                let at = match m.current(appt) {
                    Some(e) => e.version.at - SignedDuration::from_micros(1 + m.seq),
                    None => Timestamp::from_second(1_600_000_000).unwrap(),
                };
                let v = SourceVersion { at, seq: m.seq };
                let mut e = event(
                    "sys",
                    &id(appt),
                    appt,
                    status_of(status),
                    slot(s),
                    v.at,
                    v.seq,
                );
                e.raw_ref = format!("late:{}", m.seq);
                delivered = Some(e);
            }
            Op::Advance { mins } => h.clock.advance(SignedDuration::from_mins(i64::from(mins))),
            Op::Tick => h.settle().await,
        }
        if let Some(e) = delivered {
            let appt: usize = e.appointment.key.id[1..].parse().unwrap();
            h.deliver("feed", std::slice::from_ref(&e)).await;
            if !m.delivered[appt].iter().any(|d| d.version == e.version) {
                m.delivered[appt].push(e);
            }
            // The stored appointment is the highest source version delivered.
            let want = m.current(appt).unwrap();
            let stored_id = h
                .store
                .find_appointment(&format!("sys/{}", id(appt)))
                .await
                .unwrap()
                .expect("stored");
            let stored = h.store.load_appointment(stored_id).await.unwrap().unwrap();
            prop_assert_eq!(stored.appointment.status, want.appointment.status);
            prop_assert_eq!(stored.appointment.start, want.appointment.start);
        }
        // Judge every message sent since the last look against the appointment as it is now (the
        // clock does not move inside a tick, and no event arrives during one).
        let sent = h.sim.sent();
        for body in &sent[seen..] {
            let job = job_of(body);
            prop_assert!(sent_jobs.insert(job), "job {} was sent twice", job);
            let to = body["to"].as_str().unwrap();
            let appt = (0..APPTS)
                .find(|n| phone(*n).trim_start_matches('+') == to)
                .expect("a test patient");
            let cur = &m.current(appt).expect("messaged, so delivered").appointment;
            let template = body["template"]["name"].as_str().unwrap();
            match template {
                "booked" | "reminder" => {
                    prop_assert_eq!(
                        cur.status,
                        AppointmentStatus::Booked,
                        "{} sent while the appointment is {:?}",
                        template,
                        cur.status
                    );
                    let (date, time) = rendered(cur.start);
                    prop_assert_eq!(param(body, 1), date, "old date in a {}", template);
                    prop_assert_eq!(param(body, 2), time, "old time in a {}", template);
                    prop_assert!(h.clock.now() < cur.start, "reminder after the start");
                }
                "follow_up" => prop_assert!(
                    !cur.status.is_withdrawn(),
                    "follow-up of a {:?} appointment",
                    cur.status
                ),
                "missed" => prop_assert_eq!(cur.status, AppointmentStatus::Noshow),
                other => prop_assert!(false, "unexpected template {}", other),
            }
        }
        seen = sent.len();
    }
    // Every sent job is one (appointment, step, slot): the outbox rows agree.
    let mut keys = BTreeSet::new();
    for appt in 0..APPTS {
        if let Some(aid) = h
            .store
            .find_appointment(&format!("sys/{}", id(appt)))
            .await
            .unwrap()
        {
            for s in h.store.steps_of(aid).await.unwrap() {
                if sent_jobs.contains(&s.job_id) {
                    prop_assert_eq!(s.state.as_str(), "sent");
                    prop_assert!(keys.insert((aid, s.step.clone(), s.slot_start)));
                }
            }
        }
    }
    prop_assert_eq!(keys.len(), sent_jobs.len());
    if std::env::var_os("LIFECYCLE_STATS").is_some() {
        let s = h.store.status_summary(h.clock.now()).await.unwrap();
        eprintln!("sent {} jobs; {:?}", sent_jobs.len(), s.jobs_by_state);
    }
    h.store.close().await;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("LIFECYCLE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_lifecycles_never_mislead_a_patient(ops in proptest::collection::vec(op(), 5..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_case(ops))?;
    }
}
