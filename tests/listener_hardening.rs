//! Regression tests for the FHIR Subscription endpoint's authentication (issue 11): an empty
//! Authorization variable must stop `medrelay run` (fail closed, as an empty WhatsApp app secret
//! does), and the `Authorization` header is checked before a byte of the body is read.
//!
//! The HTTP side speaks raw HTTP/1.1 over TCP, so the test controls exactly how much of a body is
//! sent: an endpoint that waited for the body would never answer.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use clap::Parser;
use medrelay_pipeline::clock::ManualClock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH_ENV: &str = "MEDRELAY_TEST_HARDENING_FHIR_AUTH";
const AUTH: &str = "Bearer hardening-7d2e41";
const EMPTY_ENV: &str = "MEDRELAY_TEST_HARDENING_EMPTY";
const BLANK_ENV: &str = "MEDRELAY_TEST_HARDENING_BLANK";

/// The variables are set once, before any test starts threads of its own; only these tests read
/// them (unique names).
fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once per process, first thing in every test, under `Once`.
        unsafe {
            std::env::set_var(AUTH_ENV, AUTH);
            std::env::set_var(EMPTY_ENV, "");
            std::env::set_var(BLANK_ENV, " \t ");
        }
    });
}

/// The demo configuration with the FHIR connector's Subscription endpoint on an ephemeral port,
/// its Authorization value in `subscription_env`, and `server` appended to the connector.
fn config(dir: &Path, subscription_env: &str, server: &str) -> PathBuf {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# [connectors.subscription]\n# listen = \"127.0.0.1:8444\"\n# path = \"/fhir/subscription\"\n# authorization_env = \"CLINICA_FHIR_SUBSCRIPTION_AUTH\"",
        &format!("[connectors.subscription]\nlisten = \"127.0.0.1:0\"\npath = \"/fhir/subscription\"\nauthorization_env = \"{subscription_env}\"\n{server}"),
    );
    assert!(text.contains(subscription_env));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the CLI in-process: exit code and the error message (what `main` prints). A `run` that
/// starts is stopped after a generous bound and reported as exit code 0.
async fn cli(config: &Path, args: &[&str]) -> (u8, String) {
    let mut full = vec!["medrelay", "--config", config.to_str().unwrap()];
    full.extend(args);
    let mut out = Vec::new();
    let run = medrelay::run(medrelay::Cli::parse_from(full), &mut out);
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Ok(code)) => (code, String::new()),
        Ok(Err(e)) => (medrelay::exit_code_of(&e), format!("{e:#}")),
        Err(_) => (0, "still running: the service started".into()),
    }
}

#[tokio::test]
async fn empty_authorization_variable_fails_closed() {
    environment();
    for var in [EMPTY_ENV, BLANK_ENV] {
        // The Subscription's Authorization variable is set, but to nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), var, "");
        let (code, err) = cli(&path, &["check"]).await;
        assert_eq!(code, medrelay::exit::USAGE, "{err}");
        assert!(
            err.contains(&format!(
                "{var} (connector `clinica-fhir` subscription.authorization_env)"
            )),
            "{err}"
        );
        let (code, err) = cli(&path, &["run"]).await;
        assert_eq!(code, medrelay::exit::USAGE, "run refuses to start: {err}");
        assert!(err.contains(var), "the variable is named: {err}");
        assert!(err.contains("subscription.authorization_env"), "{err}");

        // The FHIR server's Authorization variable has the same hole: requests would go out with an
        // empty credential. `run` (which polls and reads id-only notifications) refuses too.
        let dir = tempfile::tempdir().unwrap();
        let server = format!(
            "[connectors.server]\nbase_url = \"http://127.0.0.1:9/fhir\"\nauthorization_env = \"{var}\"\n"
        );
        let path = config(dir.path(), AUTH_ENV, &server);
        let (code, err) = cli(&path, &["check"]).await;
        assert_eq!(code, medrelay::exit::USAGE, "{err}");
        assert!(
            err.contains(&format!(
                "{var} (connector `clinica-fhir` server.authorization_env)"
            )),
            "{err}"
        );
        let (code, err) = cli(&path, &["run"]).await;
        assert_eq!(code, medrelay::exit::USAGE, "run refuses to start: {err}");
        assert!(err.contains(var), "the variable is named: {err}");
        assert!(err.contains("server.authorization_env"), "{err}");
        let (code, err) = cli(
            &path,
            &["ingest", "fhir", "--connector", "clinica-fhir", "--server"],
        )
        .await;
        assert_eq!(
            code,
            medrelay::exit::USAGE,
            "no request without a credential: {err}"
        );
        assert!(err.contains(var), "{err}");
    }
    // A variable with a value passes `check` as before.
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), AUTH_ENV, "");
    let (code, err) = cli(&path, &["check"]).await;
    assert_eq!(code, 0, "{err}");
}

/// Sends `head` (and `body`) on a fresh connection and reads the answer until the server closes it
/// or the answer is complete; `None` when no complete answer came within the generous bound.
async fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let read = async {
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&answer);
            if let Some((h, b)) = text.split_once("\r\n\r\n") {
                let len = h
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|n| b.len() >= n) {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .ok()
        .filter(|a| !a.is_empty())
}

fn post_head(authorization: Option<&str>, content_length: usize) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /fhir/subscription HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n{auth}Content-Length: {content_length}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_body_is_not_buffered() {
    environment();
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), AUTH_ENV, "");
    let loaded = medrelay::config::load(&path).unwrap();
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
    let addr = endpoints[0].0;

    // An 8 MiB body is announced, 1 KiB of it sent: the answer comes without waiting for the rest.
    let part = vec![b' '; 1024];
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(""),
        Some("bearer hardening-7d2e41"),
    ] {
        let answer = exchange(addr, &post_head(auth, 8 * 1024 * 1024), &part).await;
        let answer = answer.unwrap_or_else(|| panic!("no answer before the body ({auth:?})"));
        assert!(answer.starts_with("HTTP/1.1 401"), "{auth:?}: {answer}");
        assert!(answer.contains("application/fhir+json"), "{answer}");
        assert!(answer.contains("\"code\":\"security\""), "{answer}");
    }
    // No Content-Length at all (chunked, never finished): the same.
    let chunked = "POST /fhir/subscription HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n";
    let answer = exchange(addr, chunked, &part).await.expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // Authenticated but announced larger than body_limit: 413 at once, as an OperationOutcome.
    let answer = exchange(addr, &post_head(Some(AUTH), 64 * 1024 * 1024), &part)
        .await
        .expect("413 before the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"code\":\"too-costly\""), "{answer}");

    // Authenticated and complete: read and answered as before.
    let handshake = std::fs::read(
        common::root().join("connectors/fhir/tests/fixtures/handshake_bundle_example.json"),
    )
    .unwrap();
    let answer = exchange(addr, &post_head(Some(AUTH), handshake.len()), &handshake)
        .await
        .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        store.quarantine_lines(10).await.unwrap().is_empty(),
        "nothing of the refused requests was stored"
    );
    for (_, h) in &endpoints {
        h.abort();
    }
    store.close().await;
}
