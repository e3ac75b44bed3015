//! `medrelay run`: the service.
//!
//! Each pass: import files dropped in each CSV connector's inbox (then move them to `done/`), plan,
//! send due messages, take replies, write back; repeat until a pass is idle, then wait
//! `service.poll_interval`. SIGINT/SIGTERM stop it between passes: in-flight work is finished, nothing
//! is cut half-way.
//!
//! With `[whatsapp.webhook] listen`, the Cloud API webhook endpoint (`GET`/`POST /webhook`) is served
//! alongside. The endpoint only verifies and **stores** bodies; the service loop is their one
//! processor (each stored body wakes it at once), so two processors never apply the same webhook
//! concurrently. On a signal the endpoint stops accepting, finishes in-flight requests, and the loop
//! finishes its pass. `--once` does not serve the endpoint.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use clap::Args;
use jiff::SignedDuration;
use medrelay_listener::{serve_bounded, serve_bounded_tls};
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::http::console::{ConsoleState, console_router};
use medrelay_pipeline::http::health::{HealthState, WatchedListeners, health_router};
use medrelay_pipeline::http::status_page::{StatusPageState, status_page_router};
use medrelay_pipeline::http::webhook::{WebhookState, webhook_router};
use medrelay_pipeline::inbound::Inbound;
use medrelay_pipeline::inbox::ReengageTemplate;
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::Store;
use medrelay_pipeline::whatsapp::{Accepted, SendError, WhatsAppTransport};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::load_config;
use crate::config::{ConnectorConfig, Loaded, WhatsAppMode};
use crate::wiring::{build_service, import_csv, open_store, secret_from_env};
use crate::{Output, exit};

/// Arguments of `medrelay run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// One pass (import, plan, send, replies, write-back) and exit: for cron-style use and tests.
    #[arg(long)]
    pub once: bool,
}

/// Files waiting in a connector's inbox with one of `extensions`, oldest name first.
fn inbox_files(dir: &Path, extensions: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| {
                    extensions
                        .iter()
                        .any(|x| e.eq_ignore_ascii_case(std::ffi::OsStr::new(x)))
                })
                && !p.to_string_lossy().ends_with(".report.csv")
        })
        .collect();
    files.sort();
    files
}

