//! Pacing measurement: a backlog of messages through `Pacer` + `CloudApiClient` to the simulator server
//! on 127.0.0.1, at 80 and at 1,000 msg/s. Prints, per rate: the most sends in any 1 s window as the
//! client released them and as the server received them, the sustained rate, and any 130429.
//!
//! `cargo bench -p medrelay-pipeline --bench pacing` (release). `PACING_BACKLOG=2000` shortens it;
//! `PACING_RATES=80,1000` picks the rates. Not a test: nothing here asserts on time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medrelay_pipeline::clock::{Clock, SystemClock};
use medrelay_pipeline::http::simulator::{SimServer, SimServerConfig};
use medrelay_pipeline::http::webhook::serve;
use medrelay_pipeline::whatsapp::cloud::{ApiToken, CloudApiClient, CloudApiConfig};
use medrelay_pipeline::whatsapp::pacing::{Pacer, Pacing, PacingLimits, global_quota_parameters};
use medrelay_pipeline::whatsapp::simulator::{SimTemplate, Simulator, SimulatorConfig};
use medrelay_pipeline::whatsapp::webhook::BusinessNumber;
use medrelay_pipeline::whatsapp::{BodyParameter, SendError, TemplateMessage, WhatsAppTransport};

fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut q = VecDeque::new();
    let mut best = 0;
    for &t in times {
        q.push_back(t);
        while q.front().is_some_and(|f| t.duration_since(*f) > window) {
            q.pop_front();
        }
        best = best.max(q.len());
    }
    best
}

async fn run(per_second: u32, backlog: usize, workers: usize) {
    let business = BusinessNumber {
        waba_id: "1".into(),
        phone_number_id: "2".into(),
        display_phone_number: "15550001111".into(),
    };
    let registry = BTreeMap::from([(
        "appt_reminder".to_string(),
        SimTemplate {
            languages: vec!["en_US".into()],
            body_parameters: 1,
            header_parameters: 0,
            buttons: vec![],
            ttl_seconds: None,
            ..Default::default()
        },
    )]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sim = Arc::new(Simulator::new(
        SimulatorConfig::default(),
        registry,
        business,
        b"secret",
        clock,
    ));
    let server = SimServer::new(
        sim,
        SimServerConfig {
            per_second,
            ..SimServerConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = server.router();
    tokio::spawn(async move { serve(listener, router, std::future::pending()).await });
    let mut config = CloudApiConfig::new("2", "1");
    config.base_url = format!("http://{addr}");
    config.per_second = per_second;
    let client = Arc::new(CloudApiClient::new(config, ApiToken::new("t")).unwrap());
    let pacer = Arc::new(Pacer::new(PacingLimits {
        per_second,
        pair_interval: Duration::from_secs(6),
    }));

    let next = Arc::new(AtomicUsize::new(0));
    let released = Arc::new(Mutex::new(Vec::with_capacity(backlog)));
    let throttled = Arc::new(AtomicUsize::new(0));
    let other_errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, released, throttled, other_errors, client, pacer) = (
            next.clone(),
            released.clone(),
            throttled.clone(),
            other_errors.clone(),
            client.clone(),
            pacer.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= backlog {
                    return;
                }
                let body = TemplateMessage {
                    to: format!("1555{i:07}"),
                    template: "appt_reminder".into(),
                    language: "en_US".into(),
                    body: vec![BodyParameter {
                        name: None,
                        text: "x".into(),
                    }],
                    header: None,
                    quick_replies: vec![],
                    callback: format!("job:{i}"),
                }
                .to_json();
                pacer.until_ready().await;
                released.lock().unwrap().push(Instant::now());
                match client.send(&body).await {
                    Ok(_) => {}
                    Err(SendError::Retry {
                        code: Some(130429), ..
                    }) => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        other_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut times = released.lock().unwrap().clone();
    times.sort();
    let span = times[times.len() - 1]
        .duration_since(times[0])
        .as_secs_f64();
    let (burst, rate) = global_quota_parameters(per_second);
    let stats = server.stats();
    println!(
        "limit {per_second}/s (GCRA burst {burst}, rate {rate}/s), {backlog} messages, {workers} workers: \
         elapsed {:.2} s; client max in any 1 s window {}; server max in any 1 s window {}; \
         sustained {:.1} msg/s; 130429 {}; other errors {}; accepted {}",
        elapsed.as_secs_f64(),
        max_in_window(&times, Duration::from_secs(1)),
        stats.max_per_second,
        (times.len() - 1) as f64 / span,
        throttled.load(Ordering::Relaxed),
        other_errors.load(Ordering::Relaxed),
        stats.accepted,
    );
}

fn main() {
    let backlog: usize = std::env::var("PACING_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rates: Vec<u32> = std::env::var("PACING_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![80, 1000]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    for per_second in rates {
        rt.block_on(run(per_second, backlog, 32));
    }
}
