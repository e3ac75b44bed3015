//! `medrelay slots import|list` (issue 14): the sample clinic's "open slots" export applied as a
//! snapshot through the CSV connector's profile, bad rows reported by line without values, a later
//! snapshot retiring what it no longer lists, and a broken file never applied.

mod common;

use common::cli_with_config as cli;

const NOW: &str = "2026-12-02T12:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_slots_are_imported_as_snapshots_and_listed_without_patient_data() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    let export = common::copy_sample(dir.path(), "samples/csv/openemr_open_slots.csv");
    let export = export.to_str().unwrap();

    // Four good rows, three bad ones (a date, a length, a repeated id): applied, exit 3.
    let (code, out) = cli(
        config,
        &[
            "--now",
            NOW,
            "slots",
            "import",
            export,
            "--connector",
            "openemr",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("4 new, 0 listed again, 0 no longer open; 3 bad row(s)"),
        "{out}"
    );
    for line in ["line 6:", "line 7:", "line 8:"] {
        assert!(out.contains(line), "{out}");
    }
    assert!(!out.contains("13/45"), "no cell value in the output: {out}");
    let (code, out) = cli(
        config,
        &["--now", NOW, "--json", "slots", "list", "--site", "newyork"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slot_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["SL-9001", "SL-9002", "SL-9003", "SL-9004"]);
    assert!(
        !out.contains("Office Visit"),
        "the service type is not listed: {out}"
    );

    // The next export lists two of them: the others are no longer open.
    let next = dir.path().join("next.csv");
    std::fs::write(
        &next,
        "Slot ID,Start,Minutes,Provider,Visit Type,Room\n\
         SL-9002,12/03/2026 09:20 AM,20,\"Placeholder, Jane\",Office Visit,Room 2\n\
         SL-9004,12/07/2026 10:00 AM,20,\"Example, John\",Office Visit,Room 1\n",
    )
    .unwrap();
    let (code, out) = cli(
        config,
        &["--now", NOW, "slots", "import", next.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        code, 2,
        "--connector is needed with two CSV connectors: {out}"
    );
    let (code, out) = cli(
        config,
        &[
            "--now",
            NOW,
            "slots",
            "import",
            next.to_str().unwrap(),
            "--connector",
            "openemr",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("0 new, 2 listed again, 2 no longer open"),
        "{out}"
    );

    // A file whose every row is bad is a broken export: nothing is retired.
    let broken = dir.path().join("broken.csv");
    std::fs::write(
        &broken,
        "Slot ID,Start,Minutes,Provider,Visit Type,Room\nX,not a time,20,a,b,c\n",
    )
    .unwrap();
    let (code, out) = cli(
        config,
        &[
            "--now",
            NOW,
            "slots",
            "import",
            broken.to_str().unwrap(),
            "--connector",
            "openemr",
        ],
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("not applied"), "{out}");
    let (_, out) = cli(
        config,
        &["--now", NOW, "slots", "list", "--site", "newyork"],
    )
    .await;
    assert!(out.contains("2 open slot(s) at newyork"), "{out}");
    // A connector without an open-slots profile is a usage error (its message goes to stderr).
    let (code, out) = cli(
        config,
        &["slots", "import", export, "--connector", "clinica"],
    )
    .await;
    assert_eq!(code, 2, "{out}");
}

/// The FHIR way: free Slots searched on the connector's server (two pages, one Schedule not
/// included in the search and read by id), mapped with their Schedule's practitioner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_fhir_slots_are_searched_on_the_server_and_applied_as_a_snapshot() {
    use axum::extract::{Path, RawQuery, State};
    use axum::routing::get;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<String>>>;
    async fn slots(
        State((base, seen)): State<(String, Seen)>,
        RawQuery(q): RawQuery,
    ) -> axum::Json<Value> {
        let q = q.unwrap_or_default();
        seen.lock().unwrap().push(q.clone());
        let slot = |id: &str, schedule: &str, start: &str, end: &str| {
            json!({"fullUrl": format!("{base}/Slot/{id}"), "resource": {"resourceType": "Slot", "id": id,
                "status": "free", "schedule": {"reference": schedule}, "start": start, "end": end}})
        };
        if q.contains("page=2") {
            return axum::Json(
                json!({"resourceType": "Bundle", "type": "searchset", "entry": [
                    slot("sl-3", "Schedule/sch-2", "2026-12-04T14:00:00-03:00", "2026-12-04T14:30:00-03:00"),
                ]}),
            );
        }
        axum::Json(json!({"resourceType": "Bundle", "type": "searchset",
        "link": [{"relation": "next", "url": format!("{base}/Slot?page=2")}],
        "entry": [
            slot("sl-1", "Schedule/sch-1", "2026-12-03T09:00:00-03:00", "2026-12-03T09:20:00-03:00"),
            slot("sl-2", "Schedule/sch-1", "2026-12-03T09:20:00-03:00", "2026-12-03T09:40:00-03:00"),
            {"resource": {"resourceType": "Schedule", "id": "sch-1", "active": true,
                "serviceType": [{"text": "Consulta"}],
                "actor": [{"reference": "Practitioner/p1", "display": "Dra. Ana Lima"}]},
             "search": {"mode": "include"}},
        ]}))
    }
    async fn schedule(Path(id): Path<String>) -> axum::Json<Value> {
        axum::Json(json!({"resourceType": "Schedule", "id": id, "active": true,
            "serviceType": [{"text": "Retorno"}],
            "actor": [{"reference": "Practitioner/p2", "display": "Dr. Bruno Sá"}]}))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", listener.local_addr().unwrap());
    let seen = Seen::default();
    let app = axum::Router::new()
        .route("/fhir/Slot", get(slots))
        .route("/fhir/Schedule/{id}", get(schedule))
        .with_state((base.clone(), seen.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    common::with_fhir_server(&path, &base);
    let config = path.to_str().unwrap();
    let (code, out) = cli(
        config,
        &[
            "--now",
            NOW,
            "slots",
            "import",
            "--connector",
            "clinica-fhir",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("open slots of clinica: 3 new"), "{out}");
    let asked = seen.lock().unwrap()[0].clone();
    for want in [
        "status=free",
        "_include=Slot:schedule",
        "start=ge2026-12-02T12:00:00Z",
        "start=lt2026-12-16T12:00:00Z",
    ] {
        assert!(asked.contains(want), "{want} in {asked}");
    }
    let (code, out) = cli(
        config,
        &[
            "--now", NOW, "--json", "slots", "list", "--site", "saopaulo",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got: Vec<(String, String)> = v["slots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slot_id"].as_str().unwrap().to_owned(),
                s["practitioner"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("sl-1".to_owned(), "Dra. Ana Lima".to_owned()),
            ("sl-2".to_owned(), "Dra. Ana Lima".to_owned()),
            ("sl-3".to_owned(), "Dr. Bruno Sá".to_owned()),
        ]
    );
    assert!(
        !out.contains("Consulta") && !out.contains("Retorno"),
        "no service type listed"
    );
}
