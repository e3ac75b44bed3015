//! Priority lanes: when an outage leaves several steps due at once, the nearest-term message goes
//! first (the 2 h reminder before the 48 h one, reminders before confirmations, follow-ups last).

mod lifecycle_common;

use jiff::{SignedDuration, Timestamp};
use lifecycle_common::{Harness, event, ny};
use medrelay_mapping::model::AppointmentStatus;

/// The steps in the order the sender gets them, claiming `batch` at a time.
async fn claim_order(h: &Harness, at: Timestamp, batch: i64) -> Vec<String> {
    let mut order = Vec::new();
    loop {
        let jobs = h.store.claim_due(at, batch).await.unwrap();
        if jobs.is_empty() {
            return order;
        }
        order.extend(jobs.into_iter().map(|j| j.step));
    }
}

/// The three appointments of the backlog test, their steps planned, nothing sent.
async fn backlog() -> Harness {
    let now = ny("2026-12-07T10:00");
    let h = Harness::new(now).await;
    let v = now - SignedDuration::from_hours(1);
    let events = [
        event(
            "emr",
            "A",
            1,
            AppointmentStatus::Booked,
            ny("2026-12-09T12:00"),
            v,
            1,
        ),
        event(
            "emr",
            "B",
            2,
            AppointmentStatus::Booked,
            ny("2026-12-07T14:00"),
            v,
            1,
        ),
        event(
            "emr",
            "C",
            3,
            AppointmentStatus::Fulfilled,
            ny("2026-12-06T11:30"),
            v,
            1,
        ),
    ];
    h.deliver("csv", &events).await;
    h.service.scheduler.plan_pending().await.unwrap();
    h
}

/// Regression: a claimed batch came back sorted by job id, so within one batch a confirmation
/// booked first went before a 2 h reminder (and spent the messaging limit first).
#[tokio::test]
async fn a_claimed_batch_is_in_lane_order_not_job_id_order() {
    let h = backlog().await;
    let later = ny("2026-12-07T12:30");
    let one_by_one = {
        let h1 = backlog().await;
        claim_order(&h1, later, 1).await
    };
    let batch = claim_order(&h, later, 100).await;
    assert!(batch.len() >= 4, "{batch:?}");
    assert_eq!(batch, one_by_one);
    assert_eq!(batch.first().map(String::as_str), Some("reminder_2h"));
    h.store.close().await;
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
    let order = claim_order(&h, later, 1).await;
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
