//! Abuse tests for the HTTP listeners `medrelay run` serves (issue 11), wired from the
//! configuration as `run` wires them: while hostile clients run (hundreds of connections that
//! dribble their headers, dozens of clients posting large bodies without a credential or with a
//! forged one, over and over), a well-behaved client still gets its answers, every slow-header
//! connection is closed by the server, and the process's resident memory stays bounded.
//!
//! Before the fix, each unauthenticated 8 MiB body was buffered before the credential was checked
//! (48 at once: hundreds of MiB) and slow-header connections were never closed.
//!
//! Bounds are generous for a loaded 2-core machine; nothing is timed except by those bounds. The
//! two tests take turns (one lock) so that each measures its own memory.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::whatsapp::webhook::sign;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FHIR_AUTH_ENV: &str = "MEDRELAY_TEST_ABUSE_FHIR_AUTH";
const FHIR_AUTH: &str = "Bearer abuse-test-51c0";
const APP_SECRET_ENV: &str = "MEDRELAY_TEST_ABUSE_APP_SECRET";
const APP_SECRET: &str = "abuse-test-app-secret";
const VERIFY_ENV: &str = "MEDRELAY_TEST_ABUSE_VERIFY";

/// Slow-header connections per test.
const SLOW: usize = 220;
/// Clients posting large bodies without a (valid) credential, each over and over.
const FLOODERS: usize = 48;
/// Growth of the resident set allowed while the attack runs.
const RSS_BOUND_MIB: u64 = 128;
/// Generous bound for any one answer or closure on a loaded machine.
const BOUND: Duration = Duration::from_secs(30);

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn environment() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once per process, first thing in every test, under `Once`; only these tests
        // read these names.
        unsafe {
            std::env::set_var(FHIR_AUTH_ENV, FHIR_AUTH);
            std::env::set_var(APP_SECRET_ENV, APP_SECRET);
            std::env::set_var(VERIFY_ENV, "abuse-verify");
        }
    });
}

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Samples the resident set on a thread of its own until dropped; `peak()` is the highest seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

/// Opens a connection that sends a request line and then one header byte every 200 ms; true when
/// the server closed it within [`BOUND`].
async fn slow_header(addr: std::net::SocketAddr, path: &'static str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes())
        .await
        .is_err()
    {
        return true;
    }
    let dribble = async {
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                r = s.read(&mut buf) => {
                    // Data (an error answer) or the end: either way the server ended it.
                    if matches!(r, Ok(0) | Err(_)) { return; }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if s.write_all(b"X").await.is_err() { return; }
                }
            }
        }
    };
    tokio::time::timeout(BOUND, dribble).await.is_ok()
}

/// Posts `head` and a body of `len` bytes from one shared buffer, over and over until `stop`;
/// counts the attempts.
async fn flood(
    addr: std::net::SocketAddr,
    head: String,
    len: usize,
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
) {
    static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        attempts.fetch_add(1, Ordering::Relaxed);
        let send = async {
            s.write_all(head.as_bytes()).await?;
            let mut sent = 0;
            while sent < len {
                let n = CHUNK.len().min(len - sent);
                s.write_all(&CHUNK[..n]).await?;
                sent += n;
            }
            let mut buf = [0u8; 1024];
            while s.read(&mut buf).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        let _ = tokio::time::timeout(BOUND, send).await;
    }
}

/// One well-behaved request on a fresh connection; the status line once the answer is complete
/// (the server closes or the declared body is in), `None` if none came within [`BOUND`].
async fn exchange(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(head.as_bytes()).await.ok()?;
    s.write_all(body).await.ok()?;
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
        String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .map(str::to_string)
    };
    tokio::time::timeout(BOUND, read).await.ok().flatten()
}

/// Runs the attack on `addr`: `SLOW` slow-header connections and the flooders; meanwhile
/// `well_behaved` runs. Asserts the slow connections were all closed and the memory bound.
async fn under_attack<F: std::future::Future<Output = ()>>(
    addr: std::net::SocketAddr,
    path: &'static str,
    flooders: Vec<(String, usize)>,
    well_behaved: F,
) {
    let baseline = rss_kib();
    let mut sampler = RssSampler::start();
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| tokio::spawn(slow_header(addr, path)))
        .collect();
    let floods: Vec<_> = flooders
        .into_iter()
        .map(|(head, len)| tokio::spawn(flood(addr, head, len, stop.clone(), attempts.clone())))
        .collect();
    // Let the attack get going, then the well-behaved client does its work.
    tokio::time::sleep(Duration::from_millis(300)).await;
    well_behaved.await;
    let mut closed = 0;
    for s in slow {
        closed += usize::from(s.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        f.await.unwrap();
    }
    let peak = sampler.peak();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    let attempts = attempts.load(Ordering::Relaxed);
    eprintln!(
        "{path}: {closed}/{SLOW} slow-header connections closed by the server, {attempts} flood \
         requests, resident memory +{growth_mib} MiB"
    );
    assert_eq!(
        closed, SLOW,
        "every slow-header connection is closed by the server"
    );
    assert!(attempts >= FLOODERS, "the flood ran");
    assert!(
        growth_mib < RSS_BOUND_MIB,
        "resident memory grew by {growth_mib} MiB under attack (bound {RSS_BOUND_MIB} MiB)"
    );
}

