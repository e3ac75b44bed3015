//! `medrelay prune`: apply the retention policy now (the service also runs it once a day).

use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use medrelay_pipeline::store::Store;
use medrelay_pipeline::store::retention::PruneReport;

use super::load_config;
use crate::config::Loaded;
use crate::wiring::open_store;
use crate::{Output, exit};

/// Prunes with the configured periods.
pub async fn prune_now(
    store: &Store,
    loaded: &Loaded,
    now: Timestamp,
) -> anyhow::Result<PruneReport> {
    let r = &loaded.config.retention;
    Ok(store
        .prune(
            now,
            SignedDuration::from_hours(24 * i64::from(r.raw_days)),
            SignedDuration::from_hours(24 * i64::from(r.phi_days)),
        )
        .await?)
}

/// Runs `medrelay prune`.
pub async fn run(
    config: &Path,
    clock: std::sync::Arc<dyn medrelay_pipeline::clock::Clock>,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let report = prune_now(&store, &loaded, clock.now()).await?;
    store.close().await;
    if o.json {
        o.json(&serde_json::to_value(report)?);
    } else {
        o.line(format!(
            "pruned: {} quarantined raw rows, {} webhook bodies, {} message bodies, {} free-text replies, {} inbox messages, patient data of {} appointments",
            report.quarantine_raw,
            report.webhook_bodies,
            report.message_bodies,
            report.reply_texts,
            report.conversation_texts,
            report.appointments_scrubbed
        ));
    }
    Ok(exit::OK)
}
