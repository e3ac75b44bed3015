//! Regression tests for the WhatsApp webhook endpoint under hostile clients (issue 11): the
//! `X-Hub-Signature-256` header must be present and well-formed before a byte of the body is read,
//! an announced body over the limit is refused before it is read, and nothing refused is stored.
//!
//! Raw HTTP/1.1 over TCP, so the test controls how much of a body is sent: an endpoint that waited
//! for the body would never answer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::config::{Compiled, PipelineConfig};
use medrelay_pipeline::http::webhook::{WebhookState, serve, webhook_router};
use medrelay_pipeline::inbound::Inbound;
use medrelay_pipeline::keys::Keys;
use medrelay_pipeline::store::Store;
use medrelay_pipeline::whatsapp::webhook::sign;
use medrelay_pipeline::whatsapp::{Accepted, SendError, WhatsAppTransport};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const APP_SECRET: &[u8] = b"hardening-app-secret";

/// The endpoint only stores; nothing is ever sent from here.
struct NeverSends;

#[async_trait]
impl WhatsAppTransport for NeverSends {
    async fn send(&self, _body: &Value) -> Result<Accepted, SendError> {
        Err(SendError::Retry {
            code: None,
            detail: "test transport".into(),
        })
    }
}

fn compiled() -> Arc<Compiled> {
    let c: PipelineConfig = toml::from_str(
        r#"
        [sites.main]
        time_zone = "America/Sao_Paulo"
        default_region = "BR"
        [[plan.steps]]
        name = "reminder_48h"
        kind = "reminder"
        offset = "48h"
        template = "reminder"
        [templates.reminder]
        name = "appt_reminder"
        languages = ["pt_BR"]
        body = ["given_name"]
        "#,
    )
    .unwrap();
    Arc::new(c.compile().unwrap())
}

/// A store in a temporary folder and the webhook state over it.
async fn state() -> (tempfile::TempDir, Store, WebhookState) {
    let dir = tempfile::tempdir().unwrap();
    let store = medrelay_pipeline::store::testing::open(
        &dir.path().join("m.db"),
        Keys::from_secret(b"secret"),
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(
        "2026-03-10T12:00:00Z".parse::<Timestamp>().unwrap(),
    ));
    let inbound = Arc::new(Inbound::new(
        store.clone(),
        compiled(),
        Arc::new(NeverSends),
        clock,
    ));
    let state = WebhookState::new(inbound, APP_SECRET, "verify");
    (dir, store, state)
}

/// Sends `head` and `body` on a fresh connection; the answer once complete (or the connection
/// closed), `None` when none came within the generous bound.
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

fn post_head(signature: Option<&str>, content_length: usize) -> String {
    let sig = signature
        .map(|s| format!("X-Hub-Signature-256: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{sig}Content-Length: {content_length}\r\n\r\n"
    )
}

async fn start(state: WebhookState) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        webhook_router(state),
        std::future::pending(),
    ));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_webhook_body_is_not_buffered() {
    let (_dir, store, state) = state().await;
    let addr = start(state).await;
    // A body just under the 1 MiB limit is announced and 1 KiB of it sent: without a well-formed
    // signature header the answer comes at once.
    let part = vec![b' '; 1024];
    let well_formed_but_wrong = format!("sha256={}", "ab".repeat(32));
    for sig in [
        None,
        Some(""),
        Some("sha256="),
        Some("sha256=00"),
        Some("sha1=0123456789abcdef0123456789abcdef01234567"),
        Some(&*format!("sha256={}", "zz".repeat(32))),
        Some(&*format!("sha256={}", "ab".repeat(33))),
    ] {
        let answer = exchange(addr, &post_head(sig, 1024 * 1024 - 1), &part)
            .await
            .unwrap_or_else(|| panic!("no answer before the body ({sig:?})"));
        assert!(answer.starts_with("HTTP/1.1 401"), "{sig:?}: {answer}");
    }
    // A well-formed signature needs the body to be checked: sent whole, then refused.
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let answer = exchange(
        addr,
        &post_head(Some(&well_formed_but_wrong), body.len()),
        body,
    )
    .await
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // Announced over the limit: 413 before the body is read.
    let answer = exchange(
        addr,
        &post_head(Some(&well_formed_but_wrong), 64 << 20),
        &part,
    )
    .await
    .expect("413 before the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(store.unprocessed_webhooks().await.unwrap().is_empty());

    // Signed: stored, 200, as before.
    let answer = exchange(
        addr,
        &post_head(Some(&sign(APP_SECRET, body)), body.len()),
        body,
    )
    .await
    .expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(store.unprocessed_webhooks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_dribbled_webhook_body_is_cut_at_the_deadline() {
    let (_dir, store, mut state) = state().await;
    state.limits = medrelay_listener::RequestLimits::new(1024 * 1024, Duration::from_secs(1), 2);
    let addr = start(state).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let head = post_head(Some(&format!("sha256={}", "ab".repeat(32))), 100);
    w.write_all(head.as_bytes()).await.unwrap();
    // A byte every 100 ms would take 10 s; the deadline counts the whole body.
    let dribble = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if w.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut answer))
        .await
        .expect("answered within the bound")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    dribble.abort();
    assert!(store.unprocessed_webhooks().await.unwrap().is_empty());
}
