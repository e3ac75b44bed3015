//! The HL7v2 connector end to end: SIU messages from the sample file go over a real TCP MLLP
//! connection to the listener `medrelay run` starts, each ACK is read back, and the effect is
//! checked in the store, the plan and the simulator's sends. The same appointments came first from
//! the clinic's CSV export (`system = "clinica"`), so an S13 moves what the CSV listed and a
//! message without PD1 keeps the CSV's opt-in, while PD1-12 = Y protects the patient from then on.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::config::load;
use medrelay_connector_hl7v2::file::split;
use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::service::Service;
use sqlx::Connection;
use tokio::net::TcpStream;

async fn settle(service: &Service) {
    while !service.tick(50).await.unwrap().is_idle() {}
}

fn sent_to(service: &Service, digits: &str) -> Vec<serde_json::Value> {
    let sim = service.simulator.clone().unwrap();
    sim.sent()
        .into_iter()
        .filter(|b| b["to"] == digits)
        .collect()
}

fn setup(dir: &std::path::Path) -> (String, medrelay::config::Loaded) {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("# listen = \"0.0.0.0:2575\"", "listen = \"127.0.0.1:0\"");
    std::fs::write(&path, text).unwrap();
    (path.to_str().unwrap().to_string(), load(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siu_over_mllp_updates_csv_appointments_and_acks_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (config, loaded) = setup(dir.path());
    // 6 Dec 2026, 09:00 in São Paulo; the HL7 messages were sent at 10:00-10:05 local.
    let clock = Arc::new(ManualClock::new("2026-12-06T12:00:00Z".parse().unwrap()));
    let csv = common::copy_sample(dir.path(), "samples/csv/clinica_export_win1252.csv");
    let (store, service, imported) =
        common::service_with_import(&loaded, clock.clone(), "clinica", &csv).await;
    assert_eq!(imported.summary.rows_ok, 10);
    settle(&service).await;
    let before_30010 = sent_to(&service, "5511921098765").len();
    assert_eq!(before_30010, 1, "AG-30010's booking confirmation went out");

    let listeners = common::start_mllp(&service, &loaded, clock.clone()).await;
    assert_eq!(listeners.len(), 1);
    let mut stream = TcpStream::connect(listeners[0].0).await.unwrap();
    let sample = std::fs::read(common::root().join("samples/hl7/clinica_siu.hl7")).unwrap();
    let messages = split(&sample);
    assert_eq!(messages.len(), 6);
    let mut acks = Vec::new();
    for m in &messages {
        acks.push(common::mllp_exchange(&mut stream, &m.bytes).await);
    }
    for (i, ack) in acks.iter().enumerate() {
        let expected = if i == 4 { "AE" } else { "AA" };
        assert!(
            ack.contains(&format!("\rMSA|{expected}|CLI-000{}\r", i + 1)),
            "message {}: {ack}",
            i + 1
        );
        assert!(
            ack.starts_with("MSH|^~\\&|MEDRELAY||AGENDA|CLINICA-SP|"),
            "{ack}"
        );
        assert!(ack.contains("|ACK^S1") || ack.contains("|ACK^S2"), "{ack}");
    }
    assert!(
        acks[4].contains("\rERR||SCH^1^2^1|101^Required field missing^HL70357|E||||"),
        "{}",
        acks[4]
    );
    assert!(!acks[4].contains("Quarentena") && !acks[4].contains("P-2013"));

    // The ACK came after the commit: the rejected message is in quarantine, raw and whole.
    let q = store.quarantine_lines(10).await.unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (
            q[0].source.as_str(),
            q[0].location.as_str(),
            q[0].column.as_deref()
        ),
        ("clinica-hl7", "mllp MSH-10 CLI-0005", Some("SCH-2"))
    );
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("medrelay.db").display()
    ))
    .await
    .unwrap();
    let raw: Vec<u8> = sqlx::query_scalar("SELECT raw FROM quarantine")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        raw, messages[4].bytes,
        "the raw message is kept byte for byte"
    );
    // `/metrics` has the listener's ACKs by code (issue 16: ACK latency histograms), and the
    // send attempts so far, by result, as many as the simulator accepted.
    let exposition = medrelay_pipeline::metrics::render(
        &store.metrics(jiff::Timestamp::now()).await.unwrap(),
        &[],
        Some(&service.instruments),
    );
    let series = |name: &str| -> f64 {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{exposition}"))
    };
    assert_eq!(
        series("medrelay_mllp_ack_seconds_count{connector=\"clinica-hl7\",code=\"AA\"}"),
        5.0
    );
    assert_eq!(
        series("medrelay_mllp_ack_seconds_count{connector=\"clinica-hl7\",code=\"AE\"}"),
        1.0
    );
    let sent_attempts: f64 = exposition
        .lines()
        .filter(|l| l.starts_with("medrelay_send_attempts_total{") && l.contains("result=\"sent\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        sent_attempts,
        service.simulator.as_ref().unwrap().sent().len() as f64
    );

    // The S13 moved AG-30007 (one appointment, not a second one from another feed)...
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30007"]).await;
    assert!(explain.contains("starts 2026-12-10 14:00 -03"), "{explain}");
    assert!(
        explain.contains("listed by clinica, clinica-hl7"),
        "{explain}"
    );
    assert!(
        explain.contains("EHR records an opt-in"),
        "the CSV opt-in stays:\n{explain}"
    );
    // The CSV import (as of 6 Dec 09:00 local) set it; the HL7 message said nothing about it.
    assert!(
        explain.contains("EHR opt-in since 2026-12-06 09:00 -03, from feed clinica\n"),
        "{explain}"
    );
    // ...the S15 cancelled AG-30009, the S12 with PD1-11 = N is an opt-out...
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30009"]).await;
    assert!(explain.contains("cancelled"), "{explain}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30011"]).await;
    assert!(explain.contains("EHR records an opt-out"), "{explain}");
    // ...and PD1-12 = Y protects AG-30010's patient, although the CSV said "Sim".
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30010"]).await;
    assert!(explain.contains("protected in the EHR"), "{explain}");
    assert!(
        explain.contains("EHR protection flag set by feed clinica-hl7"),
        "{explain}"
    );

    // Time passes to the 48 h reminders of AG-30007 (10 Dec 14:00 local) and AG-30010 (18 Dec).
    clock.set("2026-12-08T17:05:00Z".parse().unwrap());
    settle(&service).await;
    let rita = sent_to(&service, "5511911112222");
    assert!(rita.is_empty(), "PD1-11 = N: never messaged");
    let cecilia = sent_to(&service, "5511954321098");
    assert!(
        cecilia
            .iter()
            .any(|b| b["template"]["name"] == "appointment_reminder"),
        "the rescheduled appointment is reminded at its new time: {cecilia:?}"
    );
    clock.set("2026-12-16T12:50:00Z".parse().unwrap());
    settle(&service).await;
    assert_eq!(
        sent_to(&service, "5511921098765").len(),
        before_30010,
        "no reminder for a protected patient"
    );
    for (_, h) in &listeners {
        h.abort();
    }
    store.close().await;
}

#[tokio::test]
async fn ingest_hl7_reports_rejections_and_a_reimport_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path());
    let file = common::copy_sample(dir.path(), "samples/hl7/clinica_siu.hl7");
    let file = file.to_str().unwrap();
    let args = ["--now", "2026-12-06T12:00:00Z", "ingest", "hl7", file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(
        out.contains("4 messages imported (4 new or changed, 0 unchanged), 1 ignored, 1 rejected"),
        "{out}"
    );
    assert!(
        out.contains("message 5 (line 23, MSH-10 CLI-0005): AE Required field missing at SCH-2"),
        "{out}"
    );
    assert!(!out.contains("Quarentena"), "{out}");
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(out.contains("(0 new or changed, 4 unchanged)"), "{out}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-30010"]).await;
    assert!(explain.contains("protected in the EHR"), "{explain}");
}
