//! The FHIR connector end to end: the EHR's Subscription posts notification Bundles over HTTP to
//! the endpoint `medrelay run` serves; each answer (200 / 400 / 401 / 422, with OperationOutcome)
//! is read back, and the effect is checked in the store, `explain` and the simulator's sends. The
//! appointments came first from the clinic's CSV export (`system = "clinica"`): a FHIR Consent
//! that denies, newer than the CSV's opt-in, stops the reminders; one that permits opts a new
//! appointment in.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::config::load;
use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::service::Service;

const AUTH_ENV: &str = "MEDRELAY_TEST_FHIR_SUBSCRIPTION_AUTH";
const AUTH: &str = "Bearer test-subscription-3f1c9a";

async fn settle(service: &Service) {
    while !service.tick(50).await.unwrap().is_idle() {}
}

fn sent_to(service: &Service, digits: &str) -> usize {
    let sim = service.simulator.clone().unwrap();
    sim.sent().iter().filter(|b| b["to"] == digits).count()
}

fn setup(dir: &std::path::Path) -> (String, medrelay::config::Loaded) {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# [connectors.subscription]\n# listen = \"127.0.0.1:8444\"\n# path = \"/fhir/subscription\"\n# authorization_env = \"CLINICA_FHIR_SUBSCRIPTION_AUTH\"",
        &format!("[connectors.subscription]\nlisten = \"127.0.0.1:0\"\npath = \"/fhir/subscription\"\nauthorization_env = \"{AUTH_ENV}\""),
    );
    assert!(text.contains(AUTH_ENV));
    std::fs::write(&path, text).unwrap();
    (path.to_str().unwrap().to_string(), load(&path).unwrap())
}

