//! HL7 write-back end to end: an HL7 feed of its own system writes the patient's tap back to the
//! EHR's inbound interface as an SRM over MLLP. The "EHR" here is a minimal MLLP listener in the
//! test that records each frame and answers AA (or AE, to check that a refusal is not taken as
//! done); `tests/interop_hl7.rs` does the same against python-hl7's server.

mod common;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An inbound interface that records every message and answers `code`.
async fn ehr_inbound(code: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    ehr_inbound_on("127.0.0.1:0", code).await
}

/// [`ehr_inbound`] on a given address.
async fn ehr_inbound_on(bind: &str, code: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
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

/// Issue 16: a batch the EHR refused for good no longer holds its system forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_back_batch_is_listed_retried_and_skipped_with_an_audit_record() {
    let (addr, got) = ehr_inbound("AE").await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    // Ten seconds after the refusal: inside its 30 s backoff.
    let at = ["--now", "2026-12-08T17:05:10Z"];
    let cli = |args: &'static [&'static str]| {
        let mut full = at.to_vec();
        full.extend(args);
        async move { common::cli_with_config(config, &full).await }
    };
    let srms = || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|m| m.contains("SRM^S03"))
            .count()
    };
    assert_eq!(srms(), 1);

    let (code, out) = cli(&["writeback", "list"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("batch 1") && out.contains("refused"), "{out}");
    assert!(out.contains("1 reply") && out.contains("AE"), "{out}");
    assert!(out.contains("writeback retry ID"), "{out}");
    let (_, show) = cli(&["writeback", "show", "1"]).await;
    assert!(
        show.contains("confirm") && show.contains("clinica-hl7/AG-30007"),
        "{show}"
    );
    assert!(!show.contains("Cec"), "no patient name: {show}");

    // Within its backoff a pass sends nothing; after a retry it goes at once (and is refused again).
    let (code, out) = cli(&["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(srms(), 1, "the backoff holds");
    let (code, out) = cli(&["writeback", "retry", "1", "--actor", "it-desk"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(srms(), 2, "sent again after the retry");

    // Skip needs a reason, and takes the batch out of the way.
    let (code, _) = cli(&["writeback", "skip", "1", "--reason", " "]).await;
    assert_eq!(code, medrelay::exit::USAGE);
    let (code, out) = cli(&[
        "writeback",
        "skip",
        "1",
        "--actor",
        "it-desk",
        "--reason",
        "EHR interface rejects S03 for this clinic; phoned the front desk",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let (_, out) = cli(&["writeback", "list"]).await;
    assert!(out.contains("no open write-back batches"), "{out}");
    let (_, out) = cli(&["writeback", "list", "--all"]).await;
    assert!(
        out.contains("skipped") && out.contains("staff:it-desk") && out.contains("phoned"),
        "{out}"
    );
    let (code, out) = cli(&["writeback", "skip", "1", "--reason", "again"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{out}");
    let (code, out) = cli(&["writeback", "retry", "99"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{out}");

    // Nothing pending, the alert resolved, nothing sent after the skip, the trail intact.
    let (code, _) = cli(&["run", "--once"]).await;
    assert_eq!(code, 0);
    assert_eq!(srms(), 2, "a skipped batch is never written");
    let s = store.status_summary(jiff::Timestamp::now()).await.unwrap();
    assert_eq!(s.writeback_pending, 0, "{s:?}");
    assert!(
        !s.open_alerts
            .iter()
            .any(|(_, kind, _)| kind == "writeback_rejected"),
        "{s:?}"
    );
    let (code, out) = cli(&["audit", "export"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("writeback_retry") && out.contains("writeback_skip"),
        "{out}"
    );
    let (code, out) = cli(&["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    store.close().await;
}

/// The webhook endpoint of the site in `dir`, serving the health routes of `health` (issue 16).
async fn serve_health(
    dir: &std::path::Path,
    store: &medrelay_pipeline::store::Store,
    listeners: Vec<(String, tokio::task::AbortHandle)>,
    metrics_token: Option<&str>,
    instruments: Option<Arc<medrelay_pipeline::instruments::Instruments>>,
) -> (
    std::net::SocketAddr,
    medrelay_pipeline::http::health::HealthState,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    static ENV: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before anything reads them; only these tests read these names.
    ENV.call_once(|| unsafe {
        std::env::set_var("MEDRELAY_TEST_HEALTH_APP_SECRET", "health-app-secret");
        std::env::set_var("MEDRELAY_TEST_HEALTH_VERIFY", "health-verify");
    });
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "# [whatsapp.webhook]\n# listen = \"127.0.0.1:8443\"",
        "[whatsapp.webhook]\nlisten = \"127.0.0.1:0\"\napp_secret_env = \"MEDRELAY_TEST_HEALTH_APP_SECRET\"\nverify_token_env = \"MEDRELAY_TEST_HEALTH_VERIFY\"",
    );
    std::fs::write(&path, text).unwrap();
    let loaded = medrelay::config::load(&path).unwrap();
    let clock = std::sync::Arc::new(medrelay_pipeline::clock::ManualClock::new(
        "2026-12-08T17:05:10Z".parse().unwrap(),
    ));
    let health = medrelay_pipeline::http::health::HealthState {
        store: store.clone(),
        halt: None,
        listeners: std::sync::Arc::new(std::sync::Mutex::new(listeners)),
        metrics_token: metrics_token.map(std::sync::Arc::from),
        clock: clock.clone(),
        instruments,
    };
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let (web, task) = medrelay::commands::run::start_webhook_endpoint(
        &loaded,
        store,
        clock,
        std::sync::Arc::new(tokio::sync::Notify::new()),
        halt_rx,
        Some(health.clone()),
    )
    .await
    .unwrap()
    .expect("the webhook endpoint is configured");
    (web, health, halt_tx, task)
}

/// GETs `path` on `addr` with an optional bearer token: status and body.
async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Issue 16: `/healthz` and `/readyz` on the service's HTTP port; a refused write-back batch makes
/// the service not ready (it holds that system's replies) until it is dealt with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_a_refused_batch_holds_its_system_and_200_once_skipped() {
    let (addr, _got) = ehr_inbound("AE").await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    // A listener task that has ended (as a failed listener would).
    let ended = tokio::spawn(async {});
    while !ended.is_finished() {
        tokio::task::yield_now().await;
    }
    let listener = "listener 127.0.0.1:2575".to_string();
    let (web, health, halt_tx, task) = serve_health(
        dir.path(),
        &store,
        vec![(listener.clone(), ended.abort_handle())],
        None,
        None,
    )
    .await;
    assert_eq!(get(web, "/healthz", None).await, (200, "ok\n".to_string()));
    assert_eq!(
        get(web, "/metrics", None).await.0,
        404,
        "no token configured"
    );
    let (status, body) = get(web, "/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["status"], "not_ready");
    let failing = |v: &serde_json::Value| -> Vec<String> {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| {
                format!(
                    "{}: {}",
                    c["name"].as_str().unwrap(),
                    c["detail"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        failing(&ready),
        [
            "write_back: refused by the EHR and holding later replies: batch 1 (clinica-hl7) (`medrelay writeback list`)",
            "listeners: stopped: listener 127.0.0.1:2575"
        ],
        "{body}"
    );
    for c in ["database", "migrations", "sending"] {
        assert!(body.contains(&format!("\"name\":\"{c}\"")), "{body}");
    }
    assert!(
        !body.contains("Cec") && !body.contains("5511"),
        "no PHI: {body}"
    );

    // Dealt with: the batch skipped, the listener back (a running task): ready.
    store
        .skip_batch(
            1,
            "staff:test",
            "passed on by phone",
            jiff::Timestamp::now(),
        )
        .await
        .unwrap()
        .unwrap();
    let running = tokio::spawn(std::future::pending::<()>());
    *health.listeners.lock().unwrap() = vec![(listener, running.abort_handle())];
    let (status, body) = get(web, "/readyz", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ready\""), "{body}");
    running.abort();
    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    store.close().await;
}

/// The value of the exposition line `name{labels}` (labels as written by the encoder).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// Issue 16: `/metrics` after a scripted run (import, confirmation, reminder, a tap, its
/// write-back) says what happened, agrees with `status`, needs its token and carries no PHI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_scripted_run_match_what_happened_without_phi() {
    let (addr, got) = ehr_inbound("AA").await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    assert_eq!(got.lock().unwrap().len(), 1, "one SRM written back");
    let token = "metrics-test-token-7d1";
    let instruments = medrelay_pipeline::instruments::Instruments::new();
    let (web, _health, halt_tx, task) = serve_health(
        dir.path(),
        &store,
        vec![],
        Some(token),
        Some(instruments.clone()),
    )
    .await;
    assert_eq!(get(web, "/metrics", None).await.0, 401);
    assert_eq!(get(web, "/metrics", Some("wrong")).await.0, 401);
    // Two unsigned webhook posts and a wrong verification: timed by endpoint and status.
    let http = reqwest::Client::new();
    for _ in 0..2 {
        let r = http
            .post(format!("http://{web}/webhook"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let (verify, _) = get(
        web,
        "/webhook?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
        None,
    )
    .await;
    let (status, text) = get(web, "/metrics", Some(token)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");

    let s = store.status_summary(jiff::Timestamp::now()).await.unwrap();
    // The sample's HL7 file: four appointments applied, one message quarantined.
    assert_eq!(
        metric(
            &text,
            "medrelay_imported_total{connector=\"clinica-hl7\",outcome=\"applied\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(&text, "medrelay_quarantined{connector=\"clinica-hl7\"}"),
        s.quarantined as f64
    );
    assert_eq!(
        metric(
            &text,
            "medrelay_replies_total{action=\"confirm\",outcome=\"accepted\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "medrelay_writeback_batches{target=\"clinica-hl7\",state=\"written\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "medrelay_writeback_backlog"), 0.0);
    // Messages by template and status add up to status's count by status.
    let sent_by_status: f64 = text
        .lines()
        .filter(|l| l.starts_with("medrelay_messages{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        sent_by_status,
        s.messages_by_status.values().sum::<i64>() as f64
    );
    assert!(
        sent_by_status >= 2.0,
        "a confirmation and a reminder: {text}"
    );
    let jobs: f64 = text
        .lines()
        .filter(|l| l.starts_with("medrelay_outbox_jobs{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(jobs, s.jobs_by_state.values().sum::<i64>() as f64);
    assert_eq!(metric(&text, "medrelay_ready{check=\"write_back\"}"), 1.0);
    // The messaging-limit use agrees with what the sender counts.
    let scrape_time: jiff::Timestamp = "2026-12-08T17:05:10Z".parse().unwrap();
    let counted = store
        .recipients_since(scrape_time - jiff::SignedDuration::from_hours(24))
        .await
        .unwrap()
        .len();
    assert!(counted >= 1);
    assert_eq!(
        metric(&text, "medrelay_messaging_limit_recipients"),
        counted as f64
    );
    assert_eq!(
        metric(
            &text,
            "medrelay_http_request_seconds_count{endpoint=\"whatsapp_webhook\",status=\"401\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            &format!(
                "medrelay_http_request_seconds_count{{endpoint=\"whatsapp_webhook\",status=\"{verify}\"}}"
            )
        ),
        1.0
    );
    // No patient data in any label or value.
    for canary in ["Cec", "5511", "P-2007", "+55"] {
        assert!(!text.contains(canary), "{canary} in /metrics:\n{text}");
    }
    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    store.close().await;
}

/// An alert receiver on loopback: records each JSON body; answers 500 to the first `fail_first`.
async fn alert_receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use axum::http::StatusCode;
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let record = got.clone();
    let app = axum::Router::new().route(
        "/hooks/alerts",
        axum::routing::post(move |body: axum::Json<serde_json::Value>| {
            let (record, seen) = (record.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < fail_first {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                record.lock().unwrap().push(body.0);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Issue 16: each alert reaches the sink once when it fires and once when it recovers; a receiver
/// that fails gets it again after the backoff; bodies carry no patient data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_pushed_once_when_fired_and_once_when_recovered() {
    use medrelay_pipeline::alerts::{AlertSink, SinkFormat};
    let (addr, _got) = ehr_inbound("AE").await;
    let (store, _dir) = common::hl7_tap_written_back_to(&addr).await;
    let (url, bodies) = alert_receiver(1).await;
    let sink = AlertSink::new(&url, SinkFormat::Json, std::time::Duration::from_secs(5)).unwrap();
    let t0: jiff::Timestamp = "2026-12-08T17:06:00Z".parse().unwrap();
    let at = |secs: i64| t0 + jiff::SignedDuration::from_secs(secs);

    let r = sink.deliver(&store, at(0)).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 1), "the receiver answered 500");
    let r = sink.deliver(&store, at(10)).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 0), "inside the backoff");
    let r = sink.deliver(&store, at(31)).await.unwrap();
    assert_eq!((r.delivered, r.failed), (1, 0));
    let r = sink.deliver(&store, at(60)).await.unwrap();
    assert_eq!((r.delivered, r.failed), (0, 0), "once per alert");
    {
        let b = bodies.lock().unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0]["kind"], "writeback_rejected");
        assert_eq!(b[0]["state"], "firing");
        assert_eq!(b[0]["recovered_at"], serde_json::Value::Null);
    }

    // Resolved (the batch skipped): one recovery notice, then nothing.
    store
        .skip_batch(1, "staff:test", "passed on by phone", at(70))
        .await
        .unwrap()
        .unwrap();
    let r = sink.deliver(&store, at(80)).await.unwrap();
    assert_eq!((r.delivered, r.failed), (1, 0));
    assert_eq!(sink.deliver(&store, at(90)).await.unwrap().delivered, 0);
    let b = bodies.lock().unwrap().clone();
    assert_eq!(b.len(), 2);
    assert_eq!(b[1]["state"], "recovered");
    assert_eq!(b[1]["id"], b[0]["id"]);
    assert_eq!(b[1]["recovered_at"], "2026-12-08T17:07:10Z");
    let text = serde_json::to_string(&b).unwrap();
    for canary in ["Cec", "5511", "P-2007", "AG-30007"] {
        assert!(!text.contains(canary), "{canary} in an alert: {text}");
    }
    store.close().await;
}

/// Issue 16: `[alerts]` wires the sink into `medrelay run`: Slack's body, sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pushes_alerts_to_the_configured_slack_webhook_once() {
    let (addr, _got) = ehr_inbound("AE").await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    let (url, bodies) = alert_receiver(0).await;
    // SAFETY: set once, before anything reads it; only this test reads this name.
    unsafe { std::env::set_var("MEDRELAY_TEST_SLACK_ALERT_URL", &url) };
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("[alerts]\nwebhook_url_env = \"MEDRELAY_TEST_SLACK_ALERT_URL\"\nformat = \"slack\"\n\n{text}"),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    for _ in 0..2 {
        let (code, out) =
            common::cli_with_config(config, &["--now", "2026-12-08T17:05:10Z", "run", "--once"])
                .await;
        assert_eq!(code, 0, "{out}");
    }
    let b = bodies.lock().unwrap().clone();
    assert_eq!(b.len(), 1, "{b:?}");
    let line = b[0]["text"].as_str().unwrap();
    assert!(
        line.starts_with("medrelay alert ") && line.contains("`writeback_rejected`"),
        "{line}"
    );
    assert!(!line.contains(&url), "{line}");
    store.close().await;
}

/// Issue 16: `medrelay report` over the scripted run: the tap counts as a confirmation, in every
/// format, with no patient data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_command_counts_the_scripted_confirmation_in_table_csv_and_json() {
    let (addr, _got) = ehr_inbound("AA").await;
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    store.close().await;
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    let period = [
        "report",
        "--from",
        "2026-12-01T00:00:00Z",
        "--to",
        "2026-12-31T00:00:00Z",
    ];
    let run = |extra: &'static [&'static str]| {
        let mut args = period.to_vec();
        args.extend(extra);
        async move { common::cli_with_config(config, &args).await }
    };
    let (code, table) = run(&[]).await;
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("confirmed 1 (confirmation rate "), "{table}");
    let (code, csv) = run(&["--format", "csv"]).await;
    assert_eq!(code, 0, "{csv}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("group"), "all");
    assert_eq!(col("confirmed"), "1");
    let (code, json) = run(&["--by", "site", "--format", "json"]).await;
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["rows"][0]["confirmed"], 1, "{v}");
    for text in [&table, &csv, &json] {
        assert!(!text.contains("Cec") && !text.contains("5511"), "{text}");
    }
    let (code, _) = common::cli_with_config(
        config,
        &[
            "report",
            "--from",
            "2026-12-31T00:00:00Z",
            "--to",
            "2026-12-01T00:00:00Z",
        ],
    )
    .await;
    assert_eq!(code, medrelay::exit::USAGE);
}

/// Issue 16: an EHR interface that stays down. After `writeback_failing_after` (15 min) one
/// `writeback_failing` alert names the target (no patient data), however often it is checked;
/// when the EHR is back and the batch is written, it is resolved once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_target_that_stays_down_alerts_once_and_recovers_when_written() {
    use medrelay_pipeline::store::writeback::BatchState;
    use medrelay_pipeline::watch::{Thresholds, WRITEBACK_FAILING_ALERT, check};
    // A port with nothing listening on it (taken, then let go).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (store, dir) = common::hl7_tap_written_back_to(&addr).await;
    let open = store.writeback_batches(false, 0).await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].state, BatchState::Failing);
    let created = open[0].created_at;
    let t = Thresholds::default();
    let at = |mins: i64| created + jiff::SignedDuration::from_mins(mins);
    let alerts = || async {
        store
            .recent_alerts(50)
            .await
            .unwrap()
            .into_iter()
            .filter(|a| a.kind == WRITEBACK_FAILING_ALERT)
            .collect::<Vec<_>>()
    };
    check(&store, &t, &[], at(5)).await.unwrap();
    assert!(alerts().await.is_empty(), "not before 15 minutes");
    for m in [16, 17, 30] {
        check(&store, &t, &[], at(m)).await.unwrap();
    }
    let fired = alerts().await;
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        fired[0]
            .detail
            .starts_with("target clinica-hl7: 1 write-back batch(es) failing, the oldest for 16m"),
        "{fired:?}"
    );
    for canary in ["Cec", "5511", "P-2007", "AG-30007"] {
        assert!(!fired[0].detail.contains(canary), "{canary}: {fired:?}");
    }
    // The EHR is back on its port; the next write-back pass writes the batch.
    let (_, got) = ehr_inbound_on(&addr, "AA").await;
    let loaded = medrelay::config::load(&dir.path().join("medrelay.toml")).unwrap();
    let clock = Arc::new(medrelay_pipeline::clock::ManualClock::new(at(120)));
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock).unwrap();
    service.writeback.run_once().await.unwrap();
    assert_eq!(got.lock().unwrap().len(), 1, "the SRM was written");
    for _ in 0..2 {
        check(&store, &t, &[], at(121)).await.unwrap();
    }
    let after = alerts().await;
    assert_eq!(after.len(), 1);
    assert!(after[0].resolved_at.is_some(), "resolved: {after:?}");
    store.close().await;
}
