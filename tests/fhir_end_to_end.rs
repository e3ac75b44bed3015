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

/// Sets the Subscription's Authorization variable once for this test binary (tests run on
/// several threads; the variable is set before any endpoint reads it, and never changed).
fn set_auth() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: once, with one value; nothing in this binary writes the environment otherwise.
    ONCE.call_once(|| unsafe { std::env::set_var(AUTH_ENV, AUTH) });
}

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
    set_auth();
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
    set_auth();
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

/// How many of `explain`'s step lines are in `state`.
fn steps_in(explain: &str, state: &str) -> usize {
    explain
        .lines()
        .filter(|l| l.starts_with("  ") && l.split_whitespace().nth(1) == Some(state))
        .count()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        common::root()
            .join("connectors/fhir/tests/fixtures")
            .join(name),
    )
    .unwrap()
}

/// The store and service of `loaded` on `clock`, with its Subscription endpoint's URL.
async fn serve(
    loaded: &medrelay::config::Loaded,
    clock: Arc<ManualClock>,
) -> (
    medrelay_pipeline::store::Store,
    Service,
    String,
    Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
) {
    set_auth();
    let store = medrelay::wiring::open_store(loaded).await.unwrap();
    let service = medrelay::wiring::build_service(loaded, store.clone(), clock.clone()).unwrap();
    let endpoints = medrelay::fhir::start_endpoints(
        &service,
        loaded,
        clock,
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/fhir/subscription", endpoints[0].0);
    (
        store,
        service,
        url,
        endpoints.into_iter().map(|(_, h)| h).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fhir_cancellation_without_start_cancels_the_stored_appointment_and_withdraws_its_reminders()
 {
    let dir = tempfile::tempdir().unwrap();
    let (config, loaded) = setup(dir.path());
    let clock = Arc::new(ManualClock::new("2026-12-01T13:00:05Z".parse().unwrap()));
    let (store, service, url, handles) = serve(&loaded, clock.clone()).await;
    // AG-30011 (3 Dec 10:00 local) is booked, and its patient opted in by a FHIR Consent.
    let (status, oo) = post(&url, Some(AUTH), fixture("notification_clinica.json")).await;
    assert_eq!(status, 200, "{oo}");
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "5511911112222"),
        2,
        "confirmation and 48 h reminder"
    );
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30011"]).await;
    assert!(explain.contains("clinica/AG-30011  booked"), "{explain}");
    assert!(
        steps_in(&explain, "pending") >= 1,
        "the 2 h reminder waits: {explain}"
    );

    // The EHR cancels it: status `cancelled`, no start (FHIR allows it).
    clock.set("2026-12-01T15:00:05Z".parse().unwrap());
    let (status, oo) = post(
        &url,
        Some(AUTH),
        fixture("notification_cancel_without_start.json"),
    )
    .await;
    assert_eq!(status, 200, "{oo}");
    assert_eq!(oo["issue"][0]["severity"], "information", "accepted: {oo}");
    assert_eq!(
        store.quarantine_lines(10).await.unwrap().len(),
        2,
        "only the two bad entries of the first notification"
    );
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30011"]).await;
    assert!(
        explain.contains("clinica/AG-30011  cancelled  starts 2026-12-03 10:00"),
        "cancelled, at its stored time: {explain}"
    );
    assert!(
        explain.contains("withdrawn: appointment is now cancelled"),
        "{explain}"
    );
    assert_eq!(
        steps_in(&explain, "pending"),
        0,
        "nothing left to send: {explain}"
    );
    // 2 h before the visit: no reminder.
    clock.set("2026-12-03T11:05:00Z".parse().unwrap());
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "5511911112222"),
        2,
        "cancelled: no reminder"
    );
    for h in handles {
        h.abort();
    }
    store.close().await;
}

