//! WhatsApp's messaging limit (issue 16): a portfolio may message at most N unique users in a
//! moving 24 h with business-initiated (template) messages. With a tier of 250 and 400 patients
//! due at once, 250 get their messages by lane (reminders before confirmations), the other 150
//! wait (deferred, never failed) until the window moves, then all go; nothing is lost, the 80 %
//! alert fires once and resolves when the window has moved.

mod lifecycle_common;

use jiff::SignedDuration;
use lifecycle_common::{Harness, compiled, event, ny, phone};
use medrelay_mapping::model::AppointmentStatus;
use medrelay_pipeline::clock::Clock;
use std::collections::BTreeSet;

/// `(step template, recipient)` of every template message the simulator accepted so far (a
/// patient who writes also gets the inbox's acknowledgement, a free service message).
fn sent(h: &Harness) -> Vec<(String, String)> {
    h.sim
        .sent()
        .iter()
        .filter(|b| b["type"] == "template")
        .map(|b| {
            (
                b["template"]["name"].as_str().unwrap().to_owned(),
                b["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn digits(n: usize) -> String {
    phone(n).trim_start_matches('+').to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_of_250_sends_250_recipients_by_lane_and_the_rest_when_the_window_moves() {
    let mut config = compiled();
    config.messaging_limit = Some(250);
    // Monday 10:00 in New York: 400 bookings arrive.
    let t0 = ny("2026-12-07T10:00");
    let h = Harness::with_config(t0, config).await;
    let v = t0 - SignedDuration::from_hours(1);
    // Patients 0..150: Wednesday 12:00 (48 h reminder due Monday 12:00); 150..400: Wednesday
    // 11:00 (due Monday 11:00). Every booking also has its confirmation, due at once (booked
    // first: were confirmations first, patients 0..250 would take the places).
    let events: Vec<_> = (0..400)
        .map(|n| {
            let start = if n < 150 {
                ny("2026-12-09T12:00")
            } else {
                ny("2026-12-09T11:00")
            };
            event(
                "emr",
                &format!("A{n}"),
                n,
                AppointmentStatus::Booked,
                start,
                v,
                1,
            )
        })
        .collect();
    h.deliver("csv", &events).await;
    h.service.scheduler.plan_pending().await.unwrap();

    // Nothing was sent until 12:01 (an outage): confirmations and 48 h reminders are all due.
    h.clock.set(ny("2026-12-07T12:01"));
    let mut report = h.service.sender.send_due(1000).await.unwrap();
    while report.claimed > 0 && report.sent > 0 {
        report = h.service.sender.send_due(1000).await.unwrap();
    }
    let first = sent(&h);
    let recipients: BTreeSet<&str> = first.iter().map(|(_, to)| to.as_str()).collect();
    assert_eq!(recipients.len(), 250, "exactly the tier");
    // Reminders (lane of 48 h) went before confirmations: the 250 places went to the earliest
    // reminders, and the confirmations that followed went only to recipients already counted.
    let expected: BTreeSet<String> = (150..400).map(digits).collect();
    assert_eq!(
        recipients
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        expected
    );
    assert_eq!(
        first.len(),
        500,
        "a reminder and a confirmation for each of the 250"
    );
    let s = h.store.status_summary(h.clock.now()).await.unwrap();
    assert!(
        s.open_alerts
            .iter()
            .any(|(_, kind, d)| kind == "messaging_limit" && d.contains("250 of the 250")),
        "{:?}",
        s.open_alerts
    );
    assert_eq!(s.jobs_by_state.get("failed"), None, "nothing failed: {s:?}");

    // Six hours later: the window has not moved; nothing more goes.
    h.clock.set(ny("2026-12-07T18:00"));
    h.service.sender.send_due(1000).await.unwrap();
    assert_eq!(sent(&h).len(), 500);

    // Tuesday 12:02: the first 250 left the window; the 150 waiting get both their messages
    // (the reminder is still ahead of its visit, the confirmation too).
    h.clock.set(ny("2026-12-08T12:02"));
    let mut report = h.service.sender.send_due(1000).await.unwrap();
    while report.claimed > 0 && report.sent > 0 {
        report = h.service.sender.send_due(1000).await.unwrap();
    }
    let all = sent(&h);
    let late: BTreeSet<String> = all[500..].iter().map(|(_, to)| to.clone()).collect();
    assert_eq!(late, (0..150).map(digits).collect::<BTreeSet<_>>());
    assert_eq!(
        all.len(),
        800,
        "every reminder and confirmation went, none twice"
    );
    let s = h.store.status_summary(h.clock.now()).await.unwrap();
    // 150 of 250 is under 80 %: the alert is resolved.
    assert!(
        !s.open_alerts
            .iter()
            .any(|(_, kind, _)| kind == "messaging_limit"),
        "{:?}",
        s.open_alerts
    );
    assert_eq!(s.jobs_by_state.get("failed"), None, "{s:?}");
}

/// A patient who wrote in the last 24 h has an open customer service window: Meta does not count
/// a template to them against the messaging limit, so neither does medrelay. With a tier of 2,
/// three patients get their confirmation when one of them wrote first; a fourth waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_with_an_open_service_window_does_not_spend_the_messaging_limit() {
    let mut config = compiled();
    config.messaging_limit = Some(2);
    let t0 = ny("2026-12-07T09:00");
    let h = Harness::with_config(t0, config).await;
    // Patient 2 writes at 09:00 (a question, for the staff queue).
    h.sim.patient_texts(&phone(2), "Is there parking?");
    h.settle().await;
    h.clock.set(ny("2026-12-07T10:00"));
    let v = t0 - SignedDuration::from_hours(1);
    let events: Vec<_> = (0..4)
        .map(|n| {
            event(
                "emr",
                &format!("W{n}"),
                n,
                AppointmentStatus::Booked,
                ny("2026-12-09T12:00"),
                v,
                1,
            )
        })
        .collect();
    h.deliver("csv", &events).await;
    h.settle().await;
    let recipients: BTreeSet<String> = sent(&h).into_iter().map(|(_, to)| to).collect();
    // Patients 0 and 1 take the two places; patient 2 is inside the window; patient 3 waits.
    assert_eq!(recipients, [0, 1, 2].map(digits).into_iter().collect());
    let s = h.store.status_summary(h.clock.now()).await.unwrap();
    assert_eq!(s.jobs_by_state.get("failed"), None, "{s:?}");
    // Three were messaged, two count against the limit (patient 2's went inside the window).
    let counted = h
        .store
        .recipients_since(h.clock.now() - SignedDuration::from_hours(24))
        .await
        .unwrap();
    assert_eq!(counted.len(), 2, "{counted:?}");
}
