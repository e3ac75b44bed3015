//! TLS on the connections medrelay serves and makes, configured as a site would (`[connectors.tls]`,
//! `[connectors.write_back] tls`, `[whatsapp.webhook.tls]`) with the test PKI in tests/fixtures/tls:
//!
//! - MLLP under mutual TLS: an interface engine with a certificate the configured CA signed gets
//!   its ACK; one without a certificate, one with a foreign certificate and one speaking plain MLLP
//!   are refused before a byte of HL7 is read, and nothing of theirs is stored.
//! - Write-back to an EHR interface that itself requires TLS and a client certificate.
//! - The WhatsApp webhook endpoint over HTTPS.
//! - A configuration whose key file is wrong is refused by `load` with the file's name, never its
//!   content.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medrelay::config::load;
use medrelay_listener::tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};
use medrelay_pipeline::clock::ManualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn pki(name: &str) -> std::path::PathBuf {
    common::root().join("tests/fixtures/tls").join(name)
}

/// Copies the test PKI into the site's folder (the configuration names the files relatively).
fn install_pki(dir: &Path) {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
        "rogue.crt",
        "rogue.key",
    ] {
        std::fs::copy(pki(f), dir.join("tls").join(f)).unwrap();
    }
}

fn client(identity: Option<&str>) -> ClientTls {
    ClientTls::load(&ClientTlsFiles {
        ca: pki("ca.crt"),
        server_name: None,
        client_cert: identity.map(|i| pki(&format!("{i}.crt"))),
        client_key: identity.map(|i| pki(&format!("{i}.key"))),
    })
    .unwrap()
}

/// One SIU message over MLLP-over-TLS; the ACK, or why there was none.
async fn send_over_tls(
    addr: std::net::SocketAddr,
    tls: &ClientTls,
    message: &str,
) -> Result<String, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut s = tls
        .connect("127.0.0.1", tcp, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let ack = medrelay_connector_hl7v2::mllp::exchange(&mut s, message.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8(ack).unwrap())
}

