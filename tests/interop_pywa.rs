//! Interop with pywa, an independent WhatsApp Cloud API library: pywa accepts the signatures medrelay's
//! simulator puts on its webhooks, medrelay accepts a body signed for pywa's validator, and pywa's own
//! real webhook payloads parse without error in medrelay.
//!
//! Needs Python with pywa: `.ci/interop` installs it and runs these tests with
//! `MEDRELAY_PYWA_PYTHON` set (they are `#[ignore]`d in the plain `cargo test`).

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::whatsapp::webhook;

const APP_SECRET: &str = "simulator-app-secret";

fn python() -> String {
    std::env::var("MEDRELAY_PYWA_PYTHON")
        .expect("MEDRELAY_PYWA_PYTHON must point at a Python with pywa (run .ci/interop)")
}

fn pywa(args: &[&str]) -> (bool, String) {
    let script = common::root().join("tests/peers/pywa_check.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("python runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string()
            + &String::from_utf8_lossy(&out.stderr),
    )
}

fn fixtures() -> Vec<(String, serde_json::Value)> {
    let dir = common::root().join("tests/fixtures/whatsapp");
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let value: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let file = path.file_stem().unwrap().to_string_lossy().to_string();
            // Most files are {name: payload}; some hold a single payload.
            if value.get("object").is_some() {
                all.push((file, value));
            } else if let serde_json::Value::Object(named) = value {
                all.extend(named.into_iter().map(|(k, v)| (format!("{file}/{k}"), v)));
            }
        }
    }
    all
}

#[tokio::test]
#[ignore = "needs pywa: run .ci/interop"]
async fn pywa_accepts_the_signatures_on_simulator_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some("openemr")).unwrap().clone();
    import_csv(&service, &loaded, &c, &file, Some(clock.now()), |_| {})
        .await
        .unwrap();
    service.scheduler.plan_pending().await.unwrap();
    service.sender.send_due(50).await.unwrap();
    let sim = service.simulator.clone().unwrap();
    let hooks = sim.take_webhooks();
    assert!(hooks.len() >= 3, "statuses for the confirmations");
    for (i, hook) in hooks.iter().enumerate() {
        let path = dir.path().join(format!("hook{i}.json"));
        std::fs::write(&path, &hook.body).unwrap();
        let (ok, out) = pywa(&[
            "verify",
            path.to_str().unwrap(),
            APP_SECRET,
            &hook.signature,
        ]);
        assert!(ok, "pywa rejected medrelay's signature: {out}");
        let (ok, out) = pywa(&[
            "verify",
            path.to_str().unwrap(),
            "wrong-secret",
            &hook.signature,
        ]);
        assert!(!ok, "pywa must reject a wrong secret: {out}");
        let (ok, out) = pywa(&["parse", path.to_str().unwrap()]);
        assert!(ok, "pywa could not read the simulator's webhook: {out}");
    }
    store.close().await;
}

#[test]
#[ignore = "needs pywa: run .ci/interop"]
fn medrelay_accepts_bodies_signed_for_pywa() {
    let dir = tempfile::tempdir().unwrap();
    for (name, payload) in fixtures() {
        let path = dir.path().join("body.json");
        let raw = serde_json::to_vec(&payload).unwrap();
        std::fs::write(&path, &raw).unwrap();
        let (ok, header) = pywa(&["sign", path.to_str().unwrap(), APP_SECRET]);
        assert!(ok, "{name}: {header}");
        assert!(
            webhook::verify(APP_SECRET.as_bytes(), &raw, Some(&header)),
            "{name}: medrelay rejected a signature pywa accepts"
        );
        assert!(!webhook::verify(b"other", &raw, Some(&header)));
    }
}

#[test]
fn pywa_real_payloads_parse_without_error() {
    let all = fixtures();
    assert!(all.len() >= 10, "{}", all.len());
    let mut statuses = 0;
    let mut messages = 0;
    for (name, payload) in &all {
        let raw = serde_json::to_vec(payload).unwrap();
        match webhook::parse(&raw) {
            Ok(w) => {
                statuses += w.statuses.len();
                messages += w.messages.len();
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    assert!(
        statuses >= 4 && messages >= 4,
        "{statuses} statuses, {messages} messages"
    );
    // The template quick-reply tap carries its payload and the context of the template message.
    let (_, quick) = all
        .iter()
        .find(|(n, _)| n.starts_with("quick_reply_single"))
        .expect("quick reply fixture");
    let w = webhook::parse(&serde_json::to_vec(quick).unwrap()).unwrap();
    assert!(
        matches!(
            w.messages[0].content,
            webhook::InboundContent::Button { .. }
        ),
        "{:?}",
        w.messages[0].content
    );
    let _ = Path::new(".");
}
