//! Consent from every source, their precedence, and revocation taking effect at once (also for
//! messages already queued).

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::service::Service;

async fn settle(service: &Service) {
    while !service.tick(50).await.unwrap().is_idle() {}
}

fn sent_to(service: &Service, digits: &str) -> Vec<serde_json::Value> {
    service
        .simulator
        .clone()
        .unwrap()
        .sent()
        .into_iter()
        .filter(|b| b["to"] == digits)
        .collect()
}

#[tokio::test]
async fn every_consent_source_and_its_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let config = dir
        .path()
        .join("medrelay.toml")
        .to_str()
        .unwrap()
        .to_string();
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let openemr = loaded.csv_connector(Some("openemr")).unwrap().clone();
    import_csv(
        &service,
        &loaded,
        &openemr,
        &file,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    settle(&service).await;

    // EHR opt-in column: Y / yes / true permit, N denies, blank means no opt-in (the site requires one).
    assert_eq!(sent_to(&service, "12127365001").len(), 1, "Alice (Y)");
    assert_eq!(sent_to(&service, "12127365002").len(), 1, "Bob (yes)");
    assert!(sent_to(&service, "12127365005").is_empty(), "Eve (N)");
    assert!(sent_to(&service, "12127365006").is_empty(), "Farid (blank)");
    let (_, eve) = cli(&config, &["explain", "openemr/50005"]).await;
    assert!(eve.contains("EHR records an opt-out"), "{eve}");
    let (_, farid) = cli(&config, &["explain", "openemr/50006"]).await;
    assert!(
        farid.contains("no recorded opt-in and the site requires one"),
        "{farid}"
    );

    // Staff grant for Farid (blank in the EHR): his skipped confirmation is useful again and goes out.
    let (code, out) = cli(
        &config,
        &[
            "--now",
            "2026-11-29T13:30:00Z",
            "consent",
            "grant",
            "--phone",
            "(212) 736-5006",
            "--reason",
            "signed the WhatsApp form",
            "--actor",
            "frontdesk1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "12127365006").len(),
        1,
        "Farid after the staff grant"
    );

    // Staff revocation for Alice takes effect at once: her queued reminders are withdrawn.
    let (code, out) = cli(
        &config,
        &[
            "--now",
            "2026-11-29T13:31:00Z",
            "consent",
            "revoke",
            "--phone",
            "+1 212 736 5001",
            "--reason",
            "asked at the front desk",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pending message(s) withdrawn"), "{out}");
    assert!(
        !out.contains("; 0 pending"),
        "Alice had queued reminders: {out}"
    );
    clock.set("2026-12-01T13:00:00Z".parse().unwrap());
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "12127365001").len(),
        1,
        "no reminder after the revocation"
    );
    let (_, shown) = cli(&config, &["consent", "show", "--phone", "+12127365001"]).await;
    assert!(
        shown.contains("revoke") && shown.contains("asked at the front desk"),
        "{shown}"
    );

    // The patient's own STOP wins over a later EHR export that still says opt-in...
    let sim = service.simulator.clone().unwrap();
    sim.patient_texts("+12127365003", "STOP");
    settle(&service).await;
    let replies_before = sent_to(&service, "12127365003").len();
    clock.set("2026-12-01T18:00:00Z".parse().unwrap());
    let again = import_csv(
        &service,
        &loaded,
        &openemr,
        &file,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.summary.rows_bad, 0);
    clock.set("2026-12-03T17:00:00Z".parse().unwrap()); // 48 h and 2 h reminders of Carmen (13:30 NY, 3 Dec)
    settle(&service).await;
    let carmen: Vec<_> = sent_to(&service, "12127365003")
        .into_iter()
        .filter(|b| b["type"] == "template")
        .collect();
    assert!(
        carmen
            .iter()
            .all(|b| b["template"]["name"] == "appointment_booked"),
        "no reminder after STOP, even though the EHR still says opt-in: {carmen:?}"
    );
    assert!(sent_to(&service, "12127365003").len() >= replies_before);
    let (_, explain) = cli(&config, &["explain", "openemr/50003"]).await;
    assert!(
        explain.contains("patient opted out on WhatsApp (STOP)"),
        "{explain}"
    );
    store.close().await;
}
