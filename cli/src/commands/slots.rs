//! `medrelay slots import|list`: the EHR's open slots (the free times a patient who asks for
//! another time may be offered, issue 14), from a CSV connector's "open slots" export. Each
//! import is a snapshot: what it no longer lists is taken. Run it after the EHR writes the export
//! (the same job that drops the nightly appointment export).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use medrelay_connector_csv::slots::read_slots;
use medrelay_pipeline::clock::Clock;

use super::load_config;
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// `medrelay slots ...`
#[derive(Debug, Subcommand)]
pub enum SlotsCommand {
    /// Apply an open-slots export of a CSV connector (`[connectors.open_slots]`) as a snapshot.
    Import(SlotsImportArgs),
    /// The open slots of a site from now, earliest first (times and practitioners; no patient data).
    List(SlotsListArgs),
}

/// Arguments of `slots import`.
#[derive(Debug, Args)]
pub struct SlotsImportArgs {
    /// The export file.
    pub file: PathBuf,
    /// The CSV connector whose `[connectors.open_slots]` profile reads it (when there are several).
    #[arg(long)]
    pub connector: Option<String>,
}

/// Arguments of `slots list`.
#[derive(Debug, Args)]
pub struct SlotsListArgs {
    #[arg(long)]
    pub site: String,
    /// How many days ahead.
    #[arg(long, default_value_t = 14)]
    pub days: i64,
}

/// Runs `medrelay slots`.
pub async fn run(
    config: &Path,
    clock: Arc<dyn Clock>,
    command: SlotsCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let now = clock.now();
    match command {
        SlotsCommand::Import(a) => {
            let c = loaded
                .csv_connector(a.connector.as_deref())
                .map_err(Failure::usage)?;
            let Some(open_slots) = &c.open_slots else {
                return Err(Failure::usage(format!(
                    "connector `{}` has no [connectors.open_slots] profile",
                    c.name
                )));
            };
            let zone = &loaded.compiled.sites[&c.site].zone;
            let file = read_slots(&a.file, &open_slots.profile, c.system(), &c.site, zone)
                .map_err(|e| anyhow::anyhow!("{}: {e}; nothing was applied", a.file.display()))?;
            for b in &file.bad {
                o.line(format!("line {}: {}", b.line, b.reason));
            }
            // A file with rows but no readable slot is a broken export, not "no free time left":
            // applied, it would retire every open slot.
            if file.slots.is_empty() && !file.bad.is_empty() {
                o.line("no row could be read: the snapshot was not applied");
                return Ok(exit::PARTIAL);
            }
            let store = open_store(&loaded).await?;
            let report = store.replace_open_slots(c.system(), &file.slots, now).await;
            store.close().await;
            let report = report?;
            if o.json {
                o.json(&serde_json::json!({
                    "connector": c.name, "report": report, "bad_rows": file.bad.len(),
                }));
            } else {
                o.line(format!(
                    "open slots of {} ({}): {} new, {} listed again, {} no longer open; {} bad row(s)",
                    c.name,
                    c.system(),
                    report.added,
                    report.updated,
                    report.gone,
                    file.bad.len()
                ));
            }
            Ok(if file.bad.is_empty() {
                exit::OK
            } else {
                exit::PARTIAL
            })
        }
        SlotsCommand::List(a) => {
            let Some(site) = loaded.compiled.sites.get(&a.site) else {
                return Err(Failure::usage(format!("unknown site `{}`", a.site)));
            };
            let store = open_store(&loaded).await?;
            let until = now + jiff::SignedDuration::from_hours(24 * a.days.clamp(1, 366));
            let slots = store.open_slots(&a.site, now, until, now).await;
            store.close().await;
            let slots = slots?;
            if o.json {
                let rows: Vec<serde_json::Value> = slots
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.id, "source": s.slot.source, "slot_id": s.slot.slot_id,
                            "start": s.slot.start, "end": s.slot.end,
                            "practitioner": s.slot.practitioner, "location": s.slot.location,
                            "state": s.state,
                        })
                    })
                    .collect();
                o.json(&serde_json::json!({"site": a.site, "slots": rows}));
            } else {
                o.line(format!("{} open slot(s) at {}", slots.len(), a.site));
                for s in &slots {
                    o.line(format!(
                        "  {}  {} min  {}  {}",
                        s.slot
                            .start
                            .to_zoned(site.zone.clone())
                            .strftime("%a %Y-%m-%d %H:%M"),
                        (s.slot.end - s.slot.start).get_minutes(),
                        s.slot.practitioner.as_deref().unwrap_or("-"),
                        s.slot.slot_id
                    ));
                }
            }
            Ok(exit::OK)
        }
    }
}
