//! The foundation's end-to-end path: sample CSV -> appointments -> due reminder -> the simulator
//! receives the exact template JSON -> simulated Confirm -> the return CSV holds that confirmation
//! once; importing the file again changes nothing.

mod common;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::whatsapp::simulator::PatientAction;
use serde_json::json;

#[tokio::test]
async fn sample_csv_reminder_confirm_and_return_file_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let store = open_store(&loaded).await.unwrap();
    // Alice's appointment is 2026-12-01 09:00 New York (14:00Z): the 48 h reminder is due 2026-11-29 14:00Z.
    // 13:30Z is 08:30 local, just after the 21:00-08:00 quiet hours.
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let connector = loaded.csv_connector(Some("openemr")).unwrap().clone();

    let first = import_csv(
        &service,
        &loaded,
        &connector,
        &file,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(first.summary.rows_ok, 12);
    assert_eq!(first.summary.rows_bad, 0);
    assert_eq!(first.summary.applied, 12);
    assert!(first.report.is_none(), "no bad rows, no report file");

    // Plan and send what is due now: booking confirmations only (no buttons).
    while !service.tick(50).await.unwrap().is_idle() {}
    let sim = service.simulator.clone().unwrap();
    let confirmations = sim.sent();
    assert!(
        confirmations
            .iter()
            .all(|b| b["template"]["name"] == "appointment_booked")
    );
    // Alice (opted in, booked) got one; Eve (opt-in N) and Farid (no signal) did not.
    let to = |b: &serde_json::Value| b["to"].as_str().unwrap().to_string();
    assert!(confirmations.iter().any(|b| to(b) == "12127365001"));
    assert!(!confirmations.iter().any(|b| to(b) == "12127365005"));
    assert!(!confirmations.iter().any(|b| to(b) == "12127365006"));

    // The patient will tap Confirm on the next template with buttons.
    sim.script("+12127365001", [PatientAction::Tap("confirm".into())]);
    clock.set("2026-11-29T14:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}
    let reminder = sim
        .sent()
        .into_iter()
        .find(|b| b["template"]["name"] == "appointment_reminder" && to(b) == "12127365001")
        .expect("the 48 h reminder was sent");
    let job = reminder["biz_opaque_callback_data"]
        .as_str()
        .unwrap()
        .to_string();
    let job_id = job.strip_prefix("job:").unwrap();
    let payload = |i: usize| {
        reminder["template"]["components"][i + 1]["parameters"][0]["payload"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for (i, action) in ["confirm", "reschedule", "cancel"].iter().enumerate() {
        assert!(
            payload(i).starts_with(&format!("v1.{job_id}.{action}.")),
            "{}",
            payload(i)
        );
    }
    assert_eq!(
        reminder,
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "12127365001",
            "type": "template",
            "biz_opaque_callback_data": job,
            "template": {
                "name": "appointment_reminder",
                "language": {"code": "en_US"},
                "components": [
                    {"type": "body", "parameters": [
                        {"type": "text", "text": "Alice"},
                        {"type": "text", "text": "12/01/2026"},
                        {"type": "text", "text": "09:00 AM"},
                        {"type": "text", "text": "Midtown Demo Clinic"}
                    ]},
                    {"type": "button", "sub_type": "quick_reply", "index": "0",
                     "parameters": [{"type": "payload", "payload": payload(0)}]},
                    {"type": "button", "sub_type": "quick_reply", "index": "1",
                     "parameters": [{"type": "payload", "payload": payload(1)}]},
                    {"type": "button", "sub_type": "quick_reply", "index": "2",
                     "parameters": [{"type": "payload", "payload": payload(2)}]}
                ]
            }
        })
    );

    let rows = common::return_rows(dir.path(), "openemr");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("50001,1001,confirm,C,"), "{}", rows[0]);

    // Re-importing the same file changes nothing: no appointment update, no new message, no new row.
    let sent_before = sim.sent().len();
    let again = import_csv(
        &service,
        &loaded,
        &connector,
        &file,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.summary.applied, 0);
    assert_eq!(again.summary.unchanged, 12);
    assert_eq!(again.summary.swept, 0);
    while !service.tick(50).await.unwrap().is_idle() {}
    assert_eq!(sim.sent().len(), sent_before);
    assert_eq!(common::return_rows(dir.path(), "openemr"), rows);

    // Walk on to the 2 h reminder: Alice gets it and taps Confirm again; no step is ever sent twice
    // and the EHR hears about the confirmation once.
    sim.script("+12127365001", [PatientAction::Tap("confirm".into())]);
    clock.set("2026-12-01T12:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}
    let to_alice: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|b| to(b) == "12127365001")
        .collect();
    let callbacks: std::collections::BTreeSet<_> = to_alice
        .iter()
        .map(|b| b["biz_opaque_callback_data"].to_string())
        .collect();
    assert_eq!(callbacks.len(), to_alice.len(), "one message per step");
    assert_eq!(to_alice.len(), 3, "confirmation, 48 h and 2 h reminders");
    assert_eq!(
        common::return_rows(dir.path(), "openemr"),
        rows,
        "still exactly one confirmation"
    );
    let _ = SignedDuration::ZERO;
    let _: Option<Timestamp> = None;
    store.close().await;
}

#[tokio::test]
async fn write_back_is_exactly_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T14:00:00Z".parse().unwrap()));
    {
        let store = open_store(&loaded).await.unwrap();
        let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
        let connector = loaded.csv_connector(Some("openemr")).unwrap().clone();
        import_csv(
            &service,
            &loaded,
            &connector,
            &file,
            Some(clock.now()),
            |_| {},
        )
        .await
        .unwrap();
        let sim = service.simulator.clone().unwrap();
        sim.script("+12127365001", [PatientAction::Tap("cancel".into())]);
        while !service.tick(50).await.unwrap().is_idle() {}
        store.close().await;
    }
    let rows = common::return_rows(dir.path(), "openemr");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].starts_with("50001,1001,cancel,X,"), "{}", rows[0]);
    // A new process on the same database writes nothing again, and the cancelled appointment gets
    // no more reminders.
    let store = open_store(&loaded).await.unwrap();
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    clock.set("2026-12-01T12:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}
    assert_eq!(common::return_rows(dir.path(), "openemr"), rows);
    let to_alice = service
        .simulator
        .clone()
        .unwrap()
        .sent()
        .into_iter()
        .filter(|b| b["to"] == "12127365001")
        .count();
    assert_eq!(to_alice, 0, "the patient cancelled: no 2 h reminder");
    store.close().await;
}
