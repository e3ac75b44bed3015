//! `medrelay demo`: the bundled samples end to end, on a temporary database, with the built-in
//! WhatsApp simulator and a simulated clock that walks through December 2026.
//!
//! It shows the whole loop: CSV exports in two real-world shapes (and a broken one) are imported, the
//! plan is made in each site's zone, reminders go to the simulator, simulated patients tap Confirm or
//! Cancel, and the answers land in each connector's return CSV. A second snapshot of the OpenEMR feed,
//! a day later, moves one appointment and drops another: watch the old reminders being withdrawn. On
//! 1 December the clinic's FHIR server notifies a Consent that opts one CSV patient out and another
//! patient in; on 6 December its HL7 interface reschedules, cancels and protects (SIU with PD1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use jiff::{SignedDuration, Timestamp};
use medrelay_pipeline::clock::{Clock, ManualClock};

use super::ingest::{print_fhir_result, print_hl7_result, print_result};
use super::init::{STARTER_CONFIG, STARTER_PROFILES, write_secret};
use crate::config::load;
use crate::wiring::{build_service, import_csv, open_store};
use crate::{Output, exit};

const OPENEMR: &str = include_str!("../../../samples/csv/openemr_future_appointments.csv");
const CLINICA: &[u8] = include_bytes!("../../../samples/csv/clinica_export_win1252.csv");
const BROKEN: &str = include_str!("../../../samples/csv/broken_export.csv");
const FHIR_NOTIFICATION: &[u8] = include_bytes!("../../../samples/fhir/clinica_notification.json");
const HL7_SIU: &[u8] = include_bytes!("../../../samples/hl7/clinica_siu.hl7");

