//! A changed configuration (issue 16: reload, or a restart with a new file): a step removed from
//! the plan is withdrawn when it comes due instead of being sent, a step added is planned for the
//! appointments already stored, and an unchanged plan re-plans nothing.

mod lifecycle_common;

use std::sync::Arc;

use jiff::SignedDuration;
use lifecycle_common::{CONFIG, Harness, compiled, event, ny};
use medrelay_mapping::model::AppointmentStatus;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::config::{Compiled, PipelineConfig};

/// The test plan without the 48 h reminder, and with a 30 h one when `with_30h`.
fn changed_plan(with_30h: bool) -> Compiled {
    let mut c: PipelineConfig = toml::from_str(CONFIG).unwrap();
    let mut extra = c
        .plan
        .steps
        .iter()
        .find(|s| s.name == "reminder_48h")
        .unwrap()
        .clone();
    c.plan.steps.retain(|s| s.name != "reminder_48h");
    if with_30h {
        extra.name = "reminder_30h".into();
        extra.offset = Some("30h".into());
        c.plan.steps.push(extra);
    }
    c.compile().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_removed_from_the_plan_is_withdrawn_not_sent_and_an_added_one_is_planned() {
    let t0 = ny("2026-12-07T10:00");
    let mut h = Harness::new(t0).await;
    let fingerprint = compiled().plan_fingerprint();
    assert_eq!(
        h.store.plan_changed(&fingerprint, t0).await.unwrap(),
        0,
        "baseline"
    );
    assert_eq!(
        h.store.plan_changed(&fingerprint, t0).await.unwrap(),
        0,
        "unchanged"
    );
    let v = t0 - SignedDuration::from_hours(1);
    let e = event(
        "emr",
        "R0",
        0,
        AppointmentStatus::Booked,
        ny("2026-12-09T12:00"),
        v,
        1,
    );
    h.deliver("csv", &[e]).await;
    h.settle().await;
    assert_eq!(h.sim.sent().len(), 1, "the booking confirmation");
    // The 48 h reminder leaves the plan: at its time it is withdrawn, not sent.
    let replanned = h
        .service
        .reconfigure(Arc::new(changed_plan(false)))
        .await
        .unwrap();
    assert_eq!(replanned, 1, "the future appointment is planned again");
    h.clock.set(ny("2026-12-07T12:00"));
    h.settle().await;
    assert_eq!(h.sim.sent().len(), 1, "no reminder went out");
    let s = h.store.status_summary(h.clock.now()).await.unwrap();
    assert_eq!(s.jobs_by_state.get("withdrawn"), Some(&1), "{s:?}");
    // A step new to the plan is planned for the stored appointment and sent at its time.
    let replanned = h
        .service
        .reconfigure(Arc::new(changed_plan(true)))
        .await
        .unwrap();
    assert_eq!(replanned, 1);
    h.settle().await;
    h.clock.set(ny("2026-12-08T08:30"));
    h.settle().await;
    let sent = h.sim.sent();
    assert_eq!(sent.len(), 2, "the new 30 h reminder: {sent:?}");
    assert_eq!(sent[1]["template"]["name"], "reminder");
    // The same plan again re-plans nothing.
    assert_eq!(
        h.service
            .reconfigure(Arc::new(changed_plan(true)))
            .await
            .unwrap(),
        0
    );
}
