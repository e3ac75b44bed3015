//! `medrelay simulate`: the WhatsApp Cloud API simulator as an HTTP server, so a hospital can
//! rehearse `medrelay run` in cloud mode (real HTTP client, pacing, signed webhooks) without a Meta
//! account. Point `[whatsapp.cloud] base_url` at the printed address and `--callback` at the
//! service's `/webhook`; both sides read the app secret from `whatsapp.webhook.app_secret_env`.
//!
//! The registry comes from `[templates]`, the simulated patients from `[whatsapp.simulator]`, the
//! limits and injected failures from `[whatsapp.simulator.server]` (flags override). When the
//! variable named by `whatsapp.cloud.token_env` is set, requests must carry that token (else 190).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use medrelay_pipeline::clock::{Clock, SystemClock};
use medrelay_pipeline::http::simulator::SimServer;
use medrelay_pipeline::http::webhook::serve;
use medrelay_pipeline::whatsapp::cloud::ApiToken;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info};

use super::load_config;
use super::run::shutdown_signal;
use crate::wiring::{secret_from_env, simulator_server};
use crate::{Output, exit};

/// Arguments of `medrelay simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve the simulated Cloud API on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: SocketAddr,
    /// Where to POST the signed status and reply webhooks (e.g. `http://127.0.0.1:8443/webhook`,
    /// medrelay's endpoint); default `whatsapp.simulator.server.callback_url`. Without one, webhooks
    /// are discarded.
    #[arg(long)]
    pub callback: Option<String>,
    /// Throughput limit of the simulated number (130429 above it); default
    /// `whatsapp.simulator.server.per_second` (80).
    #[arg(long)]
    pub per_second: Option<u32>,
}

/// Runs the simulator until SIGINT/SIGTERM.
pub async fn run(config: &Path, args: SimulateArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let wa = &loaded.config.whatsapp;
    let mut settings = wa.simulator.server.clone();
    if let Some(c) = args.callback {
        settings.callback_url = Some(c);
    }
    if let Some(n) = args.per_second {
        settings.per_second = n.max(1);
    }
    if let Some(url) = &settings.callback_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(crate::Failure::usage(format!(
            "callback `{url}` must be an http(s) URL, like http://127.0.0.1:8443/webhook"
        )));
    }
    // The receiving side verifies signatures with the same variable, so it must be set when webhooks
    // are delivered; without a callback they are discarded and any secret will do.
    let app_secret = match &settings.callback_url {
        Some(_) => secret_from_env(&wa.webhook.app_secret_env, "the Meta app secret")?,
        None => std::env::var(&wa.webhook.app_secret_env)
            .unwrap_or_else(|_| "simulator-app-secret".into()),
    };
    settings.token = loaded
        .cloud
        .as_ref()
        .and_then(|c| std::env::var(&c.token_env).ok())
        .filter(|t| !t.trim().is_empty())
        .map(|t| ApiToken::new(t.trim()));
    let token_required = settings.token.is_some();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = simulator_server(&loaded, settings.clone(), app_secret.as_bytes(), clock);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let stop = Arc::new(Notify::new());
    let pusher = match &settings.callback_url {
        Some(url) => server.spawn_webhook_pusher(url.clone(), stop.clone()),
        None => spawn_discarder(server.clone(), stop.clone()),
    };
    let templates = server.simulator().registry().len();
    if o.json {
        o.json(&serde_json::json!({
            "base_url": base_url,
            "templates": templates,
            "per_second": settings.per_second,
            "pair_interval_secs": settings.pair_interval_secs,
            "callback_url": settings.callback_url,
            "token_required": token_required,
        }));
    } else {
        o.line(format!("WhatsApp Cloud API simulator on {base_url}"));
        o.line(format!(
            "  point medrelay at it: [whatsapp.cloud] base_url = \"{base_url}\""
        ));
        o.line(format!(
            "  {templates} template(s) from [templates]; {}/s throughput, {} s pair interval; token {}",
            settings.per_second,
            settings.pair_interval_secs,
            if token_required {
                "required"
            } else {
                "not checked"
            }
        ));
        match &settings.callback_url {
            Some(url) => o.line(format!(
                "  webhooks: POSTed to {url}, signed with ${}",
                wa.webhook.app_secret_env
            )),
            None => o.line("  webhooks: none delivered (no --callback); they are discarded"),
        }
        o.line("  Ctrl-C to stop");
    }
    let _ = o.out.flush();
    info!(templates, token_required, "simulator listening");
    serve(listener, server.router(), shutdown_signal())
        .await
        .context("simulator server failed")?;
    // notify_one keeps a permit, so the pusher stops even if it is mid-delivery right now.
    stop.notify_one();
    if tokio::time::timeout(Duration::from_secs(5), pusher)
        .await
        .is_err()
    {
        debug!("webhook pusher did not stop in time");
    }
    let s = server.stats();
    info!(
        accepted = s.accepted,
        errors = s.errors,
        throughput_rejections = s.throughput_rejections,
        pair_rejections = s.pair_rejections,
        max_per_second = s.max_per_second,
        webhooks_delivered = s.webhooks_delivered,
        webhooks_dropped = s.webhooks_dropped,
        "simulator stopped"
    );
    if !o.json {
        o.line(format!(
            "stopped: {} accepted, {} errors, {} over the throughput limit, {} over the pair limit, {} webhooks delivered",
            s.accepted, s.errors, s.throughput_rejections, s.pair_rejections, s.webhooks_delivered
        ));
    }
    Ok(exit::OK)
}

/// Without a callback the simulator's webhooks would pile up in memory: drop them every second.
fn spawn_discarder(server: SimServer, stop: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let n = server.simulator().take_webhooks().len();
            if n > 0 {
                debug!(webhooks = n, "no callback URL: webhooks discarded");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.notified() => return,
            }
        }
    })
}
