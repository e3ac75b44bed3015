//! The lifecycle through the real configuration and CLI: two feeds of one system (`openemr` and
//! `legacy` carry the same OpenEMR ids) give one appointment, one set of messages and one write-back;
//! a snapshot withdraws the steps of a moved and a dropped appointment; `medrelay explain` says why
//! each step was scheduled, sent, withdrawn, skipped or failed, without patient data.

mod common;
use common::cli;

use std::sync::Arc;

use medrelay::commands::demo::openemr_day_two;
use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::whatsapp::simulator::PatientAction;

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_feeds_one_system_and_explain_tells_why() {
    let dir = tempfile::tempdir().unwrap();
    // Lena's number is "not on WhatsApp": her confirmation fails with 131026 after acceptance.
    let loaded = common::demo_config(dir.path(), &["+1 212 736 5012"]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let sim = service.simulator.clone().unwrap();
    sim.script("+12127365001", [PatientAction::Tap("confirm".into())]);

    // The same export arrives through both feeds.
    for name in ["openemr", "legacy"] {
        let c = loaded.csv_connector(Some(name)).unwrap().clone();
        let r = import_csv(&service, &loaded, &c, &file, Some(clock.now()), |_| {})
            .await
            .unwrap();
        assert_eq!(r.summary.rows_ok, 12);
        if name == "legacy" {
            assert_eq!(r.summary.applied, 0, "nothing new through the second feed");
        }
    }
    let s = store.status_summary(clock.now()).await.unwrap();
    assert_eq!(s.appointments_by_status.values().sum::<i64>(), 12);
    while !service.tick(50).await.unwrap().is_idle() {}
    clock.set("2026-11-29T14:00:00Z".parse().unwrap());
    while !service.tick(50).await.unwrap().is_idle() {}

    // One confirmation and one 48 h reminder for Alice, not two of each.
    let to_alice: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|b| b["to"] == "12127365001")
        .map(|b| b["template"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        to_alice,
        vec!["appointment_booked", "appointment_reminder"],
        "{to_alice:?}"
    );
    // Her Confirm goes back once, through the first connector of the system with a return file, and
    // so does Lena's "could not notify" (her number is not on WhatsApp).
    let mut rows = Vec::new();
    for f in files_in(&dir.path().join("returns/openemr")) {
        let text = std::fs::read_to_string(&f).unwrap();
        rows.extend(text.lines().skip(1).map(str::to_string));
    }
    rows.sort();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].starts_with("50001,1001,confirm,C,"), "{rows:?}");
    assert!(
        rows[1].starts_with("50012,1012,not_notified,N,"),
        "{rows:?}"
    );
    assert!(files_in(&dir.path().join("returns/legacy")).is_empty());

    // The next day's snapshot moves 50002 and drops 50003; the legacy feed saw both, but only the
    // openemr feed's own snapshot speaks for them.
    clock.set("2026-11-30T12:00:00Z".parse().unwrap());
    let day_two = dir.path().join("day2.csv");
    std::fs::write(&day_two, openemr_day_two()).unwrap();
    let c = loaded.csv_connector(Some("openemr")).unwrap().clone();
    let r = import_csv(&service, &loaded, &c, &day_two, Some(clock.now()), |_| {})
        .await
        .unwrap();
    assert_eq!(r.summary.swept, 1);
    while !service.tick(50).await.unwrap().is_idle() {}
    store.close().await;

    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    // A connector name finds the shared appointment.
    let (code, out) = cli(&["medrelay", "--config", config, "explain", "legacy/50002"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("openemr/50002"), "{out}");
    assert!(out.contains("listed by legacy, openemr"), "{out}");
    assert!(out.contains("(for the old slot"), "{out}");
    assert!(
        out.contains("withdrawn: appointment was rescheduled"),
        "{out}"
    );
    assert!(out.contains("scheduled: 48h before the start"), "{out}");
    assert!(out.contains("sent: 2026-11-29"), "{out}");
    assert!(out.contains("text: appointment_reminder(B*"), "{out}");

    let (_, out) = cli(&["medrelay", "--config", config, "explain", "openemr/50003"]).await;
    assert!(
        out.contains("withdrawn: appointment is now cancelled"),
        "{out}"
    );
    let (_, out) = cli(&["medrelay", "--config", config, "explain", "openemr/50006"]).await;
    assert!(out.contains("skipped: no consent"), "{out}");
    let (_, out) = cli(&["medrelay", "--config", config, "explain", "openemr/50012"]).await;
    assert!(
        out.contains("failed: delivery failed: permanent failure (code 131026)"),
        "{out}"
    );
    let (_, out) = cli(&["medrelay", "--config", config, "explain", "50001"]).await;
    assert!(out.contains("WhatsApp: read"), "{out}");

    // Local time and masked text in `medrelay plan`, and no patient data anywhere.
    let (code, plan) = cli(&[
        "medrelay",
        "--config",
        config,
        "plan",
        "--date",
        "2026-12-03",
    ])
    .await;
    assert_eq!(code, 0, "{plan}");
    assert!(plan.contains("starts 2026-12-03 11:00 EST"), "{plan}");
    for phi in ["Bob", "Sample", "Alice", "Example", "736-5002", "7365002"] {
        assert!(!plan.contains(phi), "{phi} in {plan}");
        assert!(!out.contains(phi), "{phi} in {out}");
    }
}
