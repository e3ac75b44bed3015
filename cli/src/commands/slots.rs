//! `medrelay slots import|list`: the EHR's open slots (the free times a patient who asks for
//! another time may be offered, issue 14), from a CSV connector's "open slots" export or a FHIR
//! connector's server (`Slot?status=free`). Each import is a snapshot: what it no longer lists is
//! taken. Run it after the EHR writes the export, or as often as slots should be fresh.

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use medrelay_connector_csv::slots::read_slots;
use medrelay_connector_fhir::slots::map_slots;
use medrelay_pipeline::clock::Clock;

use super::load_config;
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// `medrelay slots ...`
#[derive(Debug, Subcommand)]
pub enum SlotsCommand {
    /// Apply an open-slots export of a CSV connector (`[connectors.open_slots]`), or without a
    /// file search a FHIR connector's server for free Slots, as a snapshot.
    Import(SlotsImportArgs),
    /// The open slots of a site from now, earliest first (times and practitioners; no patient data).
    List(SlotsListArgs),
}

/// Arguments of `slots import`.
#[derive(Debug, Args)]
pub struct SlotsImportArgs {
    /// The export file (a CSV connector); none: search the FHIR connector's server.
    pub file: Option<PathBuf>,
    /// The connector: a CSV one whose `[connectors.open_slots]` profile reads the file, or a FHIR
    /// one with `[connectors.server]` (needed when there are several).
    #[arg(long)]
    pub connector: Option<String>,
    /// With a FHIR server: how many days ahead to search.
    #[arg(long, default_value_t = 14)]
    pub days: i64,
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
            let (source, slots, bad): (String, _, Vec<String>) = match &a.file {
                Some(path) => {
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
                    let file = read_slots(path, &open_slots.profile, c.system(), &c.site, zone)
                        .map_err(|e| {
                            anyhow::anyhow!("{}: {e}; nothing was applied", path.display())
                        })?;
                    let bad = file
                        .bad
                        .iter()
                        .map(|b| format!("line {}: {}", b.line, b.reason))
                        .collect();
                    (c.system().to_owned(), file.slots, bad)
                }
                None => {
                    let f = loaded
                        .fhir_connector(a.connector.as_deref())
                        .map_err(Failure::usage)?;
                    let Some(server) = crate::fhir::server(&loaded, f)? else {
                        return Err(Failure::usage(format!(
                            "connector `{}` has no [connectors.server] to search (or give an export file)",
                            f.name
                        )));
                    };
                    let until = now + jiff::SignedDuration::from_hours(24 * a.days.clamp(1, 366));
                    let entries = server.free_slots(now, until).await.map_err(|e| {
                        anyhow::anyhow!("connector `{}`: {e}; nothing was applied", f.name)
                    })?;
                    let (slots, issues) = map_slots(&entries, f.system(), &f.site);
                    let bad = issues
                        .iter()
                        .map(|i| format!("{}: {}", i.slot, i.reason))
                        .collect();
                    (f.system().to_owned(), slots, bad)
                }
            };
            for b in &bad {
                o.line(b);
            }
            // An answer with entries but no usable slot is broken, not "no free time left":
            // applied, it would retire every open slot.
            if slots.is_empty() && !bad.is_empty() {
                o.line("nothing could be read: the snapshot was not applied");
                return Ok(exit::PARTIAL);
            }
            let store = open_store(&loaded).await?;
            let report = store.replace_open_slots(&source, &slots, now).await;
            store.close().await;
            let report = report?;
            if o.json {
                o.json(&serde_json::json!({
                    "source": source, "report": report, "bad": bad.len(),
                }));
            } else {
                o.line(format!(
                    "open slots of {source}: {} new, {} listed again, {} no longer open; {} bad row(s)",
                    report.added,
                    report.updated,
                    report.gone,
                    bad.len()
                ));
            }
            Ok(if bad.is_empty() {
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
