//! One appointment across feeds: feeds that carry the ids of one scheduling system share
//! appointments (keyed by system and filler id, with the placer id as an alias), a snapshot sweep
//! cancels only what its own feed had listed, and a late older event never wins. Manual clock.

mod lifecycle_common;

use jiff::{SignedDuration, Timestamp};
use lifecycle_common::{Harness, event, job_of, param, rendered};
use medrelay_mapping::model::{AppointmentEvent, AppointmentStatus};
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::ingest::{ImportInfo, ImportMode, ItemSource, SourceItem};

fn t0() -> Timestamp {
    "2026-06-01T13:00:00Z".parse().unwrap()
}

fn v(secs: i64) -> Timestamp {
    Timestamp::from_second(1_780_000_000 + secs).unwrap()
}

struct Items(std::vec::IntoIter<AppointmentEvent>);

impl ItemSource for Items {
    fn next_item(&mut self) -> Option<SourceItem> {
        self.0.next().map(|e| SourceItem::Event(Box::new(e)))
    }
    fn position(&self) -> u64 {
        0
    }
}

async fn snapshot(h: &Harness, feed: &str, events: Vec<AppointmentEvent>) -> u64 {
    h.service
        .ingest
        .import_stream(
            ImportInfo {
                source: feed.into(),
                input_name: "snapshot.csv".into(),
                input_sha256: None,
                mode: ImportMode::Snapshot,
                as_of: h.clock.now(),
            },
            Items(events.into_iter()),
            100,
            None,
            |_| {},
        )
        .await
        .unwrap()
        .swept
}

async fn count_appointments(h: &Harness) -> i64 {
    h.store
        .status_summary(h.clock.now())
        .await
        .unwrap()
        .appointments_by_status
        .values()
        .sum()
}

async fn status(h: &Harness, reference: &str) -> AppointmentStatus {
    let id = h.store.find_appointment(reference).await.unwrap().unwrap();
    h.store
        .load_appointment(id)
        .await
        .unwrap()
        .unwrap()
        .appointment
        .status
}

#[tokio::test]
async fn the_same_appointment_from_two_feeds_is_one_appointment_messaged_once() {
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let booked = AppointmentStatus::Booked;
    // The HL7 interface and the nightly CSV of the same EHR (system "emr").
    h.deliver("hl7", &[event("emr", "F1", 1, booked, start, v(1), 1)])
        .await;
    h.settle().await;
    h.deliver("csv", &[event("emr", "F1", 1, booked, start, v(2), 1)])
        .await;
    h.settle().await;
    // The very same event through a third feed (re-delivery) is recorded as seen there too.
    h.deliver("batch", &[event("emr", "F1", 1, booked, start, v(2), 1)])
        .await;
    assert_eq!(count_appointments(&h).await, 1);
    let id = h.store.find_appointment("emr/F1").await.unwrap().unwrap();
    assert_eq!(h.store.feeds_of(id).await.unwrap(), ["batch", "csv", "hl7"]);
    let sent = h.sim.sent();
    assert_eq!(sent.len(), 1, "one booking confirmation, not one per feed");

    // The CSV moves it; an older HL7 event (for the old slot) arriving late changes nothing.
    let moved = start + SignedDuration::from_hours(24);
    h.deliver("csv", &[event("emr", "F1", 1, booked, moved, v(10), 2)])
        .await;
    h.deliver("hl7", &[event("emr", "F1", 1, booked, start, v(5), 7)])
        .await;
    h.settle().await;
    let id = h.store.find_appointment("emr/F1").await.unwrap().unwrap();
    let rec = h.store.load_appointment(id).await.unwrap().unwrap();
    assert_eq!(rec.appointment.start, moved);
    let sent = h.sim.sent();
    assert_eq!(sent.len(), 2, "a confirmation of the new time");
    let (date, time) = rendered(moved);
    assert_eq!((param(&sent[1], 1), param(&sent[1], 2)), (date, time));
    assert_ne!(job_of(&sent[0]), job_of(&sent[1]));
    // The old slot's 48 h reminder was withdrawn with the reason; the new slot's is pending.
    let steps = h.store.steps_of(id).await.unwrap();
    assert!(steps.iter().any(|s| s.step == "reminder_48h"
        && s.slot_start == start
        && s.state == "withdrawn"
        && s.reason.as_deref() == Some("appointment was rescheduled")));
    assert!(
        steps
            .iter()
            .any(|s| s.step == "reminder_48h" && s.slot_start == moved && s.state == "pending")
    );
    h.store.close().await;
}

