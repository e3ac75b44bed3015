//! `medrelay run`: the service.
//!
//! Each pass: import files dropped in each CSV connector's inbox (then move them to `done/`), plan,
//! send due messages, take replies, write back; repeat until a pass is idle, then wait
//! `service.poll_interval`. SIGINT/SIGTERM stop it between passes: in-flight work is finished, nothing
//! is cut half-way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args;
use jiff::SignedDuration;
use medrelay_pipeline::clock::{Clock, SystemClock};
use medrelay_pipeline::service::Service;
use tracing::{error, info, warn};

use super::load_config;
use crate::config::{ConnectorConfig, Loaded};
use crate::wiring::{build_service, import_csv, open_store};
use crate::{Output, exit};

/// Arguments of `medrelay run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// One pass (import, plan, send, replies, write-back) and exit: for cron-style use and tests.
    #[arg(long)]
    pub once: bool,
}

/// CSV files waiting in a connector's inbox, oldest name first.
fn inbox_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"))
                && !p.to_string_lossy().ends_with(".report.csv")
        })
        .collect();
    files.sort();
    files
}

/// Imports every file waiting in the inboxes; moves each to `done/` once committed.
pub async fn import_inboxes(service: &Service, loaded: &Loaded) -> anyhow::Result<u64> {
    let mut imported = 0;
    for c in &loaded.config.connectors {
        let ConnectorConfig::Csv(c) = c;
        let Some(inbox) = &c.inbox else { continue };
        let inbox = loaded.resolve(inbox);
        for file in inbox_files(&inbox) {
            let result = import_csv(service, loaded, c, &file, None, |_| {}).await;
            let done = inbox.join(if result.is_ok() { "done" } else { "failed" });
            std::fs::create_dir_all(&done)?;
            let name = file.file_name().unwrap_or_default().to_os_string();
            match result {
                Ok(r) => {
                    info!(connector = %c.name, file = ?name, rows = r.summary.rows_ok, rejected = r.summary.rows_bad,
                          cancelled_absent = r.summary.swept, "imported");
                    if let Some(report) = &r.report {
                        let _ = std::fs::rename(
                            report,
                            done.join(report.file_name().unwrap_or_default()),
                        );
                    }
                    imported += 1;
                }
                Err(e) => {
                    error!(connector = %c.name, file = ?name, error = %e, "import failed; file moved to failed/")
                }
            }
            std::fs::rename(&file, done.join(&name))?;
        }
    }
    Ok(imported)
}

/// One full pass, repeated until idle or until `stop` is set (checked between ticks, so in-flight
/// work always finishes).
pub async fn pass(
    service: &Service,
    loaded: &Loaded,
    clock: &dyn Clock,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    import_inboxes(service, loaded).await?;
    // A send interrupted by a crash is retried after 10 minutes unless a status webhook reconciled it.
    service
        .store
        .release_stale_sending(clock.now() - SignedDuration::from_mins(10))
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
    Ok(())
}

async fn shutdown_signal() {
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

/// Runs the service until SIGINT/SIGTERM (or one pass with `--once`).
pub async fn run(config: &Path, args: RunArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let clock = Arc::new(SystemClock);
    let service = build_service(&loaded, store.clone(), clock.clone())?;
    info!(connectors = loaded.config.connectors.len(), whatsapp = ?loaded.config.whatsapp.mode, "medrelay service started");
    let stop = Arc::new(AtomicBool::new(false));
    let woken = Arc::new(tokio::sync::Notify::new());
    {
        let (stop, woken) = (stop.clone(), woken.clone());
        tokio::spawn(async move {
            shutdown_signal().await;
            info!("shutdown requested; finishing the current step");
            stop.store(true, Ordering::SeqCst);
            woken.notify_one();
        });
    }
    let mut last_prune: Option<jiff::Timestamp> = None;
    while !stop.load(Ordering::SeqCst) {
        if last_prune
            .is_none_or(|t| clock.now().duration_since(t) >= SignedDuration::from_hours(24))
        {
            let r = super::prune::prune_now(&store, &loaded, clock.now()).await?;
            info!(?r, "retention applied");
            last_prune = Some(clock.now());
        }
        pass(&service, &loaded, clock.as_ref(), &stop).await?;
        if args.once {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(loaded.poll_interval) => {},
            _ = woken.notified() => {},
        }
    }
    store.close().await;
    info!("medrelay service stopped");
    if !o.json && args.once {
        o.line("pass complete; see `medrelay status`");
    }
    Ok(exit::OK)
}