fn sample_messages() -> Vec<String> {
    let raw = std::fs::read_to_string(common::root().join("samples/hl7/clinica_siu.hl7")).unwrap();
    let mut out: Vec<String> = Vec::new();
    for line in raw.replace("\r\n", "\n").replace('\n', "\r").split('\r') {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("MSH") {
            out.push(String::new());
        }
        let m = out.last_mut().unwrap();
        m.push_str(line);
        m.push('\r');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_under_mutual_tls_takes_a_trusted_engine_and_refuses_the_others_before_reading_hl7() {
    let dir = tempfile::tempdir().unwrap();
    install_pki(dir.path());
    let site = common::MllpSite::start(
        dir.path(),
        "tls = { cert = \"tls/server.crt\", key = \"tls/server.key\", client_ca = \"tls/ca.crt\" }",
    )
    .await;
    let (store, clock, addr) = (&site.store, &site.clock, site.addr());
    let messages = sample_messages();

    // The engine with its certificate: every message answered, as over plain MLLP.
    let engine = client(Some("client"));
    let ack = send_over_tls(addr, &engine, &messages[0]).await.unwrap();
    assert!(ack.contains("\rMSA|AA|CLI-0001"), "{ack}");
    let stored = || async {
        store
            .status_summary(clock.now_ts())
            .await
            .unwrap()
            .appointments_by_status
            .values()
            .sum::<i64>()
    };
    assert_eq!(stored().await, 1);

    // No certificate, a certificate of another CA: refused (the handshake or the first read
    // fails; TLS 1.3 reports a refused client certificate after the client's side completed).
    for refused in [client(None), client(Some("rogue"))] {
        let r = send_over_tls(addr, &refused, &messages[1]).await;
        assert!(
            r.is_err(),
            "a client without a trusted certificate got {r:?}"
        );
    }
    // Plain MLLP on the TLS port: never answered.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        medrelay_connector_hl7v2::mllp::exchange(&mut plain, messages[1].as_bytes()),
    )
    .await
    .expect("the listener closes the connection");
    assert!(r.is_err(), "plain MLLP was answered: {r:?}");
    assert_eq!(
        stored().await,
        1,
        "nothing of the refused clients was stored"
    );

    // The engine again, on a new connection: still served.
    let ack = send_over_tls(addr, &engine, &messages[1]).await.unwrap();
    assert!(ack.contains("\rMSA|AA|CLI-0002"), "{ack}");
    site.stop().await;
}

/// Extension trait: the manual clock's time without importing the `Clock` trait in every test.
trait NowTs {
    fn now_ts(&self) -> jiff::Timestamp;
}

impl NowTs for ManualClock {
    fn now_ts(&self) -> jiff::Timestamp {
        use medrelay_pipeline::clock::Clock;
        self.now()
    }
}

/// The EHR's inbound interface, itself under mutual TLS: answers AA to each SRM and records its
/// MSH-10 and the client certificate's presence.
async fn tls_ehr(tls: ServerTls) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, seen) = (tls.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut s) = tls.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) else {
                        match s.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let m = String::from_utf8_lossy(&buf[1..end]).into_owned();
                    buf.drain(..end + 2);
                    let control = m.split('|').nth(9).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(control.clone());
                    let ack = format!(
                        "\x0bMSH|^~\\&|AGENDA||MEDRELAY||20261208||ACK^S03^ACK|A{control}|P|2.5.1\rMSA|AA|{control}\r\x1c\r"
                    );
                    if s.write_all(ack.as_bytes()).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_is_written_back_to_an_ehr_that_requires_tls_and_a_client_certificate() {
    let ehr_tls = ServerTls::load(&ServerTlsFiles {
        cert: pki("server.crt"),
        key: pki("server.key"),
        client_ca: Some(pki("ca.crt")),
    })
    .unwrap();
    let (addr, received) = tls_ehr(ehr_tls).await;
    let (store, _dir) = common::hl7_tap_written_back_with(
        &addr.to_string(),
        &format!(
            "tls = {{ ca = \"{}\", client_cert = \"{}\", client_key = \"{}\" }}",
            pki("ca.crt").display(),
            pki("client.crt").display(),
            pki("client.key").display()
        ),
    )
    .await;
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "one SRM over TLS: {received:?}");
    assert!(received[0].starts_with("MRWB"), "{received:?}");
    let incomplete = store
        .incomplete_batches("clinica-hl7", "2026-12-09T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    assert!(incomplete.is_empty(), "the batch completed: {incomplete:?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_endpoint_serves_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    install_pki(dir.path());
    let path = dir.path().join("medrelay.toml");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe {
        std::env::set_var("MEDRELAY_TLS_TEST_SECRET", "tls-test-app-secret");
        std::env::set_var("MEDRELAY_TLS_TEST_VERIFY", "tls-test-verify");
    }
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[whatsapp.webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_env = \"MEDRELAY_TLS_TEST_SECRET\"\n\
         verify_token_env = \"MEDRELAY_TLS_TEST_VERIFY\"\ntls = { cert = \"tls/server.crt\", key = \"tls/server.key\" }\n",
    );
    std::fs::write(&path, text).unwrap();
    let loaded = load(&path).unwrap();
    let clock: Arc<dyn medrelay_pipeline::clock::Clock> =
        Arc::new(ManualClock::new("2026-12-06T12:00:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let (halt_tx, halt) = tokio::sync::watch::channel(false);
    let (addr, task) = medrelay::commands::run::start_webhook_endpoint(
        &loaded,
        &store,
        clock,
        Arc::new(tokio::sync::Notify::new()),
        halt,
        None,
    )
    .await
    .unwrap()
    .expect("the endpoint listens");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki("ca.crt")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    // The subscription check Meta makes, over HTTPS.
    let r = https
        .get(format!(
            "https://localhost:{}/webhook?hub.mode=subscribe&hub.verify_token=tls-test-verify&hub.challenge=4242",
            addr.port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "4242");
    // A signed status webhook, over HTTPS: stored (200).
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let r = https
        .post(format!("https://localhost:{}/webhook", addr.port()))
        .header(
            "x-hub-signature-256",
            medrelay_pipeline::whatsapp::webhook::sign(b"tls-test-app-secret", body),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/webhook", addr.port()))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let _ = halt_tx.send(true);
    let _ = task.await;
    store.close().await;
}

#[test]
fn a_wrong_key_file_is_refused_at_load_with_its_name_and_never_its_content() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    install_pki(dir.path());
    std::fs::write(
        dir.path().join("tls/server.key"),
        "TLS-KEY-CANARY-91a7 this is not a key",
    )
    .unwrap();
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# listen = \"0.0.0.0:2575\"",
        "listen = \"127.0.0.1:0\"\ntls = { cert = \"tls/server.crt\", key = \"tls/server.key\" }",
    );
    std::fs::write(&path, text).unwrap();
    let e = load(&path).unwrap_err().to_string();
    assert!(e.contains("connector `clinica-hl7`: tls"), "{e}");
    assert!(e.contains("server.key"), "{e}");
    assert!(!e.contains("TLS-KEY-CANARY"), "{e}");
}