#[tokio::test]
async fn a_placer_id_links_an_event_with_an_unknown_filler_id() {
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let mut first = event("emr", "F1", 1, AppointmentStatus::Booked, start, v(1), 1);
    first.appointment.placer_id = Some("ORD-9".into());
    h.deliver("hl7", &[first]).await;
    // The other feed knows the order number but numbers the appointment differently.
    let mut other = event(
        "emr",
        "X77",
        1,
        AppointmentStatus::Cancelled,
        start,
        v(2),
        1,
    );
    other.appointment.placer_id = Some("ORD-9".into());
    h.deliver("csv", &[other]).await;
    assert_eq!(count_appointments(&h).await, 1);
    assert_eq!(status(&h, "emr/F1").await, AppointmentStatus::Cancelled);
    // A different system with the same placer id is a different appointment.
    let mut foreign = event("lab", "F1", 2, AppointmentStatus::Booked, start, v(3), 1);
    foreign.appointment.placer_id = Some("ORD-9".into());
    h.deliver("lab", &[foreign]).await;
    assert_eq!(count_appointments(&h).await, 2);
    h.settle().await;
    assert_eq!(
        h.sim
            .sent()
            .iter()
            .filter(|b| b["to"] == "12127365101")
            .count(),
        0,
        "cancelled before anything was sent"
    );
    h.store.close().await;
}

#[tokio::test]
async fn a_snapshot_sweep_cancels_only_what_its_own_feed_listed() {
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let b = AppointmentStatus::Booked;
    // A2 is known only through the HL7 feed.
    h.deliver("hl7", &[event("emr", "A2", 2, b, start, v(1), 1)])
        .await;
    // The CSV snapshot lists A1 and A3.
    let swept = snapshot(
        &h,
        "csv",
        vec![
            event("emr", "A1", 1, b, start, v(2), 1),
            event("emr", "A3", 3, b, start, v(2), 2),
        ],
    )
    .await;
    assert_eq!(swept, 0);
    h.settle().await;
    h.clock.advance(SignedDuration::from_hours(1));
    // The next snapshot lists only A1: A3 is cancelled (this feed listed it); A2 is untouched.
    let swept = snapshot(&h, "csv", vec![event("emr", "A1", 1, b, start, v(4), 1)]).await;
    assert_eq!(swept, 1);
    assert_eq!(status(&h, "emr/A3").await, AppointmentStatus::Cancelled);
    assert_eq!(status(&h, "emr/A2").await, AppointmentStatus::Booked);
    assert_eq!(status(&h, "emr/A1").await, AppointmentStatus::Booked);
    // A3 re-appearing unchanged in a later snapshot (versioned, like CSV rows, by the snapshot's
    // time) is booked and planned again.
    h.settle().await;
    h.clock.advance(SignedDuration::from_hours(1));
    let at = h.clock.now();
    let swept = snapshot(
        &h,
        "csv",
        vec![
            event("emr", "A1", 1, b, start, at, 1),
            event("emr", "A3", 3, b, start, at, 2),
        ],
    )
    .await;
    assert_eq!(swept, 0);
    assert_eq!(status(&h, "emr/A3").await, AppointmentStatus::Booked);
    h.settle().await;
    let id = h.store.find_appointment("emr/A3").await.unwrap().unwrap();
    let steps = h.store.steps_of(id).await.unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.step == "reminder_48h" && s.state == "pending"),
        "{steps:?}"
    );
    h.store.close().await;
}