/// Claims `file` for this instance by moving it into the inbox's `processing/` folder: a rename,
/// so with several instances watching one inbox exactly one gets it (`None`: another did). The
/// claim's time is the file's modification time from then on (see [`reclaim_abandoned`]).
fn claim(inbox: &Path, file: &Path) -> std::io::Result<Option<PathBuf>> {
    let dir = inbox.join("processing");
    std::fs::create_dir_all(&dir)?;
    let to = dir.join(file.file_name().unwrap_or_default());
    match std::fs::rename(file, &to) {
        Ok(()) => {
            let _ = std::fs::File::options()
                .write(true)
                .open(&to)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            Ok(Some(to))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file claimed over an hour ago and still in `processing/` was left by an instance that died
/// mid-import: it goes back to the inbox to be claimed again (importing a file twice is safe:
/// versions and content hashes make the second pass change nothing).
fn reclaim_abandoned(inbox: &Path, extensions: &[&str]) {
    const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
    for file in inbox_files(&inbox.join("processing"), extensions) {
        let old = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if old && std::fs::rename(&file, inbox.join(file.file_name().unwrap_or_default())).is_ok() {
            warn!(file = ?file.file_name(), "an import abandoned in processing/ is queued again");
        }
    }
}

/// Imports every file waiting in the inboxes (CSV exports, HL7 message files); moves each to
/// `done/` once committed, or to `failed/` when it could not be imported at all.
pub async fn import_inboxes(
    service: &Service,
    loaded: &Loaded,
    clock: &dyn Clock,
) -> anyhow::Result<u64> {
    let mut imported = 0;
    for c in &loaded.config.connectors {
        let Some(inbox) = c.inbox() else { continue };
        let inbox = loaded.resolve(inbox);
        let extensions: &[&str] = match c {
            ConnectorConfig::Csv(_) => &["csv"],
            ConnectorConfig::Hl7v2(_) => &["hl7", "txt"],
            ConnectorConfig::Fhir(_) => &["json"],
        };
        reclaim_abandoned(&inbox, extensions);
        for file in inbox_files(&inbox, extensions) {
            let name = file.file_name().unwrap_or_default().to_os_string();
            // With several instances on one inbox, the one whose rename wins imports the file.
            let Some(file) = claim(&inbox, &file)? else {
                continue;
            };
            let (ok, report) = match c {
                ConnectorConfig::Csv(csv) => {
                    match import_csv(service, loaded, csv, &file, None, |_| {}).await {
                        Ok(r) => {
                            info!(connector = %csv.name, file = ?name, rows = r.summary.rows_ok, rejected = r.summary.rows_bad,
                                  cancelled_absent = r.summary.swept, "imported");
                            (true, r.report)
                        }
                        Err(e) => {
                            error!(connector = %csv.name, file = ?name, error = %e, "import failed; file moved to failed/");
                            (false, None)
                        }
                    }
                }
                ConnectorConfig::Fhir(f) => {
                    match crate::fhir::import_file(service, loaded, f, &file, clock.now()).await {
                        Ok(r) => {
                            info!(connector = %f.name, file = ?name, appointments = r.appointments,
                                  rejected = r.rejected.len(), "imported");
                            for bad in &r.rejected {
                                warn!(connector = %f.name, file = ?name, issue = %bad, "FHIR entry quarantined");
                            }
                            (true, None)
                        }
                        Err(e) => {
                            error!(connector = %f.name, file = ?name, error = %e, "import failed; file moved to failed/");
                            (false, None)
                        }
                    }
                }
                ConnectorConfig::Hl7v2(h) => {
                    match crate::hl7::import_file(service, loaded, h, &file, clock.now()).await {
                        Ok(r) => {
                            info!(connector = %h.name, file = ?name, messages = r.summary.rows_ok,
                                  rejected = r.summary.rows_bad, ignored = r.ignored, "imported");
                            for bad in &r.rejected {
                                warn!(connector = %h.name, file = ?name, message = bad.message, line = bad.line,
                                      control_id = %bad.control_id, error = %bad.error, "HL7 message quarantined");
                            }
                            (true, None)
                        }
                        Err(e) => {
                            error!(connector = %h.name, file = ?name, error = %e, "import failed; file moved to failed/");
                            (false, None)
                        }
                    }
                }
            };
            let done = inbox.join(if ok { "done" } else { "failed" });
            std::fs::create_dir_all(&done)?;
            if let Some(report) = &report {
                let _ = std::fs::rename(report, done.join(report.file_name().unwrap_or_default()));
            }
            if ok {
                imported += 1;
            }
            std::fs::rename(&file, done.join(&name))?;
        }
    }
    Ok(imported)
}

/// Searches each FHIR connector's server that has `poll = true`, at most every `poll_every`
/// (`last` remembers when), and any server whose Subscription reported events that never arrived
/// (an open `fhir_subscription_gap`) at once, `poll` or not: the search reads them and resolves
/// the alert. A server that is down is logged and tried again later; it never stops the service.
pub async fn poll_fhir_servers(
    service: &Service,
    loaded: &Loaded,
    clock: &dyn Clock,
    last: &mut std::collections::HashMap<String, jiff::Timestamp>,
) {
    use medrelay_pipeline::store::subscriptions::FHIR_GAP_ALERT;
    // Subscriptions whose event counter showed notifications that never arrived.
    let gaps = service
        .store
        .open_alert_details(FHIR_GAP_ALERT)
        .await
        .unwrap_or_default();
    for c in &loaded.config.connectors {
        let ConnectorConfig::Fhir(f) = c else {
            continue;
        };
        let Some(server) = f.server.as_ref() else {
            continue;
        };
        let since = last.get(&f.name).map(|t| clock.now().duration_since(*t));
        let every = medrelay_mapping::plan::parse_duration(&server.poll_every)
            .unwrap_or(SignedDuration::from_mins(15));
        let scheduled = server.poll && since.is_none_or(|d| d >= every);
        // A gap is recovered by a search of the server at once (at most once a minute while the
        // search fails), with `poll` or without it: the missed events are in the server.
        let prefix = format!("feed {} subscription", f.name);
        let recovering = gaps.iter().any(|d| d.starts_with(&prefix))
            && since.is_none_or(|d| d >= SignedDuration::from_mins(1));
        if !scheduled && !recovering {
            continue;
        }
        if recovering && !scheduled {
            info!(connector = %f.name, "FHIR subscription events missing: searching the server now");
        }
        last.insert(f.name.clone(), clock.now());
        match crate::fhir::poll(service, loaded, f, clock.now()).await {
            Ok(r) => {
                info!(connector = %f.name, appointments = r.appointments, rejected = r.rejected.len(),
                           applied = r.receipt.applied, "FHIR server searched")
            }
            Err(e) => {
                warn!(connector = %f.name, error = %e, "FHIR server search failed; retrying next pass")
            }
        }
    }
}

/// One full pass, repeated until idle or until `stop` is set (checked between ticks, so in-flight
/// work always finishes).
pub async fn pass(
    service: &Service,
    loaded: &Loaded,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    import_inboxes(service, loaded, clock).await?;
    // A send interrupted by a crash is retried after `[service] sending_grace` unless a status
    // webhook reconciled it first.
    service
        .store
        .release_stale_sending(clock.now() - loaded.sending_grace)
        .await?;
    while !stop.load(Ordering::SeqCst) {
        let report = service.tick(loaded.config.service.send_batch).await?;
        if report.send.halted {
            warn!("sending is halted; see `medrelay status` for the alert");
        }
        if report.is_idle() || report.send.halted {
            break;
        }
    }
    // Alerts raised or resolved in this pass (or earlier, if the receiver was down) go out.
    if let Some(sink) = &service.alert_sink {
        let r = sink.deliver(&service.store, clock.now()).await?;
        if r.failed > 0 {
            warn!(
                delivered = r.delivered,
                "the alert webhook did not take every alert; retrying later"
            );
        }
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM (Ctrl-C only elsewhere): what every long-running command stops on.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The transport of the endpoint's [`Inbound`]: it only stores bodies and never answers patients
/// (the service's own `Inbound` does, after processing). Refusing to send makes that structural.
pub(crate) struct ReceiveOnly;

#[async_trait]
impl WhatsAppTransport for ReceiveOnly {
    async fn send(&self, _body: &Value) -> Result<Accepted, SendError> {
        Err(SendError::Retry {
            code: None,
            detail: "the webhook endpoint does not send; the service answers".into(),
        })
    }
}

/// A served endpoint: its bound address and the task serving it.
pub type Endpoint = (std::net::SocketAddr, JoinHandle<std::io::Result<()>>);

/// Binds `[whatsapp.webhook] listen` and serves the endpoint within its configured limits until
/// `halt` turns true. Stored bodies notify `stored` (the service loop's wake-up). With `health`,
/// the same port also serves `GET /healthz` and `GET /readyz` (public by design, no PHI).
pub async fn start_webhook_endpoint(
    loaded: &Loaded,
    store: &Store,
    clock: Arc<dyn Clock>,
    stored: Arc<Notify>,
    mut halt: watch::Receiver<bool>,
    health: Option<HealthState>,
) -> anyhow::Result<Option<Endpoint>> {
    let Some(addr) = loaded.webhook_listen else {
        return Ok(None);
    };
    let wh = &loaded.config.whatsapp.webhook;
    let app_secret = secret_from_env(&wh.app_secret_env, "the Meta app secret")?;
    let verify_token = secret_from_env(&wh.verify_token_env, "the webhook verify token")?;
    let inbound = Arc::new(Inbound::new(
        store.clone(),
        Arc::new(loaded.compiled.clone()),
        Arc::new(ReceiveOnly),
        clock,
    ));
    let mut state = WebhookState::new(inbound, app_secret.as_bytes(), &verify_token);
    state.stored = stored;
    state.limits = wh.request_limits();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (whatsapp.webhook.listen)"))?;
    let local = listener.local_addr()?;
    info!(address = %local, health = health.is_some(), "webhook endpoint listening on /webhook");
    let mut router = webhook_router(state);
    if let Some(h) = health {
        if let Some(i) = &h.instruments {
            router = i.timed(router, "whatsapp_webhook");
        }
        router = router.merge(health_router(h));
    }
    let tls = match &wh.tls {
        Some(files) => Some(loaded.server_tls(files).context("whatsapp.webhook.tls")?),
        None => None,
    };
    let task = tokio::spawn(serve_bounded_tls(
        listener,
        router,
        wh.connection_limits(),
        tls,
        async move {
            let _ = halt.wait_for(|h| *h).await;
        },
    ));
    Ok(Some((local, task)))
}

/// Binds `[status_page] listen` and serves the read-only status page until `halt` turns true.
/// The password comes from `password_env`; unset or empty stops `run` (fail closed).
pub async fn start_status_page(
    loaded: &Loaded,
    health: HealthState,
    mut halt: watch::Receiver<bool>,
) -> anyhow::Result<Option<Endpoint>> {
    let (Some(addr), Some(page)) = (loaded.status_page_listen, &loaded.config.status_page) else {
        return Ok(None);
    };
    let password = secret_from_env(&page.password_env, "the status page password")?;
    let mut state = StatusPageState::new(health, &page.user, &password);
    state.feeds = loaded.feed_watches.clone();
    state.connectors = loaded
        .config
        .connectors
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    state.messaging_limit = loaded.config.whatsapp.messaging_limit;
    state.per_second = (loaded.config.whatsapp.mode == WhatsAppMode::Cloud)
        .then(|| loaded.cloud.as_ref().map(|c| c.per_second))
        .flatten();
    state.rates = loaded.config.costs.clone();
    state.report_days = page.report_days;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (status_page.listen)"))?;
    let local = listener.local_addr()?;
    info!(address = %local, "status page listening on /");
    let task = tokio::spawn(serve_bounded(
        listener,
        status_page_router(state),
        medrelay_listener::ConnectionLimits::default(),
        async move {
            let _ = halt.wait_for(|h| *h).await;
        },
    ));
    Ok(Some((local, task)))
}

/// Binds `[console] listen` and serves the staff console until `halt` turns true.
pub async fn start_console(
    loaded: &Loaded,
    store: &Store,
    clock: Arc<dyn Clock>,
    media: Arc<dyn WhatsAppTransport>,
    mut halt: watch::Receiver<bool>,
) -> anyhow::Result<Option<Endpoint>> {
    let (Some(addr), Some(c)) = (loaded.console_listen, &loaded.config.console) else {
        return Ok(None);
    };
    let mut state = ConsoleState::new(
        store.clone(),
        clock,
        jiff::SignedDuration::from_hours(c.session_hours),
    );
    state.reengage = c.reengage_template.as_ref().map(|name| ReengageTemplate {
        name: name.clone(),
        language: c.reengage_language.clone(),
    });
    state.zones = loaded
        .compiled
        .sites
        .iter()
        .map(|(name, s)| (name.clone(), s.zone.clone()))
        .collect();
    state.secure_cookies = c.secure_cookies;
    state.canned = c.canned.clone();
    state.media = Some(media);
    if let Some(o) = &c.oidc {
        let client_secret = match &o.client_secret_env {
            Some(var) => Some(secret_from_env(
                var,
                "the OIDC client secret (console.oidc.client_secret_env)",
            )?),
            None => None,
        };
        let oidc = medrelay_pipeline::oidc::Oidc::new(medrelay_pipeline::oidc::OidcSettings {
            issuer: o.issuer.clone(),
            client_id: o.client_id.clone(),
            client_secret,
            redirect_url: o.redirect_url.clone(),
            scopes: o.scopes.clone(),
            username_claim: o.username_claim.clone(),
            display_name: o.display_name.clone(),
            timeout: std::time::Duration::from_secs(o.timeout_secs.max(1)),
        })
        .map_err(|e| anyhow::anyhow!("console.oidc: {e}"))?;
        state.oidc = Some(Arc::new(oidc));
    }
    let tls = match &c.tls {
        Some(files) => Some(loaded.server_tls(files).context("console.tls")?),
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (console.listen)"))?;
    let local = listener.local_addr()?;
    info!(address = %local, tls = tls.is_some(), "staff console listening on /");
    let task = tokio::spawn(serve_bounded_tls(
        listener,
        console_router(state),
        medrelay_listener::ConnectionLimits::default(),
        tls,
        async move {
            let _ = halt.wait_for(|h| *h).await;
        },
    ));
    Ok(Some((local, task)))
}

/// Runs the service until SIGINT/SIGTERM (or one pass with `--once`).
pub async fn run(
    config: &Path,
    clock: Arc<dyn Clock>,
    args: RunArgs,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let reload = Arc::new(Notify::new());
    #[cfg(unix)]
    {
        let reload = reload.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                info!("SIGHUP: the configuration will be reloaded after the current step");
                reload.notify_one();
            }
        });
    }
    run_until_with_reload(config, clock, args, o, shutdown_signal(), reload).await
}

/// Runs the service until `shutdown` completes (the signals in [`run`]; a trigger in tests), or one
/// pass with `--once`.
pub async fn run_until(
    config: &Path,
    clock: Arc<dyn Clock>,
    args: RunArgs,
    o: &mut Output<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<u8> {
    run_until_with_reload(config, clock, args, o, shutdown, Arc::new(Notify::new())).await
}

/// The sections a reload cannot change, rendered for comparison: the store, the service loop, the
/// WhatsApp account and transport (but its `messaging_limit` and `on_recategorised`), connectors
/// and their CSV profiles, the status page, the audit folder and the alert sink. Listeners and
/// connections are built from them once.
fn restart_only(c: &crate::config::Config) -> Vec<(&'static str, String)> {
    let mut whatsapp = c.whatsapp.clone();
    whatsapp.messaging_limit = None;
    whatsapp.on_recategorised = Default::default();
    let sink = (
        &c.alerts.webhook_url_env,
        format!("{:?}", c.alerts.format),
        c.alerts.timeout_secs,
    );
    vec![
        ("[store]", format!("{:?}", c.store)),
        ("[service]", format!("{:?}", c.service)),
        ("[whatsapp]", format!("{whatsapp:?}")),
        ("[[connectors]]", format!("{:?}", c.connectors)),
        ("[csv]", format!("{:?}", c.csv)),
        ("[status_page]", format!("{:?}", c.status_page)),
        ("[console]", format!("{:?}", c.console)),
        ("[audit]", format!("{:?}", c.audit)),
        ("[alerts] webhook", format!("{sink:?}")),
    ]
}

/// Reads the configuration file again for a reload: the new configuration when it is valid and
/// changes only what a reload may change (templates, plans, sites, consent, sensitive services,
/// reply texts, alert thresholds and feeds, retention, costs, the messaging limit); else why not.
pub fn reload_config(current: &Loaded) -> Result<Loaded, String> {
    let mut new = crate::config::load(&current.path).map_err(|e| e.to_string())?;
    // The listeners keep the TLS configurations they started with (reloaded in place).
    new.tls_in_use = current.tls_in_use.clone();
    new.smart_clients = current.smart_clients.clone();
    let changed: Vec<&str> = restart_only(&current.config)
        .into_iter()
        .zip(restart_only(&new.config))
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0)
        .collect();
    if !changed.is_empty() {
        return Err(format!(
            "{} changed, which needs a restart",
            changed.join(", ")
        ));
    }
    Ok(new)
}

/// [`run_until`], reloading the configuration file whenever `reload` is notified (SIGHUP in
/// [`run`]): between passes, without dropping a connection; a file that is invalid or changes a
/// restart-only section is refused with a log line and the running configuration stays.
pub async fn run_until_with_reload(
    config: &Path,
    clock: Arc<dyn Clock>,
    args: RunArgs,
    o: &mut Output<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reload: Arc<Notify>,
) -> anyhow::Result<u8> {
    let mut loaded = load_config(config)?;
    // Fail closed before anything starts: every secret the service will use is set and not empty.
    crate::fhir::require_secrets(&loaded, !args.once)?;
    let store = open_store(&loaded).await?;
    let mut service = build_service(&loaded, store.clone(), clock.clone())?;
    // A plan changed since the last run: future appointments are planned again.
    let replanned = store
        .plan_changed(&loaded.compiled.plan_fingerprint(), clock.now())
        .await?;
    if replanned > 0 {
        info!(
            appointments = replanned,
            "the message plan changed since the last run; future appointments are planned again"
        );
    }
    let reload_requested = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let woken = Arc::new(Notify::new());
    let (halt_tx, halt_rx) = watch::channel(false);
    // The listener tasks `/readyz` watches (filled below, once they are started).
    let watched: WatchedListeners = Arc::default();
    let (endpoint, status_page, console) = if args.once {
        if loaded.webhook_listen.is_some() {
            info!("--once: the webhook endpoint is not served");
        }
        (None, None, None)
    } else {
        let metrics_token = match &loaded.config.service.metrics_token_env {
            Some(var) => Some(Arc::from(
                secret_from_env(var, "the /metrics bearer token (service.metrics_token_env)")?
                    .as_str(),
            )),
            None => None,
        };
        let health = HealthState {
            store: store.clone(),
            halt: Some(service.sender.halt_probe()),
            listeners: watched.clone(),
            metrics_token,
            clock: clock.clone(),
            instruments: Some(service.instruments.clone()),
        };
        let status_page = start_status_page(&loaded, health.clone(), halt_rx.clone()).await?;
        let console = start_console(
            &loaded,
            &store,
            clock.clone(),
            service.media_source.clone(),
            halt_rx.clone(),
        )
        .await?;
        let endpoint = start_webhook_endpoint(
            &loaded,
            &store,
            clock.clone(),
            woken.clone(),
            halt_rx,
            Some(health),
        )
        .await?;
        (endpoint, status_page, console)
    };
    // MLLP listeners: each message is committed before its ACK; the loop is woken to plan it.
    let listeners = if args.once {
        Vec::new()
    } else {
        let mut all =
            crate::hl7::start_listeners(&service, &loaded, clock.clone(), woken.clone()).await?;
        all.extend(
            crate::fhir::start_endpoints(&service, &loaded, clock.clone(), woken.clone()).await?,
        );
        watched.lock().expect("listeners lock").extend(
            all.iter()
                .map(|(addr, handle)| (format!("listener {addr}"), handle.abort_handle())),
        );
        all
    };
    if endpoint.is_none() && !args.once && loaded.config.whatsapp.mode == WhatsAppMode::Cloud {
        warn!(
            "no whatsapp.webhook.listen: delivery statuses and patient replies will not reach this service"
        );
    }
    info!(connectors = loaded.config.connectors.len(), whatsapp = ?loaded.config.whatsapp.mode,
          webhook = endpoint.is_some(), "medrelay service started");
    {
        let (stop, woken) = (stop.clone(), woken.clone());
        tokio::spawn(async move {
            shutdown.await;
            info!("shutdown requested; finishing the current step");
            stop.store(true, Ordering::SeqCst);
            woken.notify_one();
        });
    }
    let reloader = {
        let (requested, woken) = (reload_requested.clone(), woken.clone());
        // Certificates are read again at once (a renewal), whatever the service loop is doing.
        let tls = loaded.clone();
        tokio::spawn(async move {
            loop {
                reload.notified().await;
                let (reloaded, failed) = tls.reload_tls();
                if reloaded > 0 {
                    info!(listeners = reloaded, "TLS certificates reloaded");
                }
                for why in failed {
                    error!(%why, "TLS reload refused; the listener keeps its certificate");
                }
                requested.store(true, Ordering::SeqCst);
                woken.notify_one();
            }
        })
    };
    let result = service_loop(
        &mut service,
        &mut loaded,
        clock.as_ref(),
        &stop,
        &woken,
        &reload_requested,
        args.once,
    )
    .await;
    reloader.abort();
    // Stop accepting MLLP connections and FHIR notifications; whatever was not yet acknowledged
    // is sent again by its sender.
    for (_, handle) in &listeners {
        handle.abort();
    }
    // The endpoint stops accepting and finishes in-flight requests before the store closes.
    halt_tx.send_replace(true);
    let mut endpoint_failed = None;
    if let Some((_, handle)) = status_page {
        let _ = handle.await;
    }
    if let Some((_, handle)) = console {
        let _ = handle.await;
    }
    if let Some((_, handle)) = endpoint {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => endpoint_failed = Some(anyhow::Error::from(e)),
            Err(e) => endpoint_failed = Some(anyhow::Error::from(e)),
        }
    }
    // A checkpoint at a clean stop: whatever happens to the database while the service is down
    // (an older copy put back, the trail emptied) shows against it.
    if !args.once {
        match super::audit::write_checkpoint(&store, &loaded, clock.now()).await {
            Ok(path) => info!(checkpoint = %path.display(), "audit checkpoint written"),
            Err(e) => warn!(error = %e, "audit checkpoint not written"),
        }
    }
    store.close().await;
    result?;
    if let Some(e) = endpoint_failed {
        return Err(e.context("the webhook endpoint failed"));
    }
    info!("medrelay service stopped");
    if !o.json && args.once {
        o.line("pass complete; see `medrelay status`");
    }
    Ok(exit::OK)
}

/// The daily audit checkpoint (see `audit::checkpoint_if_due`). A folder that cannot be written is
/// logged and tried again the next day; a trail whose head is missing or altered gets no checkpoint
/// and raises one `audit_broken` alert for staff, resolved by the next checkpoint written.
async fn daily_checkpoint(
    service: &Service,
    loaded: &Loaded,
    clock: &dyn Clock,
) -> anyhow::Result<()> {
    const KEY: &str = "audit trail:";
    match super::audit::checkpoint_if_due(&service.store, loaded, clock.now()).await {
        Ok(Some(path)) => {
            info!(checkpoint = %path.display(), "audit checkpoint written");
            // A checkpoint is only written over a trail whose head verifies: the incident is over.
            if service
                .store
                .resolve_incident("audit_broken", KEY, clock.now())
                .await?
                > 0
            {
                info!("audit trail verifies again (audit_broken resolved)");
            }
        }
        Ok(None) => {}
        Err(e) => {
            warn!(error = %e, "audit checkpoint not written");
            if let Some(medrelay_pipeline::store::StoreError::Inconsistent(why)) = e.downcast_ref()
            {
                service
                    .store
                    .raise_incident("audit_broken", KEY, &format!("{KEY} {why}"), clock.now())
                    .await?;
            }
        }
    }
    Ok(())
}

/// In cloud mode, reads the messaging limit from the Graph API (the phone number object) and
/// stores it for every instance's sender; a token that cannot see it leaves the configured
/// `messaging_limit` in force. Never stops the service.
async fn refresh_messaging_limit(
    client: &medrelay_pipeline::whatsapp::cloud::CloudApiClient,
    service: &Service,
    now: jiff::Timestamp,
) {
    match client.fetch_messaging_limit().await {
        Ok(Some(limit)) => match service
            .store
            .set_messaging_limit(limit, "graph_api", now)
            .await
        {
            Ok(true) => info!(limit = ?limit, "messaging limit read from the Graph API"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "messaging limit not stored"),
        },
        Ok(None) => {
            info!(
                "the Graph API did not state the messaging limit; whatsapp.messaging_limit applies"
            )
        }
        Err(e) => {
            warn!(error = %e, "messaging limit not read from the Graph API; retrying in an hour")
        }
    }
}

/// First wait after a failed service cycle; doubled per failure up to [`MAX_CYCLE_BACKOFF`].
const MIN_CYCLE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest wait between retries of a failing service cycle.
const MAX_CYCLE_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Passes until `stop`, waiting `poll_interval` (or a wake-up: a stored webhook, a signal) between
/// them; retention and an audit checkpoint once a day; the messaging limit from the Graph API
/// once an hour (cloud mode).
async fn service_loop(
    service: &mut Service,
    loaded: &mut Loaded,
    clock: &dyn Clock,
    stop: &AtomicBool,
    woken: &Notify,
    reload: &AtomicBool,
    once: bool,
) -> anyhow::Result<()> {
    let mut last_prune: Option<jiff::Timestamp> = None;
    let mut failing_since: Option<jiff::Timestamp> = None;
    let mut backoff = MIN_CYCLE_BACKOFF;
    let mut last_limit_read: Option<jiff::Timestamp> = None;
    let limit_client = match (&loaded.config.whatsapp.mode, &loaded.cloud) {
        (WhatsAppMode::Cloud, Some(cloud)) => crate::wiring::cloud_client(cloud).ok(),
        _ => None,
    };
    let mut last_fhir_poll = std::collections::HashMap::new();
    // Feeds that never delivered get their grace from here (`[alerts.feeds]`).
    let watching_since = clock.now();
    let feeds: Vec<String> = loaded
        .config
        .connectors
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    while !stop.load(Ordering::SeqCst) {
        if reload.swap(false, Ordering::SeqCst) {
            match reload_config(loaded) {
                Ok(new) => {
                    let replanned = service.reconfigure(Arc::new(new.compiled.clone())).await?;
                    info!(
                        templates = new.compiled.templates.len(),
                        steps = new.compiled.steps.len(),
                        replanned,
                        "configuration reloaded"
                    );
                    *loaded = new;
                }
                Err(why) => {
                    error!(%why, "configuration reload refused; the running configuration stays")
                }
            }
        }
        // A failed cycle (the database gone, a disk error) does not end the service: ingest
        // refuses to acknowledge meanwhile, and the loop retries with backoff until it recovers.
        let cycle = async {
            if last_prune
                .is_none_or(|t| clock.now().duration_since(t) >= SignedDuration::from_hours(24))
            {
                let r = super::prune::prune_now(&service.store, loaded, clock.now()).await?;
                info!(?r, "retention applied");
                last_prune = Some(clock.now());
                daily_checkpoint(service, loaded, clock).await?;
            }
            if let Some(client) = &limit_client
                && last_limit_read
                    .is_none_or(|t| clock.now().duration_since(t) >= SignedDuration::from_hours(1))
            {
                refresh_messaging_limit(client, service, clock.now()).await;
                last_limit_read = Some(clock.now());
            }
            poll_fhir_servers(service, loaded, clock, &mut last_fhir_poll).await;
            pass(service, loaded, clock, stop).await?;
            medrelay_pipeline::silence::check(
                &service.store,
                &loaded.feed_watches,
                watching_since,
                clock.now(),
            )
            .await?;
            medrelay_pipeline::watch::check(
                &service.store,
                &loaded.thresholds,
                &feeds,
                clock.now(),
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        match cycle {
            Ok(()) => {
                if failing_since.take().is_some() {
                    info!("service cycle recovered");
                }
                backoff = MIN_CYCLE_BACKOFF;
            }
            Err(e) if once => return Err(e),
            Err(e) => {
                failing_since.get_or_insert(clock.now());
                error!(error = %e, retry_in_s = backoff.as_secs(), "service cycle failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = woken.notified() => {},
                }
                backoff = (backoff * 2).min(MAX_CYCLE_BACKOFF);
                continue;
            }
        }
        if once {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(loaded.poll_interval) => {},
            _ = woken.notified() => {},
        }
    }
    Ok(())
}
