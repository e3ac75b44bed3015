//! `medrelay bench webhooks`: signed status webhooks, as WhatsApp delivers them (one status per
//! body: sent, delivered, read), POSTed over N keep-alive connections to the real webhook endpoint
//! (signature check, body limits, commit before the 200) while the real processor applies them.
//!
//! It answers the question operations asks under load: does applying keep up with storing? It
//! reports bodies stored per second while the load runs, how many were applied when the load
//! stopped, and how long the rest took. `--status-run 1` applies one webhook per transaction (the
//! baseline before runs of status webhooks were batched).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::http::webhook::{WebhookState, spawn_processing, webhook_router};
use medrelay_pipeline::inbound::Inbound;
use medrelay_pipeline::store::outbox::JobOutcome;
use medrelay_pipeline::whatsapp::webhook::{BusinessNumber, StatusUpdate, sign, status_webhook};

use crate::wiring::{build_service, import_csv, open_store};
use crate::{Output, exit};

/// Arguments of `medrelay bench webhooks`.
#[derive(Debug, Args)]
pub struct WebhookBenchArgs {
    /// Messages sent beforehand; each gets three status webhooks (sent, delivered, read).
    #[arg(long, default_value_t = 2_000)]
    pub messages: u64,
    /// Concurrent HTTP connections delivering the webhooks (WhatsApp uses several).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Status-only webhooks applied per transaction (the service's default; 1 = one at a time).
    #[arg(long, default_value_t = 64)]
    pub status_run: usize,
}

/// Runs the benchmark.
pub async fn run(args: WebhookBenchArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let config = super::bench::bench_config(super::init::STARTER_CONFIG).await?;
    let (dir, loaded) = super::bench::bench_setup(&config)?;
    let store = open_store(&loaded).await?;
    let clock = Arc::new(ManualClock::new("2026-12-31T00:00:00Z".parse()?));
    let service = build_service(&loaded, store.clone(), clock.clone())?;

    // The messages the statuses are about: appointments imported, planned, and their first
    // `messages` jobs recorded as sent (as the sender does), each with its wamid.
    let file = dir.path().join("bench.csv");
    super::bench::generate(&file, args.messages)?;
    let connector = loaded
        .csv_connector(Some("legacy"))
        .map_err(anyhow::Error::msg)?;
    import_csv(&service, &loaded, connector, &file, None, |_| {}).await?;
    service.scheduler.plan_pending().await?;
    let far = jiff::Timestamp::from_second(4_102_444_800)?; // 2100: every job is due
    let mut wamids = Vec::new();
    while (wamids.len() as u64) < args.messages {
        let want = (args.messages - wamids.len() as u64).min(500) as i64;
        let batch = store.claim_due(far, want).await?;
        if batch.is_empty() {
            break;
        }
        for job in &batch {
            let wamid = format!("wamid.bench.{}", job.id);
            let outcome = JobOutcome::Sent {
                wamid: wamid.clone(),
                body: "{}".into(),
                contact_hash: "bench".into(),
                calling_code: None,
            };
            store.finish_job(job, &outcome, far).await?;
            wamids.push((wamid, job.id));
        }
    }

    let business = BusinessNumber {
        waba_id: "102290129340398".into(),
        phone_number_id: "106540352242922".into(),
        display_phone_number: "15550783881".into(),
    };
    let secret = b"bench-app-secret".as_slice();
    let mut bodies: Vec<(Vec<u8>, String)> = Vec::with_capacity(wamids.len() * 3);
    for (n, status) in ["sent", "delivered", "read"].iter().enumerate() {
        for (wamid, job) in &wamids {
            let update = StatusUpdate {
                wamid: wamid.clone(),
                status: (*status).into(),
                timestamp: 1_798_675_200 + n as i64,
                recipient_id: "15550001111".into(),
                error_code: None,
                callback: Some(format!("job:{job}")),
                pricing: None,
            };
            let body = serde_json::to_vec(&status_webhook(&business, &update))?;
            let signature = sign(secret, &body);
            bodies.push((body, signature));
        }
    }
    let total = bodies.len();

    let inbound = Arc::new(
        Inbound::new(
            store.clone(),
            Arc::new(loaded.compiled.clone()),
            Arc::new(super::run::ReceiveOnly),
            clock.clone(),
        )
        .with_status_run(args.status_run),
    );
    let wh = &loaded.config.whatsapp.webhook;
    let mut state = WebhookState::new(inbound.clone(), secret, "bench-verify");
    state.limits = wh.request_limits();
    let stored = state.stored.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (halt_tx, mut halt) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(medrelay_listener::serve_bounded(
        listener,
        webhook_router(state),
        wh.connection_limits(),
        async move {
            let _ = halt.wait_for(|h| *h).await;
        },
    ));
    let processing_stop = Arc::new(tokio::sync::Notify::new());
    let processor = spawn_processing(
        inbound.clone(),
        stored,
        Duration::from_secs(1),
        processing_stop.clone(),
    );

    let connections = args.connections.max(1);
    let mut shares: Vec<Vec<(Vec<u8>, String)>> = vec![Vec::new(); connections];
    for (i, b) in bodies.into_iter().enumerate() {
        shares[i % connections].push(b);
    }
    let url = format!("http://{addr}/webhook");
    let t = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for share in shares {
        let url = url.clone();
        senders.spawn(async move {
            // One client per connection: each keeps its one connection alive.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut refused = 0u64;
            for (body, signature) in share {
                loop {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hub-signature-256", &signature)
                        .body(body.clone())
                        .send()
                        .await?;
                    if r.status().is_success() {
                        break;
                    }
                    // A 503 (every request slot busy) is retried, as Meta does.
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            anyhow::Ok(refused)
        });
    }
    let mut refused = 0;
    while let Some(done) = senders.join_next().await {
        refused += done??;
    }
    let load_secs = t.elapsed().as_secs_f64();
    let backlog_at_end = store.unprocessed_webhooks().await?.len();
    let applied_at_end = total - backlog_at_end;
    loop {
        let left = store.unprocessed_webhooks().await?.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_secs = t.elapsed().as_secs_f64();
    processing_stop.notify_one();
    let _ = processor.await;
    let _ = halt_tx.send(true);
    let _ = server.await;
    let read = store
        .status_summary(clock.now())
        .await?
        .messages_by_status
        .get("read")
        .copied()
        .unwrap_or(0);
    let result = serde_json::json!({
        "webhooks": total, "connections": connections, "status_run": args.status_run,
        "load_seconds": load_secs, "stored_per_second": total as f64 / load_secs,
        "applied_when_load_stopped": applied_at_end, "drained_seconds": all_secs,
        "applied_per_second": total as f64 / all_secs, "refused_503": refused,
        "messages_read": read, "peak_rss_mib": super::bench::peak_rss_mib(),
    });
    o.line(format!(
        "{total} signed status webhooks over {connections} connections (status run {}): stored in {load_secs:.2} s ({:.0}/s), {applied_at_end} applied when the load stopped, all applied after {all_secs:.2} s ({:.0}/s); {refused} answered 503 and retried; {read} messages read",
        args.status_run,
        total as f64 / load_secs,
        total as f64 / all_secs,
    ));
    if o.json {
        o.json(&result);
    }
    store.close().await;
    anyhow::ensure!(
        read == wamids.len() as i64,
        "{read} of {} messages reached `read`",
        wamids.len()
    );
    Ok(exit::OK)
}
