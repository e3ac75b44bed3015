//! The `medrelay` command line: wiring, configuration, human output and exit codes.
//!
//! `main.rs` only sets up logging and the runtime and calls [`run`]; everything else is here so that
//! the end-to-end tests can drive the same code in-process.

pub mod commands;
pub mod config;
pub mod fhir;
pub mod hl7;
pub mod logging;
pub mod wiring;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes, documented in README.md.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// A runtime failure (database, file system): nothing was lost, retry after fixing it.
    pub const FAILURE: u8 = 1;
    /// Wrong usage or an invalid configuration.
    pub const USAGE: u8 = 2;
    /// Some input rows were rejected (reported and quarantined); the good rows were imported.
    pub const PARTIAL: u8 = 3;
    /// `audit verify` found a broken chain.
    pub const AUDIT_BROKEN: u8 = 4;
    /// `templates check` / `check --online`: a configured template is missing, not approved, or
    /// differs (parameters, buttons, TTL) in the WhatsApp Business Account; sends would fail.
    pub const TEMPLATES: u8 = 5;
}

/// medrelay: appointment reminders from your EHR to WhatsApp, with consent and audit built in.
///
/// Start with `medrelay demo` (runs the samples end to end on a temporary database), then
/// `medrelay init` to create a configuration of your own.
#[derive(Debug, Parser)]
#[command(name = "medrelay", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "MEDRELAY_CONFIG",
        default_value = "medrelay.toml"
    )]
    pub config: PathBuf,
    /// Machine-readable JSON output (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MEDRELAY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Act as if it were this moment (RFC 3339, e.g. 2026-12-01T08:00:00Z), with time passing from
    /// there: for rehearsals on sample data and for tests. Never set it in production.
    #[arg(long, global = true, value_name = "TIMESTAMP")]
    pub now: Option<jiff::Timestamp>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The clock the commands use: the system clock, or the one `--now` asks for.
    pub fn clock(&self) -> std::sync::Arc<dyn medrelay_pipeline::clock::Clock> {
        match self.now {
            Some(at) => std::sync::Arc::new(medrelay_pipeline::clock::OffsetClock::starting_at(at)),
            None => std::sync::Arc::new(medrelay_pipeline::clock::SystemClock),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a starter configuration, installation secret and database in a folder.
    Init(commands::init::InitArgs),
    /// Validate the configuration and the secrets it needs (`--online`: also the templates).
    Check(commands::check::CheckArgs),
    /// Import input files once (e.g. from a nightly batch job).
    #[command(subcommand)]
    Ingest(commands::ingest::IngestCommand),
    /// Run the service: watch connector inboxes, plan, send, take replies, write back.
    Run(commands::run::RunArgs),
    /// Counts by state, the oldest due message, alerts and recent imports.
    Status,
    /// Show the message timeline of an appointment or a day (PHI masked).
    Plan(commands::explain::PlanArgs),
    /// Explain why each step of an appointment was planned, moved, dropped, sent or skipped.
    Explain(commands::explain::ExplainArgs),
    /// Record or show consent decisions made by staff.
    #[command(subcommand)]
    Consent(commands::consent::ConsentCommand),
    /// Verify or export the keyed, hash-chained audit trail (and write signed checkpoints).
    #[command(subcommand)]
    Audit(commands::audit::AuditCommand),
    /// The KPI report: confirmation, no-show and opt-out rates for appointments in a period.
    Report(commands::report::ReportArgs),
    /// The write-back dead letter: list open batches, show one, retry or skip a refused one.
    #[command(subcommand)]
    Writeback(commands::writeback::WritebackCommand),
    /// The staff inbox: conversations patients opened, answers, take and close.
    #[command(subcommand)]
    Inbox(commands::inbox::InboxCommand),
    /// Console accounts: add, change a password, disable, list.
    #[command(subcommand)]
    Users(commands::inbox::UsersCommand),
    /// The EHR's open slots (free times for self-service rescheduling): import an export, list.
    #[command(subcommand)]
    Slots(commands::slots::SlotsCommand),
    /// Apply the retention policy now: prune raw inputs and old patient data (the audit chain stays).
    Prune,
    /// The database: schema version and pending migrations, or apply them now.
    #[command(subcommand)]
    Db(commands::db::DbCommand),
    /// Run the WhatsApp Cloud API simulator as an HTTP server (rehearsals without a Meta account).
    Simulate(commands::simulate::SimulateArgs),
    /// Check the configured templates against the WhatsApp Business Account.
    #[command(subcommand)]
    Templates(commands::templates::TemplatesCommand),
    /// FHIR connector tools: the JWK Set of a SMART Backend Services key.
    #[command(subcommand)]
    Fhir(commands::fhir::FhirCommand),
    /// Run the bundled samples end to end on a temporary database with the WhatsApp simulator.
    Demo(commands::demo::DemoArgs),
    /// Measure throughput (build with --release for meaningful numbers).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

/// A failure with its exit code and a one-line human message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    /// A usage or configuration failure.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
        .into()
    }
}

