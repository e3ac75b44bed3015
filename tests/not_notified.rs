//! Permanent delivery failures reach the EHR as "could not notify", whether WhatsApp says so at once
//! (an error response) or later (a `failed` status webhook), once per appointment slot.

mod common;

use std::sync::Arc;

use medrelay_pipeline::clock::{Clock, ManualClock};

#[tokio::test]
async fn permanent_failures_are_written_back_as_not_notified() {
    let dir = tempfile::tempdir().unwrap();
    // Bob's number is not on WhatsApp: the Cloud API accepts, then a failed status (131026) arrives.
    let loaded = common::demo_config(dir.path(), &["+1 212 736 5002"]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    // Carmen's sends are refused at once with a permanent error (131047).
    let sim = service.simulator.clone().unwrap();
    sim.fail_with("+12127365003", 131047);
    while !service.tick(50).await.unwrap().is_idle() {}
    // Later steps fail again; still one record per appointment slot.
    clock.set("2026-12-01T18:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}

    let rows = common::return_rows(dir.path(), "openemr");
    let bob: Vec<_> = rows.iter().filter(|r| r.starts_with("50002,")).collect();
    let carmen: Vec<_> = rows.iter().filter(|r| r.starts_with("50003,")).collect();
    assert_eq!(bob.len(), 1, "{rows:?}");
    assert!(
        bob[0].starts_with("50002,1002,not_notified,N,"),
        "{}",
        bob[0]
    );
    assert_eq!(carmen.len(), 1, "{rows:?}");
    assert!(
        carmen[0].starts_with("50003,1003,not_notified,N,"),
        "{}",
        carmen[0]
    );
    let status = store.status_summary(clock.now()).await.unwrap();
    assert!(
        status.jobs_by_state.get("failed").copied().unwrap_or(0) >= 2,
        "{status:?}"
    );
    store.close().await;
}

/// An appointment its template cannot describe (no location) gets no message, and the EHR hears
/// "not notified" once, like a permanent WhatsApp failure; the others are unaffected.
#[tokio::test]
async fn a_template_that_cannot_be_rendered_is_written_back_as_not_notified() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "tests/fixtures/no_location_export.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    while !service.tick(50).await.unwrap().is_idle() {}
    clock.set("2026-12-01T12:30:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}

    let rows = common::return_rows(dir.path(), "openemr");
    let nadia: Vec<_> = rows.iter().filter(|r| r.starts_with("60001,")).collect();
    assert_eq!(nadia.len(), 1, "{rows:?}");
    assert!(
        nadia[0].starts_with("60001,2001,not_notified,N,"),
        "{}",
        nadia[0]
    );
    assert!(!rows.iter().any(|r| r.starts_with("60002,")), "{rows:?}");
    let sim = service.simulator.clone().unwrap();
    let sent = sim.sent();
    assert!(!sent.iter().any(|b| b["to"] == "12127365021"));
    assert!(sent.iter().any(|b| b["to"] == "12127365022"));
    store.close().await;
}
