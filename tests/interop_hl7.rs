//! Interop with independent HL7v2 implementations: python-hl7's MLLP client sends real messages
//! (our samples, the Microsoft v2.8 and HAPI v2.3 samples, a broken batch) to medrelay's MLLP
//! listener, and every ACK medrelay answers is parsed by python-hl7 and validated by hl7apy in
//! STRICT mode (segment structure, data types, lengths, table 0008 codes).
//!
//! Needs Python with hl7 0.4.5 and hl7apy 1.3.5: `.ci/interop` installs them and runs these tests
//! with `MEDRELAY_PEERS_PYTHON` set (they are `#[ignore]`d in the plain `cargo test`).

mod common;

use std::process::Command;

/// One message's expected answer: MSH-10, MSA-1, ERR-3.1.
type Expected = (&'static str, &'static str, &'static str);

fn python() -> String {
    std::env::var("MEDRELAY_PEERS_PYTHON").expect(
        "MEDRELAY_PEERS_PYTHON must point at a Python with hl7 and hl7apy (run .ci/interop)",
    )
}

/// python-hl7 sends `file` to `port`; one JSON object per message comes back.
fn send_with_python_hl7(file: &std::path::Path, port: u16) -> Vec<serde_json::Value> {
    let script = common::root().join("tests/peers/hl7_check.py");
    let out = Command::new(python())
        .arg(script)
        .arg("send")
        .arg(file)
        .arg(port.to_string())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python-hl7 and hl7apy: run .ci/interop"]
async fn python_hl7_sends_and_hl7apy_validates_every_ack() {
    let dir = tempfile::tempdir().unwrap();
    let site = common::MllpSite::start(dir.path(), "").await;
    let port = site.addr().port();
    let store = &site.store;

    let fixtures = common::root().join("connectors/hl7v2/tests/fixtures");
    let real = common::root().join("tests/fixtures/hl7");
    // (file, [(MSH-10, MSA-1, ERR-3.1)], hl7apy verdict). hl7apy STRICT has no structure for any
    // v2.3 ACK (it needs MSH-9.3, which v2.3 does not have), so a v2.3 ACK is parsed TOLERANT and read back.
    let cases: Vec<(std::path::PathBuf, Vec<Expected>, &str)> = vec![
        (
            common::root().join("samples/hl7/clinica_siu.hl7"),
            vec![
                ("CLI-0001", "AA", ""),
                ("CLI-0002", "AA", ""),
                ("CLI-0003", "AA", ""),
                ("CLI-0004", "AA", ""),
                ("CLI-0005", "AE", "101"),
                ("CLI-0006", "AA", ""),
            ],
            "valid",
        ),
        (
            fixtures.join("SIU-S12-02.hl7"),
            vec![("MSG00012", "AA", "")],
            "valid",
        ),
        (
            fixtures.join("SIU_S14_nested_RGS_orsos_v23.hl7"),
            vec![(" 38762", "AA", "")],
            "parsed-tolerant",
        ),
        // The real-feed classes of tests/hl7_real_feeds.rs (fixtures written for this project):
        // cancels stamped before their bookings and cancels without timing are AA; SCH-25 words
        // are mapped, an unknown value is AE 103.
        (
            real.join("skewed_cancel_v251.hl7"),
            vec![
                ("SKW-0001", "AA", ""),
                ("SKW-0002", "AA", ""),
                ("SKW-0003", "AA", ""),
                ("SKW-0004", "AA", ""),
            ],
            "valid",
        ),
        (
            real.join("skewed_cancel_v23.hl7"),
            vec![
                ("V23-0001", "AA", ""),
                ("V23-0002", "AA", ""),
                ("V23-0003", "AA", ""),
                ("V23-0004", "AA", ""),
            ],
            "parsed-tolerant",
        ),
        (
            real.join("local_status_words.hl7"),
            vec![
                ("STA-0001", "AA", ""),
                ("STA-0002", "AA", ""),
                ("STA-0003", "AE", "103"),
                ("STA-0004", "AE", "103"),
            ],
            "valid",
        ),
        (
            real.join("room_change.hl7"),
            vec![("ROOM-0001", "AA", ""), ("ROOM-0002", "AA", "")],
            "valid",
        ),
        (
            real.join("room_moves.hl7"),
            vec![
                ("MOVE-0001", "AA", ""),
                ("MOVE-0002", "AA", ""),
                ("MOVE-0003", "AA", ""),
                ("MOVE-0004", "AA", ""),
            ],
            "valid",
        ),
        (
            fixtures.join("broken_batch.hl7"),
            vec![
                ("BAD-0001", "AE", "101"),
                ("BAD-0002", "AR", "200"),
                ("BAD-0003", "AE", "102"),
                ("OK-0004", "AA", ""),
            ],
            "valid",
        ),
    ];
    for (file, expected, verdict) in cases {
        // python-hl7 reads the file itself, so it sees exactly these bytes.
        let results = tokio::task::spawn_blocking({
            let file = file.clone();
            move || send_with_python_hl7(&file, port)
        })
        .await
        .unwrap();
        assert_eq!(results.len(), expected.len(), "{file:?}: {results:?}");
        for (r, (control, msa1, err3)) in results.iter().zip(expected) {
            assert_eq!(r["control_id"], control, "{r}");
            assert_eq!(r["msa1"], msa1, "{file:?} {r}");
            assert_eq!(r["msa2"], control, "MSA-2 echoes MSH-10 exactly: {r}");
            assert_eq!(r["err3"], err3, "{r}");
            assert_eq!(r["hl7apy"], verdict, "hl7apy: {r}");
        }
    }
    let q = store.quarantine_lines(10).await.unwrap();
    assert_eq!(q.len(), 6, "every rejected message is in quarantine: {q:?}");
    site.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python-hl7: run .ci/interop"]
async fn python_hl7_receives_the_write_back_srm_and_acks_it() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(python())
        .arg(common::root().join("tests/peers/hl7_ack_server.py"))
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let (store, _dir) = common::hl7_tap_written_back_to(&format!("127.0.0.1:{port}")).await;
    let s = store.status_summary(jiff::Timestamp::now()).await.unwrap();
    assert_eq!(
        s.writeback_pending, 0,
        "python-hl7's AA completed the batch: {s:?}"
    );
    store.close().await;
    let _ = child.kill();
    let _ = child.wait();
    let mut received = String::new();
    out.read_line(&mut received).unwrap();
    let fields: Vec<&str> = received.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{received}");
    assert_eq!(fields[0], "SRM^S03^SRM_S01");
    assert!(fields[1].starts_with("MRWB"), "{received}");
    assert_eq!(fields[2], "AG-30007");
}

/// python-hl7's client over Python's ssl: one TLS run for each client identity.
fn send_with_python_over_tls(port: u16, identity: Option<&str>) -> serde_json::Value {
    let tls = common::root().join("tests/fixtures/tls");
    let mut cmd = Command::new(python());
    cmd.arg(common::root().join("tests/peers/hl7_tls.py"))
        .arg(common::root().join("samples/hl7/clinica_siu.hl7"))
        .arg(port.to_string())
        .arg(tls.join("ca.crt"));
    if let Some(who) = identity {
        cmd.arg(tls.join(format!("{who}.crt")))
            .arg(tls.join(format!("{who}.key")));
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python-hl7: run .ci/interop"]
async fn python_hl7_over_mutual_tls_is_answered_and_a_refused_certificate_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let site = common::MllpSite::start(dir.path(), &format!("tls = {}", mutual_tls_table())).await;
    let port = site.addr().port();
    let (trusted, anonymous, rogue) = tokio::task::spawn_blocking(move || {
        (
            send_with_python_over_tls(port, Some("client")),
            send_with_python_over_tls(port, None),
            send_with_python_over_tls(port, Some("rogue")),
        )
    })
    .await
    .unwrap();
    eprintln!(
        "python over TLS: trusted {trusted}, without a certificate {anonymous}, rogue {rogue}"
    );
    assert_eq!(trusted["msa"], "AA", "{trusted}");
    assert_eq!(trusted["control"], "CLI-0001", "{trusted}");
    assert!(anonymous.get("refused").is_some(), "{anonymous}");
    assert!(rogue.get("refused").is_some(), "{rogue}");
    site.stop().await;
}

/// The test PKI's server certificate and key, requiring client certificates the test CA signed.
fn mutual_tls_table() -> String {
    let pki = common::root().join("tests/fixtures/tls");
    format!(
        "{{ cert = \"{}\", key = \"{}\", client_ca = \"{}\" }}",
        pki.join("server.crt").display(),
        pki.join("server.key").display(),
        pki.join("ca.crt").display()
    )
}

/// node-hl7-client sends the sample feed to `port` (over TLS with the engine's certificate when
/// `tls`); the ACKs it read, as (MSA-2, MSA-1).
fn send_with_node_hl7_client(port: u16, tls: bool) -> Vec<(String, String)> {
    let node_path = std::env::var("MEDRELAY_MEDPLUM_NODE_PATH")
        .expect("MEDRELAY_MEDPLUM_NODE_PATH must point at node_modules with node-hl7-client (run .ci/interop)");
    let pki = common::root().join("tests/fixtures/tls");
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", node_path)
        .arg(common::root().join("tests/peers/node_hl7_send.js"))
        .arg(common::root().join("samples/hl7/clinica_siu.hl7"))
        .arg(port.to_string());
    if tls {
        cmd.arg(pki.join("ca.crt"))
            .arg(pki.join("client.crt"))
            .arg(pki.join("client.key"));
    }
    let out = cmd.output().expect("node runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    answers
        .iter()
        .map(|a| {
            (
                a["control"].as_str().unwrap().to_owned(),
                a["msa"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node-hl7-client: run .ci/interop"]
async fn node_hl7_client_sends_the_sample_feed_over_plain_mllp_and_over_mutual_tls() {
    let expected: Vec<(String, String)> = [
        ("CLI-0001", "AA"),
        ("CLI-0002", "AA"),
        ("CLI-0003", "AA"),
        ("CLI-0004", "AA"),
        ("CLI-0005", "AE"),
        ("CLI-0006", "AA"),
    ]
    .iter()
    .map(|(c, m)| (c.to_string(), m.to_string()))
    .collect();
    for tls in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let extra = if tls {
            format!("tls = {}", mutual_tls_table())
        } else {
            String::new()
        };
        let site = common::MllpSite::start(dir.path(), &extra).await;
        let port = site.addr().port();
        let answers = tokio::task::spawn_blocking(move || send_with_node_hl7_client(port, tls))
            .await
            .unwrap();
        assert_eq!(answers, expected, "node-hl7-client, tls {tls}");
        site.stop().await;
    }
}