#[tokio::test]
async fn ingest_fhir_applies_noshow_and_entered_in_error_without_start_and_rejects_a_booked_one() {
    for file in [
        "status_without_start_r4b.json",
        "status_without_start_r5.json",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = setup(dir.path());
        let path = dir.path().join(file);
        std::fs::write(&path, fixture(file)).unwrap();
        let args = [
            "--now",
            "2026-12-01T14:30:00Z",
            "ingest",
            "fhir",
            path.to_str().unwrap(),
        ];
        let (code, out) = cli(&config, &args).await;
        assert_eq!(code, medrelay::exit::PARTIAL, "{file}: {out}");
        // AG-40001 booked then cancelled; AG-40002 (noshow) and AG-40003 (entered-in-error) are
        // not on record here: status changes never create an appointment.
        assert!(
            out.contains(
                ": 4 appointments imported (2 new or changed, 0 unchanged), 1 entries rejected"
            ),
            "{file}: {out}"
        );
        assert!(
            out.contains("2 status change(s) for appointments not on record, ignored"),
            "{file}: {out}"
        );
        assert!(
            out.contains(
                "Bundle.entry[5] Appointment/ag-40004: Appointment.start (required): a booked appointment needs a start to be reminded of"
            ),
            "{file}: {out}"
        );
        assert_eq!(
            out.matches("booked appointment").count(),
            1,
            "only the booked one is told it needs a start: {out}"
        );
        let (_, explain) = cli(&config, &["explain", "clinica/AG-40001"]).await;
        assert!(
            explain.contains("clinica/AG-40001  cancelled  starts 2026-12-04 10:00"),
            "{file}: {explain}"
        );
        assert!(explain.contains("no steps planned"), "{file}: {explain}");
    }
}

#[tokio::test]
async fn an_id_only_bundle_file_without_a_server_is_refused_like_the_endpoint_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (config, loaded) = setup(dir.path());
    let path = dir.path().join("id_only.json");
    std::fs::write(&path, fixture("id_only_appointment_notification.json")).unwrap();
    let (code, out) = cli(
        &config,
        &[
            "--now",
            "2026-12-01T15:00:05Z",
            "ingest",
            "fhir",
            path.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(
        out.contains("id_only.json: 0 appointments imported (0 new or changed, 0 unchanged), 1 entries rejected"),
        "{out}"
    );
    let clock = Arc::new(ManualClock::new("2026-12-01T15:00:05Z".parse().unwrap()));
    let (store, _service, url, handles) = serve(&loaded, clock).await;
    let q = store.quarantine_lines(10).await.unwrap();
    assert_eq!(q.len(), 1, "the file is kept: {q:?}");
    // The endpoint answers the same notification 422 with the same words.
    let (status, oo) = post(
        &url,
        Some(AUTH),
        fixture("id_only_appointment_notification.json"),
    )
    .await;
    assert_eq!(status, 422, "{oo}");
    let said = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        out.contains(&format!("the input: (not-supported): {said}")),
        "{said} / {out}"
    );
    for h in handles {
        h.abort();
    }
    store.close().await;
}

/// The EHR's FHIR server, for the test: reads `Type/id` of the resources it holds and searches
/// `Consent?patient=`; records what was asked.
mod fhir_server {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::extract::{Path, Query, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use serde_json::{Value, json};

    type Shared = (Arc<Vec<Value>>, Arc<Mutex<Vec<String>>>);

    fn fhir(status: StatusCode, v: Value) -> Response {
        (
            status,
            [(header::CONTENT_TYPE, "application/fhir+json")],
            v.to_string(),
        )
            .into_response()
    }