/// Arguments of `medrelay demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's files in this folder instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The next day's OpenEMR snapshot, derived from the first: appointment 50002 moves from 2 Dec 10:15
/// to 3 Dec 11:00, and 50003 is no longer in the export (so it is treated as cancelled).
pub fn openemr_day_two() -> String {
    OPENEMR
        .lines()
        .filter(|l| !l.contains(",50003,"))
        .map(|l| {
            if l.contains(",50002,") {
                l.replace("12/02/2026 10:15 AM", "12/03/2026 11:00 AM")
                    .replace("12/02/2026 10:45 AM", "12/03/2026 11:30 AM")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

/// Runs the demo.
pub async fn run(args: DemoArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let config_path = write(&dir, "medrelay.toml", STARTER_CONFIG.as_bytes())?;
    write(&dir, "profiles.toml", STARTER_PROFILES.as_bytes())?;
    write_secret(&dir.join("medrelay.key"))?;
    let inputs = dir.join("inputs");
    std::fs::create_dir_all(&inputs)?;
    let openemr = write(
        &inputs,
        "openemr_future_appointments.csv",
        OPENEMR.as_bytes(),
    )?;
    let clinica = write(&inputs, "clinica_export_win1252.csv", CLINICA)?;
    let broken = write(&inputs, "broken_export.csv", BROKEN.as_bytes())?;
    let fhir_notification = write(&inputs, "clinica_notification.json", FHIR_NOTIFICATION)?;
    let hl7_siu = write(&inputs, "clinica_siu.hl7", HL7_SIU)?;
    let day_two = write(
        &inputs,
        "openemr_future_appointments_day2.csv",
        openemr_day_two().as_bytes(),
    )?;

    let loaded = load(&config_path)?;
    let store = open_store(&loaded).await?;
    let start: Timestamp = "2026-11-29T12:00:00Z".parse()?;
    let clock = Arc::new(ManualClock::new(start));
    let service = build_service(&loaded, store.clone(), clock.clone())?;
    o.line(format!("medrelay demo in {}", dir.display()));
    o.line(format!(
        "simulated clock starts at {start}; WhatsApp is the built-in simulator"
    ));
    o.line("");
    o.line("== import");
    for (connector, file) in [
        ("openemr", &openemr),
        ("clinica", &clinica),
        ("legacy", &broken),
    ] {
        let c = loaded
            .csv_connector(Some(connector))
            .map_err(anyhow::Error::msg)?;
        let r = import_csv(&service, &loaded, c, file, Some(clock.now()), |_| {}).await?;
        print_result(o, &r);
    }
    let end: Timestamp = "2026-12-21T00:00:00Z".parse()?;
    let day_two_at: Timestamp = "2026-11-30T12:00:00Z".parse()?;
    let fhir_at: Timestamp = "2026-12-01T13:00:00Z".parse()?;
    let hl7_at: Timestamp = "2026-12-06T13:00:00Z".parse()?;
    let (mut fhir_done, mut hl7_done) = (false, false);
    let mut day_two_done = false;
    let mut ticks = 0u64;
    while clock.now() < end {
        if !day_two_done && clock.now() >= day_two_at {
            o.line("");
            o.line(format!(
                "== {}: the next OpenEMR snapshot arrives",
                clock.now()
            ));
            let c = loaded
                .csv_connector(Some("openemr"))
                .map_err(anyhow::Error::msg)?;
            let r = import_csv(&service, &loaded, c, &day_two, Some(clock.now()), |_| {}).await?;
            print_result(o, &r);
            day_two_done = true;
        }
        if !fhir_done && clock.now() >= fhir_at {
            o.line("");
            o.line(format!(
                "== {}: the clinic's FHIR server notifies (Subscription bundle with Consents)",
                clock.now()
            ));
            let c = loaded
                .fhir_connector(Some("clinica-fhir"))
                .map_err(anyhow::Error::msg)?;
            let r = crate::fhir::import_file(&service, &loaded, c, &fhir_notification, clock.now())
                .await?;
            print_fhir_result(o, &r);
            fhir_done = true;
        }
        if !hl7_done && clock.now() >= hl7_at {
            o.line("");
            o.line(format!(
                "== {}: the clinic's HL7 interface sends SIU messages",
                clock.now()
            ));
            let c = loaded
                .hl7_connector(Some("clinica-hl7"))
                .map_err(anyhow::Error::msg)?;
            let r = crate::hl7::import_file(&service, &loaded, c, &hl7_siu, clock.now()).await?;
            print_hl7_result(o, &r);
            hl7_done = true;
        }
        loop {
            ticks += 1;
            if service
                .tick(loaded.config.service.send_batch)
                .await?
                .is_idle()
            {
                break;
            }
        }
        clock.advance(SignedDuration::from_mins(30));
    }
    o.line("");
    o.line(format!(
        "== walked the clock to {end} ({ticks} service passes)"
    ));
    let s = store.status_summary(clock.now()).await?;
    let fmt = |m: &std::collections::BTreeMap<String, i64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    o.line(format!("appointments: {}", fmt(&s.appointments_by_status)));
    o.line(format!("message steps: {}", fmt(&s.jobs_by_state)));
    o.line(format!("WhatsApp statuses: {}", fmt(&s.messages_by_status)));
    o.line(format!("patient replies: {}", fmt(&s.replies_by_outcome)));
    o.line(format!(
        "quarantined inputs (CSV rows, HL7 messages, FHIR entries): {}",
        s.quarantined
    ));
    if let Some(sim) = &service.simulator {
        let sent = sim.sent();
        o.line(format!(
            "the simulator received {} request bodies; the first one:",
            sent.len()
        ));
        if let Some(first) = sent.first() {
            let mut shown = first.clone();
            shown["to"] = serde_json::json!("<redacted>");
            o.line(serde_json::to_string_pretty(&shown)?);
        }
    }
    o.line("");
    o.line("== write-back (return files for the EHR)");
    let mut returns: Vec<PathBuf> = Vec::new();
    for sub in ["returns/openemr", "returns/clinica", "returns/legacy"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            returns.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    returns.sort();
    for r in &returns {
        o.line(format!("-- {}", r.display()));
        o.line(std::fs::read_to_string(r)?.trim_end());
    }
    o.line("");
    o.line(format!(
        "try: medrelay --config {} explain openemr/50002   (the rescheduled appointment)",
        config_path.display()
    ));
    o.line(format!(
        "     medrelay --config {} explain clinica/AG-30010  (protected by the HL7 feed)",
        config_path.display()
    ));
    store.close().await;
    if args.dir.is_none() {
        o.line("(temporary folder removed; pass --dir DIR to keep it)");
    }
    Ok(exit::OK)
}