fn write_config(dir: &Path, replacements: &[(&str, String)]) -> medrelay::config::Loaded {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in replacements {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
    medrelay::config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_endpoint_under_abuse_keeps_answering_in_bounded_memory() {
    environment();
    let _turn = TURNS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let loaded = write_config(
        dir.path(),
        &[(
            "# [connectors.subscription]\n# listen = \"127.0.0.1:8444\"\n# path = \"/fhir/subscription\"\n# authorization_env = \"CLINICA_FHIR_SUBSCRIPTION_AUTH\"",
            format!(
                "[connectors.subscription]\nlisten = \"127.0.0.1:0\"\npath = \"/fhir/subscription\"\nauthorization_env = \"{FHIR_AUTH_ENV}\"\nmax_connections = 400\nheader_timeout_secs = 2\nbody_timeout_secs = 10"
            ),
        )],
    );
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
    let head = |auth: Option<&str>, len: usize| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /fhir/subscription HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/fhir+json\r\n{auth}Content-Length: {len}\r\n\r\n"
        )
    };
    const BIG: usize = 8 * 1024 * 1024;
    let flooders = (0..FLOODERS)
        .map(|i| {
            let auth = if i % 2 == 0 {
                None
            } else {
                Some("Bearer guess")
            };
            (head(auth, BIG), BIG)
        })
        .collect();
    let handshake = std::fs::read(
        common::root().join("connectors/fhir/tests/fixtures/handshake_bundle_example.json"),
    )
    .unwrap();
    let well_behaved = async {
        for _ in 0..5 {
            let status = exchange(addr, &head(Some(FHIR_AUTH), handshake.len()), &handshake).await;
            assert_eq!(
                status.as_deref(),
                Some("HTTP/1.1 200 OK"),
                "the Subscription's own notification is answered under attack"
            );
        }
    };
    under_attack(addr, "/fhir/subscription", flooders, well_behaved).await;
    assert!(
        store.quarantine_lines(10).await.unwrap().is_empty(),
        "nothing of the attack was stored"
    );
    for (_, h) in &endpoints {
        h.abort();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_endpoint_under_abuse_keeps_answering_in_bounded_memory() {
    environment();
    let _turn = TURNS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    const BIG: usize = 4 * 1024 * 1024;
    let loaded = write_config(
        dir.path(),
        &[(
            "# [whatsapp.webhook]\n# listen = \"127.0.0.1:8443\"",
            format!(
                "[whatsapp.webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_env = \"{APP_SECRET_ENV}\"\nverify_token_env = \"{VERIFY_ENV}\"\nbody_limit = {BIG}\nmax_connections = 400\nmax_requests = 4\nheader_timeout_secs = 2\nbody_timeout_secs = 10"
            ),
        )],
    );
    let clock = Arc::new(ManualClock::new("2026-12-01T12:00:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = medrelay::commands::run::start_webhook_endpoint(
        &loaded,
        &store,
        clock,
        Arc::new(tokio::sync::Notify::new()),
        halt_rx,
        None,
    )
    .await
    .unwrap()
    .expect("the endpoint is configured");
    let head = |signature: Option<&str>, len: usize| {
        let sig = signature
            .map(|s| format!("X-Hub-Signature-256: {s}\r\n"))
            .unwrap_or_default();
        format!(
            "POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{sig}Content-Length: {len}\r\n\r\n"
        )
    };
    // Half send no signature (refused before the body); half a well-formed forged one, whose
    // bodies must be read to be refused: at most `max_requests` of them are held at once.
    let forged = format!("sha256={}", "0f".repeat(32));
    let flooders = (0..FLOODERS)
        .map(|i| {
            let sig = (i % 2 == 1).then_some(forged.as_str());
            (head(sig, BIG), BIG)
        })
        .collect();
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let signature = sign(APP_SECRET.as_bytes(), body);
    let well_behaved = async {
        for _ in 0..5 {
            let status = exchange(addr, &head(Some(&signature), body.len()), body).await;
            assert_eq!(
                status.as_deref(),
                Some("HTTP/1.1 200 OK"),
                "Meta's signed webhook is answered under attack"
            );
        }
    };
    under_attack(addr, "/webhook", flooders, well_behaved).await;
    assert_eq!(
        store.unprocessed_webhooks().await.unwrap().len(),
        5,
        "only the signed webhooks were stored"
    );
    // A shutdown stops it: the listener closes and the task ends.
    halt_tx.send_replace(true);
    tokio::time::timeout(BOUND, task)
        .await
        .expect("the endpoint stops")
        .unwrap()
        .unwrap();
    store.close().await;
}