async fn post(url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/fhir+json")
        .body(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json",
        "every answer is FHIR"
    );
    (status, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_notifications_update_csv_appointments_and_consent() {
    // SAFETY: set once, before any thread of this test binary reads it; no other test in this
    // binary touches the environment.
    unsafe { std::env::set_var(AUTH_ENV, AUTH) };
    let dir = tempfile::tempdir().unwrap();
    let (config, loaded) = setup(dir.path());
    // 1 Dec 2026, 09:00 in São Paulo: the CSV export is imported first.
    let clock = Arc::new(ManualClock::new("2026-12-01T12:00:00Z".parse().unwrap()));
    let csv = common::copy_sample(dir.path(), "samples/csv/clinica_export_win1252.csv");
    let (store, service, imported) =
        common::service_with_import(&loaded, clock.clone(), "clinica", &csv).await;
    assert_eq!(imported.summary.rows_ok, 10);
    settle(&service).await;
    let ines_before = sent_to(&service, "5511912345678");
    assert_eq!(ines_before, 1, "AG-30002's booking confirmation went out");

    let endpoints = medrelay::fhir::start_endpoints(
        &service,
        &loaded,
        clock.clone(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/fhir/subscription", endpoints[0].0);
    let fixture = |name: &str| {
        std::fs::read(
            common::root()
                .join("connectors/fhir/tests/fixtures")
                .join(name),
        )
        .unwrap()
    };

    // The handshake, then a notification without the Subscription's header.
    let (status, oo) = post(&url, Some(AUTH), fixture("handshake_bundle_example.json")).await;
    assert_eq!(status, 200, "{oo}");
    let notification =
        std::fs::read(common::root().join("samples/fhir/clinica_notification.json")).unwrap();
    let (status, oo) = post(&url, None, notification.clone()).await;
    assert_eq!(
        (status, oo["issue"][0]["code"].as_str()),
        (401, Some("security"))
    );
    assert_eq!(
        store.quarantine_lines(10).await.unwrap().len(),
        0,
        "nothing stored"
    );

    // The notification: two appointments committed, two entries quarantined and reported.
    clock.set("2026-12-01T13:00:05Z".parse().unwrap());
    let (status, oo) = post(&url, Some(AUTH), notification.clone()).await;
    assert_eq!(status, 200, "{oo}");
    let issues = oo["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 2, "{oo}");
    assert_eq!(issues[0]["expression"][0], "Appointment.status");
    assert_eq!(issues[1]["expression"][0], "Appointment.start");
    assert!(
        issues[0]["diagnostics"]
            .as_str()
            .unwrap()
            .starts_with("Bundle.entry[7] Appointment/bad-status"),
        "{oo}"
    );
    let q = store.quarantine_lines(10).await.unwrap();
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(q.iter().all(|l| l.source == "clinica-fhir"));

    // Not a Bundle: 400, and the raw body is kept.
    let (status, oo) = post(
        &url,
        Some(AUTH),
        b"{\"resourceType\": \"Patient\"}".to_vec(),
    )
    .await;
    assert_eq!(
        (status, oo["issue"][0]["code"].as_str()),
        (400, Some("structure"))
    );
    assert_eq!(store.quarantine_lines(10).await.unwrap().len(), 3);
    // id-only, and this connector has no [server] to read from: 422, nothing guessed.
    let (status, oo) = post(
        &url,
        Some(AUTH),
        fixture("id_only_notification_bundle_example.json"),
    )
    .await;
    assert_eq!(
        status, 200,
        "an id-only notification about an Encounter carries nothing for us: {oo}"
    );

    // The FHIR Consent (deny, newer than the CSV's "sim") opts AG-30002's patient out.
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30002"]).await;
    assert!(explain.contains("EHR records an opt-out"), "{explain}");
    assert!(
        explain.contains("listed by clinica, clinica-fhir"),
        "{explain}"
    );
    // From the Appointment's version (meta.lastUpdated 13:00Z = 10:00 local), by the FHIR feed.
    assert!(
        explain.contains("EHR opt-out since 2026-12-01 10:00 -03, from feed clinica-fhir"),
        "{explain}"
    );
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30011"]).await;
    assert!(explain.contains("EHR records an opt-in"), "{explain}");
    settle(&service).await;
    // AG-30011 is on 3 Dec 10:00 local: its booking confirmation and its 48 h reminder are due.
    assert_eq!(
        sent_to(&service, "5511911112222"),
        2,
        "opted in by the FHIR Consent"
    );
    // 2 h before AG-30002 (2 Dec 09:00 local): no reminder after the opt-out.
    clock.set("2026-12-02T10:05:00Z".parse().unwrap());
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "5511912345678"),
        ines_before,
        "opted out in the EHR"
    );
    for (_, h) in &endpoints {
        h.abort();
    }
    store.close().await;
}

#[tokio::test]
async fn an_id_only_appointment_notification_without_a_server_is_422() {
    // SAFETY: see above; same value.
    unsafe { std::env::set_var(AUTH_ENV, AUTH) };
    let dir = tempfile::tempdir().unwrap();
    let (_, loaded) = setup(dir.path());
    let clock = Arc::new(ManualClock::new("2026-12-01T12:00:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let endpoints = medrelay::fhir::start_endpoints(
        &service,
        &loaded,
        clock,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/fhir/subscription", endpoints[0].0);
    let mut v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::root().join("samples/fhir/clinica_notification.json")).unwrap(),
    )
    .unwrap();
    // Keep the status entry and the references only.
    let entries = v["entry"].as_array_mut().unwrap();
    for e in entries.iter_mut().skip(1) {
        e.as_object_mut().unwrap().remove("resource");
    }
    let (status, oo) = post(&url, Some(AUTH), serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(
        (status, oo["issue"][0]["code"].as_str()),
        (422, Some("not-supported")),
        "{oo}"
    );
    store.close().await;
}

#[tokio::test]
async fn ingest_fhir_reports_issues_and_a_reimport_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path());
    let file = common::copy_sample(dir.path(), "samples/fhir/clinica_notification.json");
    let file = file.to_str().unwrap();
    let args = ["--now", "2026-12-01T13:00:05Z", "ingest", "fhir", file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(
        out.contains("2 appointments imported (2 new or changed, 0 unchanged), 2 entries rejected"),
        "{out}"
    );
    assert!(
        out.contains("Bundle.entry[8] Appointment/no-start: Appointment.start (required)"),
        "{out}"
    );
    assert!(!out.contains("Rita") && !out.contains("91111"), "{out}");
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(out.contains("(0 new or changed, 2 unchanged)"), "{out}");
}
