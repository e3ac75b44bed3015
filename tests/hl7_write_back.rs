//! HL7 write-back end to end: an HL7 feed of its own system writes the patient's tap back to the
//! EHR's inbound interface as an SRM over MLLP. The "EHR" here is a minimal MLLP listener in the
//! test that records each frame and answers AA (or AE, to check that a refusal is not taken as
//! done); `tests/interop_hl7.rs` does the same against python-hl7's server.

mod common;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An inbound interface that records every message and answers `code`.
async fn ehr_inbound(code: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let record = got.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        let msg = String::from_utf8_lossy(&buf[1..end]).to_string();
                        buf.drain(..end + 2);
                        let control = msg.split('|').nth(9).unwrap_or("").to_string();
                        record.lock().unwrap().push(msg);
                        let ack = format!(
                            "\x0bMSH|^~\\&|AGENDA||MEDRELAY||20261206||ACK^S03^ACK|A{control}|P|2.5.1\rMSA|{code}|{control}\r\x1c\r"
                        );
                        s.write_all(ack.as_bytes()).await.unwrap();
                    }
                }
            });
        }
    });
    (addr, got)
}

async fn run_with_inbound(
    code: &'static str,
) -> (
    Vec<String>,
    medrelay_pipeline::store::Store,
    tempfile::TempDir,
) {
    let (addr, got) = ehr_inbound(code).await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    let got = got.lock().unwrap().clone();
    (got, store, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_goes_back_to_the_ehr_as_an_srm() {
    let (got, store, _dir) = run_with_inbound("AA").await;
    let srm: Vec<&String> = got
        .iter()
        .filter(|m| m.contains("ARQ|PL-30007|AG-30007"))
        .collect();
    assert_eq!(srm.len(), 1, "exactly one SRM for the tap: {got:?}");
    let m = srm[0];
    assert!(m.contains("|SRM^S03^SRM_S01|MRWB"), "{m}");
    assert!(m.contains("\rNTE|1|L|CONFIRMED^"), "{m}");
    assert!(m.contains("\rPID|1||P-2007\r"), "{m}");
    assert!(
        m.contains("^^^202612101400-0300"),
        "the slot in the site's zone: {m}"
    );
    assert!(!m.contains("Cec"), "no name in the write-back: {m}");
    let s = store.status_summary(jiff::Timestamp::now()).await.unwrap();
    assert_eq!(s.writeback_pending, 0, "{s:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ae_from_the_ehr_is_not_taken_as_written() {
    let (got, store, _dir) = run_with_inbound("AE").await;
    // Sent once: the refused batch waits out its backoff instead of being resent every pass.
    assert_eq!(
        got.iter().filter(|m| m.contains("SRM^S03")).count(),
        1,
        "{got:?}"
    );
    let s = store.status_summary(jiff::Timestamp::now()).await.unwrap();
    assert!(
        s.writeback_pending >= 1,
        "the reply is still waiting: {s:?}"
    );
    assert!(
        s.open_alerts
            .iter()
            .any(|(_, kind, detail)| kind == "writeback_rejected" && detail.contains("AE")),
        "staff are told: {s:?}"
    );
    store.close().await;
}
