//! `medrelay status`: the service at a glance.

use std::path::Path;

use super::load_config;
use crate::wiring::open_store;
use crate::{Output, exit};

fn counts(map: &std::collections::BTreeMap<String, i64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints counts by state, the oldest due job, alerts, recent imports.
pub async fn run(
    config: &Path,
    clock: std::sync::Arc<dyn medrelay_pipeline::clock::Clock>,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let s = store.status_summary(clock.now()).await?;
    store.close().await;
    if o.json {
        o.json(&serde_json::to_value(&s)?);
        return Ok(exit::OK);
    }
    o.line(format!(
        "appointments: {}",
        counts(&s.appointments_by_status)
    ));
    o.line(format!("message steps: {}", counts(&s.jobs_by_state)));
    o.line(format!("messages: {}", counts(&s.messages_by_status)));
    o.line(format!("replies: {}", counts(&s.replies_by_outcome)));
    o.line(format!(
        "oldest due step: {}",
        s.oldest_due_pending
            .map_or("none".to_string(), |t| t.to_string())
    ));
    o.line(format!("quarantined inputs: {}", s.quarantined));
    o.line(format!(
        "replies waiting for write-back: {}",
        s.writeback_pending
    ));
    if s.open_alerts.is_empty() {
        o.line("alerts: none");
    } else {
        o.line("alerts:");
        for (at, kind, detail) in &s.open_alerts {
            o.line(format!("  {at} {kind}: {detail}"));
        }
    }
    if !s.last_imports.is_empty() {
        o.line("recent imports:");
        for i in &s.last_imports {
            o.line(format!(
                "  #{} {} {} ({}): {} ok, {} rejected, {} applied, {} cancelled as absent",
                i.id,
                i.source,
                i.input_name,
                i.mode,
                i.rows_ok,
                i.rows_bad,
                i.rows_applied,
                i.swept
            ));
        }
    }
    Ok(exit::OK)
}