    async fn read(
        State((res, asked)): State<Shared>,
        Path((kind, id)): Path<(String, String)>,
    ) -> Response {
        asked.lock().unwrap().push(format!("{kind}/{id}"));
        match res
            .iter()
            .find(|r| r["resourceType"] == kind.as_str() && r["id"] == id.as_str())
        {
            Some(r) => fhir(StatusCode::OK, r.clone()),
            None => fhir(
                StatusCode::NOT_FOUND,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}),
            ),
        }
    }

    async fn search(
        State((res, asked)): State<Shared>,
        Path(kind): Path<String>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        asked.lock().unwrap().push(format!("{kind}?"));
        let patients: Vec<&str> = q
            .get("patient")
            .map(|p| p.split(',').collect())
            .unwrap_or_default();
        let entry: Vec<Value> = res
            .iter()
            .filter(|r| r["resourceType"] == kind.as_str() && kind == "Consent")
            .filter(|r| {
                r["patient"]["reference"]
                    .as_str()
                    .is_some_and(|p| patients.contains(&p))
            })
            .map(|r| json!({"resource": r}))
            .collect();
        fhir(
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": "searchset", "entry": entry}),
        )
    }

    /// Serves `resources` on 127.0.0.1; returns the base URL and the list of requests.
    pub async fn start(resources: Vec<Value>) -> (String, Arc<Mutex<Vec<String>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/fhir/{kind}", get(search))
            .route("/fhir/{kind}/{id}", get(read))
            .with_state((Arc::new(resources), asked.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/fhir", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, asked)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_only_bundle_file_is_read_from_the_server_when_one_is_configured() {
    // The server holds AG-30011 with its Patient and Consent (from the clinic's notification).
    let full: serde_json::Value =
        serde_json::from_slice(&fixture("notification_clinica.json")).unwrap();
    let resources: Vec<serde_json::Value> = full["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .filter(|r| matches!(r["id"].as_str(), Some("ag-30011" | "p-2011" | "c-2011")))
        .collect();
    assert_eq!(resources.len(), 3);
    let (base, asked) = fhir_server::start(resources).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path());
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"",
        &format!("[connectors.server]\nbase_url = \"{base}\""),
    );
    assert!(text.contains(&base));
    std::fs::write(&path, text).unwrap();
    let file = dir.path().join("id_only.json");
    std::fs::write(&file, fixture("id_only_appointment_notification.json")).unwrap();
    let (code, out) = cli(
        &config,
        &[
            "--now",
            "2026-12-01T13:00:05Z",
            "ingest",
            "fhir",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("id_only.json: 1 appointments imported (1 new or changed, 0 unchanged), 0 entries rejected"),
        "{out}"
    );
    // Read by Type/id from the configured base, not from the host the notification names.
    assert_eq!(
        *asked.lock().unwrap(),
        ["Appointment/ag-30011", "Patient/p-2011", "Consent?"]
    );
    let (_, explain) = cli(
        &config,
        &[
            "--now",
            "2026-12-01T13:00:05Z",
            "explain",
            "clinica/AG-30011",
        ],
    )
    .await;
    assert!(explain.contains("clinica/AG-30011  booked"), "{explain}");
    assert!(
        explain.contains("EHR records an opt-in"),
        "the server's Consent: {explain}"
    );

    // The endpoint reads the same notification the same way: 200, and nothing new.
    let loaded = load(&path).unwrap();
    let clock = Arc::new(ManualClock::new("2026-12-01T13:00:06Z".parse().unwrap()));
    let (store, _service, url, handles) = serve(&loaded, clock).await;
    let (status, oo) = post(
        &url,
        Some(AUTH),
        fixture("id_only_appointment_notification.json"),
    )
    .await;
    assert_eq!(
        (status, &oo["issue"][0]["severity"]),
        (200, &serde_json::json!("information")),
        "{oo}"
    );
    assert_eq!(asked.lock().unwrap().len(), 6, "read again from the server");
    assert_eq!(store.quarantine_lines(10).await.unwrap().len(), 0);
    for h in handles {
        h.abort();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_r5_notification_stores_exactly_what_its_r4b_twin_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (config, loaded) = setup(dir.path());
    let clock = Arc::new(ManualClock::new("2026-12-01T13:00:05Z".parse().unwrap()));
    let (store, _service, url, handles) = serve(&loaded, clock).await;
    // The R5 subscription-notification: the same answer as the R4 backport one.
    let (status, oo) = post(&url, Some(AUTH), fixture("notification_clinica_r5.json")).await;
    assert_eq!(status, 200, "{oo}");
    let issues = oo["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 2, "{oo}");
    assert_eq!(issues[0]["expression"][0], "Appointment.status");
    assert_eq!(issues[1]["expression"][0], "Appointment.start");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30002"]).await;
    assert!(
        explain.contains("EHR records an opt-out"),
        "R5 Consent deny: {explain}"
    );
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30011"]).await;
    assert!(
        explain.contains("EHR records an opt-in"),
        "R5 Consent permit: {explain}"
    );
    for h in handles {
        h.abort();
    }
    store.close().await;
    // The R4B twin, same versions: nothing to change, so the R5 reading stored the same values.
    let twin = dir.path().join("notification_clinica.json");
    std::fs::write(&twin, fixture("notification_clinica.json")).unwrap();
    let (code, out) = cli(
        &config,
        &[
            "--now",
            "2026-12-01T13:00:06Z",
            "ingest",
            "fhir",
            twin.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(
        out.contains("2 appointments imported (0 new or changed, 2 unchanged), 2 entries rejected"),
        "{out}"
    );
}

/// Issue 16: the Subscription's event counter. The backport IG's own handshake (0 events) and
/// heartbeat (2 events since the start) in a row mean events 1 and 2 never arrived: one
/// `fhir_subscription_gap` alert however often the heartbeat repeats, resolved by the next full
/// search of the server. Heartbeats keep the feed alive (`heartbeat_period` watches it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_counting_events_that_never_arrived_raises_one_gap_alert_resolved_by_a_search()
{
    set_auth();
    let (base, _asked) = fhir_server::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"",
            &format!("[connectors.server]\nbase_url = \"{base}\""),
        )
        .replace(
            &format!("authorization_env = \"{AUTH_ENV}\""),
            &format!("authorization_env = \"{AUTH_ENV}\"\nheartbeat_period = \"60s\""),
        );
    std::fs::write(&path, text).unwrap();
    let loaded = load(&path).unwrap();
    let watch = loaded
        .feed_watches
        .iter()
        .find(|w| w.feed == "clinica-fhir")
        .expect("the heartbeat period watches the feed");
    assert_eq!(watch.expect.describe(), "expected at least every 2m");
    let clock = Arc::new(ManualClock::new("2026-12-01T13:00:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let endpoints = medrelay::fhir::start_endpoints(
        &service,
        &loaded,
        clock.clone(),
        Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap();
    let url = format!("http://{}/fhir/subscription", endpoints[0].0);
    let (status, oo) = post(&url, Some(AUTH), fixture("handshake_bundle_example.json")).await;
    assert_eq!(status, 200, "{oo}");
    let gaps = || async {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!(
            "sqlite://{}",
            dir.path().join("medrelay.db").display()
        ))
        .await
        .unwrap();
        sqlx::query_as::<_, (String, Option<i64>)>(
            "SELECT detail, resolved_at FROM alerts WHERE kind = 'fhir_subscription_gap'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    assert!(gaps().await.is_empty(), "a handshake is the baseline");
    for _ in 0..2 {
        clock.set("2026-12-01T13:01:00Z".parse().unwrap());
        let (status, oo) = post(&url, Some(AUTH), fixture("heartbeat_bundle_example.json")).await;
        assert_eq!(status, 200, "{oo}");
    }
    let found = gaps().await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].0,
        "feed clinica-fhir subscription https://fhirserver.org/fhir/Subscription/123: events 1 to 2 \
         never arrived (2 missing); the next search of the server ([connectors.server] poll) reads them again"
    );
    assert_eq!(found[0].1, None);
    // The heartbeat is the feed's latest input.
    let inputs = store.last_inputs().await.unwrap();
    assert_eq!(
        inputs.get("clinica-fhir").copied(),
        Some("2026-12-01T13:01:00Z".parse().unwrap())
    );
    // The service's next pass searches the server at once (this connector does not poll on a
    // schedule): the missed events are in it; resolved.
    let mut last = std::collections::HashMap::new();
    medrelay::commands::run::poll_fhir_servers(&service, &loaded, clock.as_ref(), &mut last).await;
    assert!(last.contains_key("clinica-fhir"), "the server was searched");
    let found = gaps().await;
    assert_eq!(found.len(), 1);
    assert!(found[0].1.is_some(), "resolved: {found:?}");
    // Nothing missing any more: the next pass leaves the server alone.
    let searched = last.clone();
    clock.set("2026-12-01T13:05:00Z".parse().unwrap());
    medrelay::commands::run::poll_fhir_servers(&service, &loaded, clock.as_ref(), &mut last).await;
    assert_eq!(last, searched, "no search without a gap or a schedule");
    for (_, h) in endpoints {
        h.abort();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_subscribe_prints_the_subscription_without_its_secret_and_creates_it_on_the_server() {
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;
    set_auth();
    // The EHR's server: takes a Subscription (it requires its own credential) and keeps it.
    /// What the server was sent: the Authorization header and the resource.
    type Kept = Arc<std::sync::Mutex<Vec<(Option<String>, serde_json::Value)>>>;
    let kept: Kept = Arc::default();
    let app = axum::Router::new()
        .route(
            "/fhir/Subscription",
            post(
                |State(kept): State<Kept>, headers: HeaderMap, body: String| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    kept.lock()
                        .unwrap()
                        .push((auth, serde_json::from_str(&body).unwrap()));
                    (
                        axum::http::StatusCode::CREATED,
                        axum::Json(
                            serde_json::json!({"resourceType": "Subscription", "id": "sub-7"}),
                        ),
                    )
                },
            ),
        )
        .with_state(kept.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path());
    let path = dir.path().join("medrelay.toml");
    // The Subscription's heartbeat first (its authorization_env is the only one yet), then the
    // server, which takes the same credential here.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen(
            &format!("authorization_env = \"{AUTH_ENV}\""),
            &format!("authorization_env = \"{AUTH_ENV}\"\nheartbeat_period = \"60s\"\n#"),
            1,
        )
        .replace(
            "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"",
            &format!(
                "[connectors.server]\nbase_url = \"{base}\"\nauthorization_env = \"{AUTH_ENV}\""
            ),
        );
    std::fs::write(&path, text).unwrap();
    let topic = "http://ehr.clinica.example/SubscriptionTopic/appointment";
    let args = [
        "fhir",
        "subscribe",
        "--endpoint",
        "https://medrelay.clinica.example/fhir/subscription",
        "--topic",
        topic,
        "--criteria",
        "Appointment?actor=Location/pau1",
    ];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains(AUTH),
        "the printed Subscription holds the secret: {out}"
    );
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed["criteria"], topic);
    assert_eq!(
        printed["channel"]["header"][0],
        format!("Authorization: <the value of ${AUTH_ENV}>")
    );
    assert_eq!(printed["channel"]["extension"][0]["valueUnsignedInt"], 60);
    assert_eq!(
        printed["_criteria"]["extension"][0]["valueString"],
        "Appointment?actor=Location/pau1"
    );

    let mut create = args.to_vec();
    create.push("--create");
    let (code, out) = cli(&config, &create).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Subscription/sub-7 created"), "{out}");
    assert!(!out.contains(AUTH), "{out}");
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].0.as_deref(),
        Some(AUTH),
        "the server's own credential"
    );
    let created = &kept[0].1;
    assert_eq!(created["status"], "requested");
    assert_eq!(created["channel"]["type"], "rest-hook");
    assert_eq!(
        created["channel"]["header"][0],
        format!("Authorization: {AUTH}"),
        "the server gets the header it must send"
    );
    assert_eq!(
        created["channel"]["endpoint"],
        "https://medrelay.clinica.example/fhir/subscription"
    );
}
