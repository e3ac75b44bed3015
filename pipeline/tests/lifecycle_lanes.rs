//! Priority lanes: when an outage leaves several steps due at once, the nearest-term message goes
//! first (the 2 h reminder before the 48 h one, reminders before confirmations, follow-ups last).

mod lifecycle_common;

use jiff::{SignedDuration, Timestamp};
use lifecycle_common::{Harness, event};
use medrelay_mapping::model::AppointmentStatus;

fn ny(civil: &str) -> Timestamp {
    civil
        .parse::<jiff::civil::DateTime>()
        .unwrap()
        .in_tz("America/New_York")
        .unwrap()
        .timestamp()
}

#[tokio::test]
async fn under_a_backlog_the_2h_reminder_goes_first_and_follow_ups_last() {
    // Monday 2026-12-07 10:00 New York: three appointments arrive, then nothing is sent until 12:30
    // (an outage), when all their steps are due together.
    let now = ny("2026-12-07T10:00");
    let h = Harness::new(now).await;
    let v = now - SignedDuration::from_hours(1);
    let in_two_days = event(
        "emr",
        "A",
        1,
        AppointmentStatus::Booked,
        ny("2026-12-09T12:00"),
        v,
        1,
    );
    let this_afternoon = event(
        "emr",
        "B",
        2,
        AppointmentStatus::Booked,
        ny("2026-12-07T14:00"),
        v,
        1,
    );
    let yesterday = event(
        "emr",
        "C",
        3,
        AppointmentStatus::Fulfilled,
        ny("2026-12-06T11:30"),
        v,
        1,
    );
    h.deliver("csv", &[in_two_days, this_afternoon, yesterday])
        .await;
    h.service.scheduler.plan_pending().await.unwrap();

    let later = ny("2026-12-07T12:30");
    h.clock.set(later);
    let mut order = Vec::new();
    while let Some(job) = h.store.claim_due(later, 1).await.unwrap().pop() {
        order.push(job.step);
    }
    let first = |step: &str| order.iter().position(|s| s == step).unwrap_or(usize::MAX);
    assert_eq!(
        order.first().map(String::as_str),
        Some("reminder_2h"),
        "{order:?}"
    );
    assert!(first("reminder_2h") < first("reminder_48h"), "{order:?}");
    assert!(
        first("reminder_48h") < first("booking_confirmation"),
        "{order:?}"
    );
    assert!(
        first("booking_confirmation") < first("follow_up_24h"),
        "{order:?}"
    );
    assert_eq!(
        order.last().map(String::as_str),
        Some("follow_up_24h"),
        "{order:?}"
    );
    h.store.close().await;
}
