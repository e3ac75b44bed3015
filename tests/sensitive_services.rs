//! Sensitive services: a psychiatry service type or an oncology location gets only the neutral
//! template (no location, practitioner or service named), or nothing at all with `action = "suppress"`.

mod common;

use std::sync::Arc;

use clap::Parser;
use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};

async fn run_with(action: &str) -> (Vec<serde_json::Value>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("action = \"neutral\"", &format!("action = \"{action}\""));
    std::fs::write(&path, text).unwrap();
    let loaded = medrelay::config::load(&path).unwrap();
    let file = dir.path().join("sensitive_export.csv");
    std::fs::copy(
        common::root().join("tests/fixtures/sensitive_export.csv"),
        &file,
    )
    .unwrap();
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-30T14:00:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some("legacy")).unwrap().clone();
    import_csv(&service, &loaded, &c, &file, Some(clock.now()), |_| {})
        .await
        .unwrap();
    while !service.tick(50).await.unwrap().is_idle() {}
    let sent = service.simulator.clone().unwrap().sent();
    store.close().await;
    let mut out = Vec::new();
    let args = [
        "medrelay",
        "--config",
        path.to_str().unwrap(),
        "explain",
        "legacy/S-1",
    ];
    medrelay::run(medrelay::Cli::parse_from(args), &mut out)
        .await
        .unwrap();
    (sent, String::from_utf8(out).unwrap(), dir)
}

fn to(b: &serde_json::Value) -> &str {
    b["to"].as_str().unwrap()
}

#[tokio::test]
async fn sensitive_appointments_get_only_the_neutral_template() {
    let (sent, _, _dir) = run_with("neutral").await;
    for (digits, sensitive) in [
        ("12127367001", true),
        ("12127367002", true),
        ("12127367003", false),
    ] {
        let mine: Vec<_> = sent.iter().filter(|b| to(b) == digits).collect();
        assert!(!mine.is_empty(), "{digits} got its confirmation");
        for b in mine {
            let name = b["template"]["name"].as_str().unwrap();
            let text = b.to_string();
            if sensitive {
                assert_eq!(name, "appointment_neutral", "{digits}");
                assert!(
                    !text.contains("Oncology") && !text.contains("Psychiatry"),
                    "{text}"
                );
                assert!(
                    !text.contains("Midtown"),
                    "the neutral template names no place: {text}"
                );
                let params = &b["template"]["components"][0]["parameters"];
                assert_eq!(params.as_array().unwrap().len(), 4);
                assert_eq!(
                    params[3]["text"], "+1 212-736-5000",
                    "site phone, not a department"
                );
            } else {
                assert_eq!(name, "appointment_booked", "{digits}");
            }
        }
    }
}

#[tokio::test]
async fn suppress_sends_nothing_and_explains_why() {
    let (sent, explain, _dir) = run_with("suppress").await;
    assert!(
        sent.iter()
            .all(|b| to(b) != "12127367001" && to(b) != "12127367002")
    );
    assert!(sent.iter().any(|b| to(b) == "12127367003"));
    assert!(
        explain.contains("sensitive service (service type on the deny-list)"),
        "{explain}"
    );
    assert!(
        !explain.contains("Psychiatry"),
        "explain names the field, not the value"
    );
}