/// Where command output goes, and in which form.
pub struct Output<'a> {
    pub out: &'a mut dyn Write,
    pub json: bool,
}

impl Output<'_> {
    /// Writes a line of human output.
    pub fn line(&mut self, s: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", s.as_ref());
    }

    /// Writes a JSON value (one line).
    pub fn json(&mut self, v: &serde_json::Value) {
        let _ = writeln!(self.out, "{v}");
    }
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<u8> {
    let clock = cli.clock();
    let mut o = Output {
        out,
        json: cli.json,
    };
    match cli.command {
        Command::Init(a) => commands::init::run(a, &mut o).await,
        Command::Check(a) => commands::check::run(&cli.config, a, &mut o).await,
        Command::Ingest(c) => commands::ingest::run(&cli.config, clock.clone(), c, &mut o).await,
        Command::Run(a) => commands::run::run(&cli.config, clock.clone(), a, &mut o).await,
        Command::Status => commands::status::run(&cli.config, clock.clone(), &mut o).await,
        Command::Plan(a) => commands::explain::plan(&cli.config, a, &mut o).await,
        Command::Explain(a) => commands::explain::explain(&cli.config, a, &mut o).await,
        Command::Consent(c) => commands::consent::run(&cli.config, clock.clone(), c, &mut o).await,
        Command::Audit(c) => commands::audit::run(&cli.config, clock.clone(), c, &mut o).await,
        Command::Report(a) => commands::report::run(&cli.config, a, &mut o).await,
        Command::Writeback(c) => {
            commands::writeback::run(&cli.config, clock.clone(), c, &mut o).await
        }
        Command::Inbox(c) => {
            commands::inbox::run_inbox(&cli.config, clock.clone(), c, &mut o).await
        }
        Command::Users(c) => {
            commands::inbox::run_users(&cli.config, clock.clone(), c, &mut o).await
        }
        Command::Slots(c) => commands::slots::run(&cli.config, clock.clone(), c, &mut o).await,
        Command::Prune => commands::prune::run(&cli.config, clock.clone(), &mut o).await,
        Command::Db(c) => commands::db::run(&cli.config, c, &mut o).await,
        Command::Simulate(a) => commands::simulate::run(&cli.config, a, &mut o).await,
        Command::Templates(c) => commands::templates::run(&cli.config, c, &mut o).await,
        Command::Fhir(c) => commands::fhir::run(&cli.config, c, &mut o).await,
        Command::Demo(a) => commands::demo::run(a, &mut o).await,
        Command::Bench(c) => commands::bench::run(c, &mut o).await,
    }
}

/// Maps an error to its exit code: configuration errors are usage errors.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    if let Some(f) = e.downcast_ref::<Failure>() {
        return f.code;
    }
    if e.downcast_ref::<config::ConfigError>().is_some() {
        return exit::USAGE;
    }
    exit::FAILURE
}
