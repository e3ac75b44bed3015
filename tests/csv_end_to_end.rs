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

/// `medrelay ingest csv` on a copy of `fixture` at the sample import time; exit code and output.
async fn ingest_cli(dir: &std::path::Path, connector: &str, fixture: &str) -> (u8, String) {
    let file = common::copy_sample(dir, fixture);
    let config = dir.join("medrelay.toml");
    common::cli(&[
        "medrelay",
        "--config",
        config.to_str().unwrap(),
        "--now",
        "2026-11-29T13:30:00Z",
        "ingest",
        "csv",
        "--connector",
        connector,
        "--as-of",
        "2026-11-29T13:30:00Z",
        file.to_str().unwrap(),
    ])
    .await
}

#[tokio::test]
async fn csv_header_that_cannot_be_decoded_is_bad_input_not_a_runtime_failure() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    // Exit 1 is for the database and the file system; an export that is not what the profile
    // says is bad input (3), a profile that does not fit the file is configuration (2).
    let (code, out) = ingest_cli(
        dir.path(),
        "openemr",
        "tests/fixtures/csv_undecodable_header.csv",
    )
    .await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    let (code, out) = ingest_cli(
        dir.path(),
        "openemr",
        "tests/fixtures/csv_missing_status_header.csv",
    )
    .await;
    assert_eq!(code, medrelay::exit::USAGE, "{out}");
    // A file that is not there is still a file-system failure.
    let config = dir.path().join("medrelay.toml");
    let loaded = medrelay::config::load(&config).unwrap();
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some("openemr")).unwrap().clone();
    let e = import_csv(
        &service,
        &loaded,
        &c,
        &dir.path().join("csv_undecodable_header.csv"),
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(medrelay::exit_code_of(&e), medrelay::exit::PARTIAL);
    assert!(
        e.to_string()
            .contains("header column 17 cannot be decoded as utf-8"),
        "{e}"
    );
    let e = import_csv(
        &service,
        &loaded,
        &c,
        &dir.path().join("not-there.csv"),
        None,
        |_| {},
    )
    .await
    .unwrap_err();
    assert_eq!(medrelay::exit_code_of(&e), medrelay::exit::FAILURE);
    store.close().await;
}

