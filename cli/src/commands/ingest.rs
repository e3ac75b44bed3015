//! `medrelay ingest csv FILE...` and `medrelay ingest hl7 FILE...`: one-shot imports, for nightly
//! batch jobs and for replaying HL7 message files an interface engine wrote.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use jiff::Timestamp;
use medrelay_pipeline::clock::Clock;

use super::load_config;
use crate::wiring::{CsvImportResult, build_service, import_csv, open_store};
use crate::{Failure, Output, exit};

/// `medrelay ingest ...`
#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Import CSV exports through a CSV connector.
    Csv(CsvArgs),
    /// Import files of HL7v2 SIU messages through an HL7v2 connector (newline-separated, MLLP-framed
    /// or FHS/BHS batch files). Rejected messages are quarantined and listed with their AE/AR reason.
    Hl7(Hl7Args),
    /// Import FHIR Bundles (searchset, collection, transaction or Subscription notification JSON)
    /// through a FHIR connector, or search its server with `--server`. Entries that cannot be read
    /// are quarantined and listed with their OperationOutcome issue.
    Fhir(FhirArgs),
}

/// Arguments of `medrelay ingest fhir`.
#[derive(Debug, Args)]
pub struct FhirArgs {
    /// The FHIR connector (required when several are configured).
    #[arg(long)]
    pub connector: Option<String>,
    /// Search the connector's `[server]` for appointments in its window instead of reading files.
    #[arg(long)]
    pub server: bool,
    /// Bundle files to import, in order.
    #[arg(required_unless_present = "server")]
    pub files: Vec<PathBuf>,
}

/// The lines that say what was ignored and why: an event older than the stored appointment is
/// "older, ignored", never folded into "unchanged" (a cancellation among them raised an alert).
pub fn ignored_lines(o: &mut Output<'_>, older: u64, unknown: u64) {
    if older > 0 {
        o.line(format!(
            "  {older} older, ignored: older than the stored version of their appointment (`medrelay status` lists them; an ignored cancellation raised an alert)"
        ));
    }
    if unknown > 0 {
        o.line(format!(
            "  {unknown} status change(s) for appointments not on record, ignored (nothing to change)"
        ));
    }
}

/// Prints one FHIR import's result.
pub fn print_fhir_result(o: &mut Output<'_>, r: &crate::fhir::FhirImportResult) {
    if o.json {
        o.json(&serde_json::json!({
            "input": r.origin, "appointments": r.appointments, "applied": r.receipt.applied,
            "unchanged": r.receipt.unchanged, "older_ignored": r.receipt.older_ignored,
            "unknown_ignored": r.receipt.unknown_ignored, "rejected": r.rejected,
        }));
        return;
    }
    o.line(format!(
        "{}: {} appointments imported ({} new or changed, {} unchanged), {} entries rejected",
        r.origin,
        r.appointments,
        r.receipt.applied,
        r.receipt.unchanged,
        r.rejected.len()
    ));
    ignored_lines(o, r.receipt.older_ignored, r.receipt.unknown_ignored);
    for bad in &r.rejected {
        o.line(format!("  {bad}"));
    }
}

/// `medrelay ingest fhir`: imports, plans, and returns 3 if any entry was rejected.
async fn run_fhir(
    config: &Path,
    clock: Arc<dyn Clock>,
    args: FhirArgs,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let connector = loaded
        .fhir_connector(args.connector.as_deref())
        .map_err(Failure::usage)?
        .clone();
    let store = open_store(&loaded).await?;
    let service = build_service(&loaded, store.clone(), clock.clone())?;
    let mut results = Vec::new();
    if args.server {
        results.push(crate::fhir::poll(&service, &loaded, &connector, clock.now()).await?);
    }
    for file in &args.files {
        if !file.is_file() {
            return Err(Failure::usage(format!("{}: no such file", file.display())));
        }
        results.push(
            crate::fhir::import_file(&service, &loaded, &connector, file, clock.now()).await?,
        );
    }
    let any_bad = results.iter().any(|r| !r.rejected.is_empty());
    for r in &results {
        print_fhir_result(o, r);
    }
    plan_and_close(&service, store, o, any_bad).await
}