#[tokio::test]
async fn no_show_follow_up_and_per_type_steps() {
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let mut lab = event("emr", "L1", 4, AppointmentStatus::Booked, start, v(1), 1);
    lab.appointment.service_type = Some(medrelay_mapping::phi::Phi::new("LAB DRAW".into()));
    let office = event("emr", "O1", 5, AppointmentStatus::Booked, start, v(1), 2);
    h.deliver("csv", &[lab, office]).await;
    h.settle().await;
    let steps = |r: &'static str| {
        let h = &h;
        async move {
            let id = h.store.find_appointment(r).await.unwrap().unwrap();
            h.store.steps_of(id).await.unwrap()
        }
    };
    assert!(
        steps("emr/L1")
            .await
            .iter()
            .any(|s| s.step == "fasting_24h")
    );
    assert!(
        !steps("emr/O1")
            .await
            .iter()
            .any(|s| s.step == "fasting_24h")
    );

    // O1 is missed: marked a no-show an hour after its end. The follow-up goes 2 h after the end.
    h.clock.set(start + SignedDuration::from_mins(90));
    let noshow = event("emr", "O1", 5, AppointmentStatus::Noshow, start, v(5), 1);
    h.deliver("csv", &[noshow]).await;
    h.settle().await;
    let no_show = steps("emr/O1").await;
    let step = no_show.iter().find(|s| s.step == "no_show_2h").unwrap();
    assert_eq!(step.state, "pending");
    assert_eq!(step.due, start + SignedDuration::from_mins(150));
    // The EHR corrects it: the patient did come. The no-show message is withdrawn, not sent.
    let fixed = event("emr", "O1", 5, AppointmentStatus::Fulfilled, start, v(6), 1);
    h.deliver("csv", &[fixed]).await;
    h.clock.advance(SignedDuration::from_hours(3));
    h.settle().await;
    let after = steps("emr/O1").await;
    let step = after.iter().find(|s| s.step == "no_show_2h").unwrap();
    assert_eq!(step.state, "withdrawn");
    assert!(
        step.reason
            .as_deref()
            .unwrap()
            .contains("no longer a no-show")
    );
    assert!(
        !h.sim
            .sent()
            .iter()
            .any(|b| b["template"]["name"] == "missed")
    );

    // L1 is missed and stays missed: the no-show message is sent once.
    let missed = event("emr", "L1", 4, AppointmentStatus::Noshow, start, v(7), 1);
    h.deliver("csv", &[missed]).await;
    h.settle().await;
    h.clock.advance(SignedDuration::from_hours(6));
    h.settle().await;
    let to_l1: Vec<_> = h
        .sim
        .sent()
        .into_iter()
        .filter(|b| b["template"]["name"] == "missed")
        .collect();
    assert_eq!(to_l1.len(), 1);
    assert_eq!(to_l1[0]["to"], "12127365104");
    h.store.close().await;
}