#[tokio::test]
async fn csv_import_says_how_many_rows_have_no_usable_phone_and_check_warns_without_a_phone_column()
{
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let (code, out) = ingest_cli(
        dir.path(),
        "openemr",
        "samples/csv/openemr_future_appointments.csv",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Row 50007's phone is `555-01`.
    assert!(
        out.contains("  1 row(s) without a usable phone: nothing will be sent for them (the phone is empty or not a valid number"),
        "{out}"
    );

    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    let (code, out) = common::cli_with_config(config, &["check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("no phone column"), "{out}");
    // The same profile without its phone column: a warning at check, and a line at import.
    let profiles = dir.path().join("profiles.toml");
    let text = std::fs::read_to_string(&profiles).unwrap();
    assert!(text.contains("phones = [\"Phone\"]\n"));
    std::fs::write(&profiles, text.replacen("phones = [\"Phone\"]\n", "", 1)).unwrap();
    let (code, out) = common::cli_with_config(config, &["check"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: connector `openemr` (profile `openemr`): no phone column is mapped"),
        "{out}"
    );
    let (_, json) = common::cli_with_config(config, &["check", "--json"]).await;
    assert!(json.contains("no phone column is mapped"), "{json}");
    let (code, out) = ingest_cli(
        dir.path(),
        "openemr",
        "samples/csv/openemr_future_appointments.csv",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("  12 row(s) without a usable phone: nothing will be sent for them (the profile maps no phone column"),
        "{out}"
    );
}

#[tokio::test]
async fn csv_cancelled_row_without_a_start_cancels_the_appointment() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    while !service.tick(50).await.unwrap().is_idle() {}

    // A quarter of an hour later the legacy feed (same system, delta) cancels 50001 with a row
    // that has no start; 50002's row says booked without a start, which is a bad row and changes
    // nothing.
    clock.set("2026-11-29T13:45:00Z".parse().unwrap());
    let cancel = common::copy_sample(dir.path(), "tests/fixtures/csv_cancel_without_start.csv");
    let legacy = loaded.csv_connector(Some("legacy")).unwrap().clone();
    let r = import_csv(
        &service,
        &loaded,
        &legacy,
        &cancel,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (r.summary.rows_ok, r.summary.rows_bad, r.summary.applied),
        (1, 1, 1),
        "{r:?}"
    );
    assert_eq!(r.rows.status_changes, 1);
    let report = std::fs::read_to_string(r.report.unwrap()).unwrap();
    assert!(
        report.contains("3,startdate,required value is empty: a booked appointment needs a start"),
        "{report}"
    );
    assert!(!report.contains("2,startdate"), "{report}");

    clock.set("2026-11-29T14:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}
    let reminders_to = |to: &str| {
        service
            .simulator
            .clone()
            .unwrap()
            .sent()
            .into_iter()
            .filter(|b| b["template"]["name"] == "appointment_reminder" && b["to"] == to)
            .count()
    };
    assert_eq!(reminders_to("12127365001"), 0, "cancelled: no reminder");
    store.close().await;
    let config = dir.path().join("medrelay.toml");
    let (code, out) = common::cli_with_config(
        config.to_str().unwrap(),
        &[
            "--now",
            "2026-11-29T14:00:00Z",
            "explain",
            "openemr/50001",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"cancelled\""), "{out}");
}

#[tokio::test]
async fn csv_day_only_appointment_gets_day_level_reminders_without_a_made_up_time() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    // The export writes 12:00 AM when only the day is known; the site's templates for such feeds
    // show the date, not a time.
    let profiles = dir.path().join("profiles.toml");
    let text = std::fs::read_to_string(&profiles).unwrap();
    let text = text.replacen(
        "datetime_format = \"%m/%d/%Y %I:%M %p\"\n",
        "datetime_format = \"%m/%d/%Y %I:%M %p\"\ntime_unknown_at = \"00:00\"\n",
        1,
    );
    std::fs::write(&profiles, text).unwrap();
    let config = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let with_time = "body = [\"given_name\", \"local_date\", \"local_time\", \"location\"]";
    assert_eq!(
        text.matches(with_time).count(),
        3,
        "booked, reminder and moved templates"
    );
    std::fs::write(
        &config,
        text.replace(
            with_time,
            "body = [\"given_name\", \"local_date\", \"location\"]",
        ),
    )
    .unwrap();
    let loaded = medrelay::config::load(&config).unwrap();

    let file = common::copy_sample(dir.path(), "tests/fixtures/csv_day_only_export.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, imported) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    assert_eq!(imported.summary.rows_ok, 2);
    let sim = service.simulator.clone().unwrap();
    let to_alice = || {
        sim.sent()
            .into_iter()
            .filter(|b| b["to"] == "12127365001")
            .collect::<Vec<_>>()
    };
    // Booking confirmation now; the 48 h reminder two days before the day, when quiet hours end
    // (1 Dec 08:00 EST = 13:00Z); the 2 h reminder the evening before (2 Dec 18:00 EST = 23:00Z);
    // nothing on the day itself.
    for (at, count) in [
        ("2026-11-29T13:30:00Z", 1),
        ("2026-12-01T12:59:00Z", 1),
        ("2026-12-01T13:00:00Z", 2),
        ("2026-12-02T22:59:00Z", 2),
        ("2026-12-02T23:00:00Z", 3),
        ("2026-12-03T02:00:00Z", 3),
        ("2026-12-03T14:00:00Z", 3),
    ] {
        clock.set(at.parse().unwrap());
        while !service.tick(50).await.unwrap().is_idle() {}
        assert_eq!(to_alice().len(), count, "at {at}");
    }
    for body in to_alice() {
        let params = &body["template"]["components"][0]["parameters"];
        assert_eq!(params[1]["text"], "12/03/2026", "{body}");
        let text = body.to_string();
        assert!(
            !text.contains("12:00") && !text.contains("00:00"),
            "a made-up time in {text}"
        );
    }
    // The timed appointment of the same day is reminded by the hour (48 h: 1 Dec 14:00Z; 2 h: 07:00
    // EST is quiet, so 20:59 EST the evening before).
    let to_bob: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|b| b["to"] == "12127365002" && b["template"]["name"] == "appointment_reminder")
        .collect();
    assert_eq!(to_bob.len(), 2, "48 h and 2 h reminders");
    store.close().await;

    let (code, out) = common::cli_with_config(
        config.to_str().unwrap(),
        &["--now", "2026-12-03T14:00:00Z", "explain", "openemr/60001"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("by day: the appointment's time is unknown"),
        "{out}"
    );
}
