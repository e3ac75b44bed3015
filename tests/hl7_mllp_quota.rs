//! The MLLP listener's protections as `medrelay run` wires them: the quarantine quota with the
//! real store (a hostile source's rejected frames are answered but, beyond its quota, not kept;
//! `medrelay status` counts them and one alert is raised), a `|` bomb answered AR, and the
//! configuration checks of the new keys.

mod common;

use std::sync::Arc;

use medrelay::config::load;
use medrelay_pipeline::clock::{Clock, ManualClock};
use tokio::net::TcpStream;

/// The sample config with the HL7 listener on a free port and `extra` keys on the connector.
fn setup(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# listen = \"0.0.0.0:2575\"",
        &format!("listen = \"127.0.0.1:0\"\n{extra}"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A message medrelay does not process (ADT): answered AR, its raw kept in quarantine.
fn not_siu(n: usize) -> Vec<u8> {
    format!("MSH|^~\\&|X|Y|MEDRELAY|GHH|20261206100000||ADT^A01|Q{n}|P|2.5\rPID|||{n}\r")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_beyond_the_quarantine_quota_are_answered_counted_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(
        dir.path(),
        "quarantine_max_messages_per_source = 3\nquarantine_window_secs = 3600",
    );
    let loaded = load(&path).unwrap();
    let clock = Arc::new(ManualClock::new("2026-12-06T13:00:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let listeners = common::start_mllp(&service, &loaded, clock.clone()).await;
    let mut s = TcpStream::connect(listeners[0].0).await.unwrap();
    for n in 0..8 {
        let ack = common::mllp_exchange(&mut s, &not_siu(n)).await;
        assert!(ack.contains(&format!("\rMSA|AR|Q{n}")), "{ack}");
    }
    // A 1 MB `|` bomb is an AR naming the limit (and over the quota now: not kept either).
    let mut bomb = b"MSH|^~\\&|X|Y|MEDRELAY|GHH|20261206100000||SIU^S12|B1|P|2.5\rPID".to_vec();
    bomb.extend(std::iter::repeat_n(b'|', 1_000_000));
    let ack = common::mllp_exchange(&mut s, &bomb).await;
    assert!(
        ack.contains("\rMSA|AR|B1") && ack.contains("max_fields"),
        "{ack}"
    );
    let summary = store.status_summary(clock.now()).await.unwrap();
    assert_eq!(summary.quarantined, 3, "only the quota's worth is kept");
    let alerts: Vec<_> = summary
        .open_alerts
        .iter()
        .filter(|(_, kind, _)| kind == "quarantine_quota")
        .collect();
    assert_eq!(alerts.len(), 1, "{:?}", summary.open_alerts);
    assert!(alerts[0].2.contains("source 127.0.0.1"), "{}", alerts[0].2);
    // The counts are written within about a second; `medrelay status` shows them.
    let config = path.to_str().unwrap().to_string();
    let mut out = String::new();
    for _ in 0..100 {
        out = common::cli_with_config(&config, &["--now", "2026-12-06T13:00:00Z", "status"])
            .await
            .1;
        if out.contains("not kept (quarantine quota): 6 messages") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        out.contains("not kept (quarantine quota): 6 messages"),
        "{out}"
    );
    assert!(
        out.contains("clinica-hl7 from 127.0.0.1: 6 messages"),
        "{out}"
    );
}

#[test]
fn mllp_protection_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = setup(
        dir.path(),
        "allow_from = [\"10.1.0.0/8\", \"nowhere\"]\nreserved_for = [\"192.168.1.5\"]\n\
         reserved_connections = 40\nmax_fields = 0\nidle_timeout_secs = 0\n\
         quarantine_max_messages_per_source = 5000",
    );
    let e = format!("{:#}", load(&path).unwrap_err());
    for expected in [
        "allow_from: `10.1.0.0/8` has address bits set",
        "allow_from: `nowhere` is not an IP address",
        "reserved_connections must be less than max_connections",
        "max_fields must be between 1 and the ceiling",
        "idle_timeout_secs must be between 1 and 86400",
        "quarantine_max_messages_per_source must be between 1 and quarantine_max_messages",
    ] {
        assert!(e.contains(expected), "{expected} in: {e}");
    }
    let path = setup(
        dir.path(),
        "allow_from = [\"10.0.0.0/8\"]\nreserved_for = [\"192.168.1.5\"]\nreserved_connections = 2",
    );
    let e = format!("{:#}", load(&path).unwrap_err());
    assert!(
        e.contains("reserved_for `192.168.1.5` is not inside allow_from"),
        "{e}"
    );
    let path = setup(
        dir.path(),
        "allow_from = [\"10.0.0.0/8\", \"127.0.0.1\"]\nreserved_for = [\"10.1.2.3\"]\nreserved_connections = 2",
    );
    let loaded = load(&path).unwrap();
    let c = loaded.hl7_connector(None).unwrap();
    let o = c.listener_options();
    assert_eq!(o.allow_from.len(), 2);
    assert_eq!(o.reserved_connections, 2);
}