/// Regression: an older event that differs from the stored appointment was counted "unchanged";
/// it is "older, ignored", recorded, and an older cancellation of a booking raises an alert.
#[tokio::test]
async fn older_cancellation_is_counted_older_ignored_not_unchanged() {
    use medrelay_mapping::model::{AppointmentKey, Change, SourceVersion, StatusChange};
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let booked = event("emr", "F1", 1, AppointmentStatus::Booked, start, v(10), 1);
    h.deliver("hl7", std::slice::from_ref(&booked)).await;
    let cancel = event("emr", "F1", 1, AppointmentStatus::Cancelled, start, v(5), 2);
    let ingest = &h.service.ingest;
    let now = h.clock.now();
    let r = ingest
        .accept(None, "hl7", now, &[cancel], &[], false)
        .await
        .unwrap();
    assert_eq!((r.applied, r.unchanged, r.older_ignored), (0, 0, 1));
    // The very same booking again is unchanged, not older.
    let r = ingest
        .accept(None, "hl7", now, &[booked], &[], false)
        .await
        .unwrap();
    assert_eq!((r.applied, r.unchanged, r.older_ignored), (0, 1, 0));
    let status = h.store.status_summary(now).await.unwrap();
    assert!(
        status
            .open_alerts
            .iter()
            .any(|(_, kind, _)| kind == "older_cancellation_ignored"),
        "{status:?}"
    );
    assert_eq!(status.ignored_events.get("older"), Some(&1));

    // A status change alone: newer cancels, a repeat is unchanged, an unknown id is ignored.
    let status_change = |id: &str, at| {
        Change::Status(StatusChange {
            key: AppointmentKey {
                source: "emr".into(),
                id: id.into(),
            },
            placer_id: None,
            status: AppointmentStatus::Cancelled,
            version: SourceVersion { at, seq: 3 },
            raw_ref: "test:status".into(),
            message_id: Some("A^B^M1".into()),
        })
    };
    let r = ingest
        .accept_changes(None, "hl7", now, &[status_change("F1", v(20))], &[], false)
        .await
        .unwrap();
    assert_eq!(r.applied, 1);
    let r = ingest
        .accept_changes(None, "hl7", now, &[status_change("F1", v(30))], &[], false)
        .await
        .unwrap();
    assert_eq!((r.applied, r.unchanged), (0, 1), "a repeat of the message");
    let r = ingest
        .accept_changes(None, "hl7", now, &[status_change("F9", v(20))], &[], false)
        .await
        .unwrap();
    assert_eq!((r.applied, r.unknown_ignored), (0, 1));
    h.settle().await;
    let id = h.store.find_appointment("emr/F1").await.unwrap().unwrap();
    let rec = h.store.load_appointment(id).await.unwrap().unwrap();
    assert_eq!(rec.appointment.status, AppointmentStatus::Cancelled);
    assert_eq!(rec.appointment.start, start, "the slot is kept");
    let steps = h.store.steps_of(id).await.unwrap();
    assert!(steps.iter().all(|s| s.state != "pending"), "{steps:?}");
    h.store.close().await;
}

/// Regression for the set-based PostgreSQL import (it runs a batch in rounds, one occurrence of an
/// appointment per round): one batch holding several versions of one appointment, out of order,
/// and a repeat of another counts and stores exactly as the same rows one at a time do.
#[tokio::test]
async fn one_batch_with_several_versions_of_an_appointment_is_applied_in_row_order() {
    let h = Harness::new(t0()).await;
    let start = t0() + SignedDuration::from_hours(72);
    let later = start + SignedDuration::from_hours(1);
    let batch = [
        event("emr", "F1", 1, AppointmentStatus::Booked, start, v(10), 1),
        event("emr", "F1", 1, AppointmentStatus::Cancelled, start, v(5), 1),
        event("emr", "F1", 1, AppointmentStatus::Booked, later, v(20), 1),
        event("emr", "F2", 2, AppointmentStatus::Booked, start, v(10), 1),
        event("emr", "F2", 2, AppointmentStatus::Booked, start, v(10), 1),
        event("emr", "F1", 1, AppointmentStatus::Booked, later, v(20), 1),
    ];
    let now = h.clock.now();
    let r = h
        .service
        .ingest
        .accept(None, "hl7", now, &batch, &[], false)
        .await
        .unwrap();
    assert_eq!(
        (r.applied, r.unchanged, r.older_ignored, r.unknown_ignored),
        (3, 2, 1, 0)
    );
    let id = h.store.find_appointment("emr/F1").await.unwrap().unwrap();
    let rec = h.store.load_appointment(id).await.unwrap().unwrap();
    assert_eq!(rec.appointment.start, later, "the newest version won");
    assert_eq!(rec.appointment.status, AppointmentStatus::Booked);
    let status = h.store.status_summary(now).await.unwrap();
    assert_eq!(status.ignored_events.get("older"), Some(&1));
    assert_eq!(count_appointments(&h).await, 2);
    // A later batch with the same rows changes nothing.
    let r = h
        .service
        .ingest
        .accept(None, "hl7", now, &batch, &[], false)
        .await
        .unwrap();
    assert_eq!((r.applied, r.older_ignored), (0, 2), "{r:?}");
    h.store.close().await;
}
