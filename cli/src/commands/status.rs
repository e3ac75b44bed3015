//! `medrelay status`: the service at a glance.

use std::path::Path;

use medrelay_pipeline::store::status::{ImportLine, ImportState};

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

/// The line under an import that has not finished: still running, or incomplete (its process
/// was killed or it failed) with what to do. `None` for a finished import.
fn progress_note(i: &ImportLine) -> Option<String> {
    let p = &i.progress;
    let batches = match p.batches {
        1 => "1 committed batch".to_string(),
        n => format!("{n} committed batches"),
    };
    let last = p
        .last_commit_at
        .or(p.started_at)
        .map_or_else(|| "-".to_string(), |t| t.to_string());
    match p.state {
        ImportState::Finished => None,
        ImportState::Running => Some(format!(
            "running: not finished yet, {batches} so far (the last at {last}); the counts are those batches"
        )),
        ImportState::Incomplete => Some(format!(
            "INCOMPLETE: never finished, nothing committed since {last} (its process was stopped or the import failed); the counts are its {batches}; import the file again to finish it (re-imports are idempotent; a FHIR server search is repeated by the next poll){}",
            if i.mode == "snapshot" {
                "; absent appointments were not cancelled"
            } else {
                ""
            }
        )),
    }
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
    let d = &s.quarantine_dropped;
    if d.messages > 0 {
        o.line(format!(
            "not kept (quarantine quota): {} messages, {} bytes",
            d.messages, d.bytes
        ));
        for (feed, source, messages, bytes) in &d.recent {
            let from = if source == "*" { "all sources" } else { source };
            o.line(format!(
                "  {feed} from {from}: {messages} messages, {bytes} bytes"
            ));
        }
    }
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
                "  #{} {} {} ({}): {} ok, {} rejected, {} applied, {} older ignored, {} cancelled as absent",
                i.id,
                i.source,
                i.input_name,
                i.mode,
                i.rows_ok,
                i.rows_bad,
                i.rows_applied,
                i.rows_older,
                i.swept
            ));
            if let Some(note) = progress_note(i) {
                o.line(format!("    {note}"));
            }
        }
    }
    if s.ignored_events.is_empty() {
        o.line("ignored events: none");
    } else {
        o.line(format!(
            "ignored events (older than the stored version, or for an appointment not on record): {}",
            counts(&s.ignored_events)
        ));
        for i in &s.recent_ignored {
            o.line(format!(
                "  {} {} {}: {} ({}) {}, stored {} from {}",
                i.received_at,
                i.feed,
                i.appointment,
                i.status,
                i.raw_ref,
                if i.reason == "older" {
                    "older, ignored"
                } else {
                    "not on record, ignored"
                },
                i.stored_status.as_deref().unwrap_or("nothing"),
                i.stored_version_at
                    .map_or("-".to_string(), |t| t.to_string()),
            ));
        }
    }
    Ok(exit::OK)
}