/// The end of every import command: plan what changed, close the store, and exit 3 when some
/// input was rejected.
async fn plan_and_close(
    service: &medrelay_pipeline::service::Service,
    store: medrelay_pipeline::store::Store,
    o: &mut Output<'_>,
    any_bad: bool,
) -> anyhow::Result<u8> {
    let plan = service.scheduler.plan_pending().await?;
    if !o.json {
        o.line(format!(
            "planned messages for {} appointment(s)",
            plan.appointments
        ));
    }
    store.close().await;
    Ok(if any_bad { exit::PARTIAL } else { exit::OK })
}

/// Arguments of `medrelay ingest hl7`.
#[derive(Debug, Args)]
pub struct Hl7Args {
    /// The HL7v2 connector (required when several are configured).
    #[arg(long)]
    pub connector: Option<String>,
    /// Files to import, in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Prints one HL7 file's result.
pub fn print_hl7_result(o: &mut Output<'_>, r: &crate::hl7::Hl7ImportResult) {
    let s = &r.summary;
    if o.json {
        o.json(&serde_json::json!({
            "file": r.file, "import_id": s.import_id, "messages_ok": s.rows_ok,
            "messages_rejected": s.rows_bad, "ignored": r.ignored, "applied": s.applied,
            "unchanged": s.unchanged, "older_ignored": s.older_ignored,
            "unknown_ignored": s.unknown_ignored, "rejected": r.rejected,
        }));
        return;
    }
    o.line(format!(
        "{}: {} messages imported ({} new or changed, {} unchanged), {} ignored, {} rejected",
        r.file.display(),
        s.rows_ok,
        s.applied,
        s.unchanged,
        r.ignored,
        s.rows_bad
    ));
    ignored_lines(o, s.older_ignored, s.unknown_ignored);
    for bad in &r.rejected {
        o.line(format!(
            "  message {} (line {}, MSH-10 {}): {} {}",
            bad.message, bad.line, bad.control_id, bad.ack_code, bad.error
        ));
    }
}

/// `medrelay ingest hl7`: imports the files, plans, and returns 3 if any message was rejected.
async fn run_hl7(
    config: &Path,
    clock: Arc<dyn Clock>,
    args: Hl7Args,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let connector = loaded
        .hl7_connector(args.connector.as_deref())
        .map_err(Failure::usage)?
        .clone();
    let store = open_store(&loaded).await?;
    let service = build_service(&loaded, store.clone(), clock.clone())?;
    let mut any_bad = false;
    for file in &args.files {
        if !file.is_file() {
            return Err(Failure::usage(format!("{}: no such file", file.display())));
        }
        let r = crate::hl7::import_file(&service, &loaded, &connector, file, clock.now()).await?;
        any_bad |= r.summary.rows_bad > 0;
        print_hl7_result(o, &r);
    }
    plan_and_close(&service, store, o, any_bad).await
}

/// Arguments of `medrelay ingest csv`.
#[derive(Debug, Args)]
pub struct CsvArgs {
    /// The CSV connector (required when several are configured).
    #[arg(long)]
    pub connector: Option<String>,
    /// The moment the export describes (RFC 3339); defaults to each file's modification time.
    #[arg(long)]
    pub as_of: Option<Timestamp>,
    /// Files to import, in order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Prints one file's result.
pub fn print_result(o: &mut Output<'_>, r: &CsvImportResult) {
    let s = &r.summary;
    if o.json {
        o.json(&serde_json::json!({
            "file": r.file, "import_id": s.import_id, "rows_ok": s.rows_ok, "rows_bad": s.rows_bad,
            "applied": s.applied, "unchanged": s.unchanged, "older_ignored": s.older_ignored,
            "unknown_ignored": s.unknown_ignored, "cancelled_absent": s.swept,
            "sweep_note": s.sweep_note, "report": r.report,
            "status_changes": r.rows.status_changes, "rows_without_phone": r.rows.without_phone,
            "warnings": r.warnings,
        }));
        return;
    }
    o.line(format!(
        "{}: {} rows imported ({} new or changed, {} unchanged), {} rejected",
        r.file.display(),
        s.rows_ok,
        s.applied,
        s.unchanged,
        s.rows_bad
    ));
    csv_row_lines(o, r);
    ignored_lines(o, s.older_ignored, s.unknown_ignored);
    if s.swept > 0 {
        o.line(format!(
            "  {} appointment(s) absent from this snapshot were cancelled",
            s.swept
        ));
    }
    if let Some(note) = &s.sweep_note {
        o.line(format!("  note: {note}"));
    }
    if let Some(report) = &r.report {
        o.line(format!(
            "  rejected rows, warnings and a summary per column are listed in {}",
            report.display()
        ));
    }
}

/// What the rows of a CSV file add up to, said at import rather than found later with `explain`:
/// status changes, rows nobody can be messaged about, and rows imported with a warning.
fn csv_row_lines(o: &mut Output<'_>, r: &CsvImportResult) {
    let rows = &r.rows;
    if rows.status_changes > 0 {
        o.line(format!(
            "  {} row(s) without a start were status changes (cancellations, no-shows)",
            rows.status_changes
        ));
    }
    if rows.without_phone > 0 {
        let why = if rows.phone_columns == 0 {
            "the profile maps no phone column (columns.mobile_phone / columns.phones)"
        } else {
            "the phone is empty or not a valid number; `medrelay explain` gives each reason"
        };
        o.line(format!(
            "  {} row(s) without a usable phone: nothing will be sent for them ({why})",
            rows.without_phone
        ));
    }
    if r.warnings > 0 {
        o.line(format!(
            "  {} row(s) imported with a warning (a local time in a daylight-saving gap)",
            r.warnings
        ));
    }
}

/// Progress: a bar on a terminal, nothing otherwise (the summary line has the counts).
pub fn progress_bar(file: &Path, json: bool) -> ProgressBar {
    let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(
        file.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
    );
    bar
}

/// Imports the files, plans messages for what changed, and returns 3 if any row was rejected.
pub async fn run(
    config: &Path,
    clock: Arc<dyn Clock>,
    command: IngestCommand,
    o: &mut Output<'_>,
) -> anyhow::Result<u8> {
    let args = match command {
        IngestCommand::Csv(args) => args,
        IngestCommand::Hl7(args) => return run_hl7(config, clock, args, o).await,
        IngestCommand::Fhir(args) => return run_fhir(config, clock, args, o).await,
    };
    let loaded = load_config(config)?;
    let connector = loaded
        .csv_connector(args.connector.as_deref())
        .map_err(Failure::usage)?
        .clone();
    let store = open_store(&loaded).await?;
    let service = build_service(&loaded, store.clone(), clock)?;
    let mut any_bad = false;
    for file in &args.files {
        if !file.is_file() {
            return Err(Failure::usage(format!("{}: no such file", file.display())));
        }
        let bar = progress_bar(file, o.json);
        // Without a terminal (cron, CI), plain counts every 100,000 rows on stderr instead of a bar.
        let plain = bar.is_hidden() && !o.json;
        let mut next_report = 100_000;
        let result = import_csv(&service, &loaded, &connector, file, args.as_of, |p| {
            bar.set_position(p.position);
            if plain && p.rows + p.bad >= next_report {
                eprintln!(
                    "{}: {} rows read, {} rejected",
                    file.display(),
                    p.rows + p.bad,
                    p.bad
                );
                next_report += 100_000;
            }
        })
        .await?;
        bar.finish_and_clear();
        any_bad |= result.summary.rows_bad > 0;
        print_result(o, &result);
    }
    plan_and_close(&service, store, o, any_bad).await
}
