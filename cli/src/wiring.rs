//! Building the running pieces from a loaded configuration: the store, the WhatsApp transport, the
//! service, and the per-connector import and write-back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow};
use jiff::Timestamp;
use medrelay_connector_csv::{CsvReturnFile, FileSummary, ImportOptions, RowReport, RowResult};
use medrelay_mapping::ports::WriteBack;
use medrelay_pipeline::alerts::AlertSink;
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::http::simulator::{SimServer, SimServerConfig};
use medrelay_pipeline::ingest::{
    ImportInfo, ImportMode, ImportSummary, ItemSource, Rejected, SourceItem,
};
use medrelay_pipeline::keys::Keys;
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::{Store, StoreLocation};
use medrelay_pipeline::whatsapp::WhatsAppTransport;
use medrelay_pipeline::whatsapp::cloud::{ApiToken, CloudApiClient, CloudApiConfig};
use medrelay_pipeline::whatsapp::pacing::{Pacer, Pacing};
use medrelay_pipeline::whatsapp::simulator::{SimTemplate, Simulator};
use medrelay_pipeline::whatsapp::webhook::BusinessNumber;
use sha2::{Digest, Sha256};

use crate::Failure;
use crate::config::{CsvConnectorConfig, CsvMode, Loaded, WhatsAppMode};

/// Environment variable holding the installation secret (overrides the key file).
pub const SECRET_ENV: &str = "MEDRELAY_SECRET";

/// Reads the installation secret: `MEDRELAY_SECRET`, else the key file.
pub fn load_secret(loaded: &Loaded) -> anyhow::Result<Vec<u8>> {
    if let Ok(s) = std::env::var(SECRET_ENV)
        && s.len() >= 16
    {
        return Ok(s.into_bytes());
    }
    let file = loaded.resolve(&loaded.config.store.secret_file);
    let bytes = std::fs::read(&file).with_context(|| {
        format!(
            "no installation secret: set {SECRET_ENV} or create {} with `medrelay init`",
            file.display()
        )
    })?;
    let trimmed = String::from_utf8_lossy(&bytes).trim().to_string();
    if trimmed.len() < 32 {
        return Err(anyhow!(
            "{} is too short to be a secret (need 32+ characters)",
            file.display()
        ));
    }
    Ok(trimmed.into_bytes())
}

/// A fresh random secret (hex of 32 random bytes) for `medrelay init` and the demo.
pub fn new_secret() -> String {
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    format!("{}{}", a.simple(), b.simple())
}

/// Opens the store the config names.
pub async fn open_store(loaded: &Loaded) -> anyhow::Result<Store> {
    let secret = load_secret(loaded)?;
    let location = loaded.store_location().map_err(anyhow::Error::msg)?;
    let shown = match &location {
        StoreLocation::Sqlite(path) => path.display().to_string(),
        // The URL may carry a password: name the backend only.
        StoreLocation::Postgres(_) => "on the PostgreSQL server [store] names".to_owned(),
    };
    Store::connect(&location, Keys::from_secret(&secret))
        .await
        .with_context(|| format!("cannot open database {shown}"))
}

/// The simulator's template registry, from the configured templates.
pub fn simulator_registry(loaded: &Loaded) -> BTreeMap<String, SimTemplate> {
    loaded
        .compiled
        .templates
        .values()
        .map(|t| {
            (
                t.name.clone(),
                SimTemplate {
                    languages: t.languages.clone(),
                    body_parameters: t.body.len(),
                    header_parameters: usize::from(t.header.is_some()),
                    buttons: t.buttons.iter().map(|b| b.name()).collect(),
                    ttl_seconds: t.ttl.map(|d| d.as_secs()),
                    parameter_names: t.parameter_names.clone(),
                    header_parameter_name: t.header_parameter_name.clone(),
                    // Configured templates are used as utility messages (`templates check`
                    // compares with what Meta approved).
                    category: "UTILITY".into(),
                },
            )
        })
        .collect()
}

/// The standalone simulator server (`medrelay simulate`) for this configuration: the registry from
/// `[templates]` ([`simulator_registry`]), the patients from `[whatsapp.simulator]`, the business
/// number from `[whatsapp]`, webhooks signed with `app_secret`.
pub fn simulator_server(
    loaded: &Loaded,
    settings: SimServerConfig,
    app_secret: &[u8],
    clock: Arc<dyn Clock>,
) -> SimServer {
    let simulator = Arc::new(Simulator::new(
        loaded.config.whatsapp.simulator.simulator_config(),
        simulator_registry(loaded),
        business_number(loaded),
        app_secret,
        clock,
    ));
    SimServer::new(simulator, settings)
}

/// The business number as webhook metadata names it (simulators and their webhooks).
pub fn business_number(loaded: &Loaded) -> BusinessNumber {
    let wa = &loaded.config.whatsapp;
    BusinessNumber {
        waba_id: wa.waba_id.clone(),
        phone_number_id: wa.phone_number_id.clone(),
        display_phone_number: wa.display_phone_number.clone(),
    }
}

/// Reads a secret from the environment variable `var`, or says which variable is missing, empty
/// or blank (a usage error: configuration, not a runtime failure). Fails closed: an empty secret
/// would authenticate nothing. The value never appears in an error.
pub fn secret_from_env(var: &str, what: &str) -> anyhow::Result<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(Failure::usage(format!(
            "environment variable {var} with {what} is not set (or is empty)"
        ))),
    }
}

/// The webhook app secret: from `whatsapp.webhook.app_secret_env`. Only the in-process simulator,
/// which never listens on a port, may fall back to a fixed secret.
fn app_secret_or_default(loaded: &Loaded) -> String {
    std::env::var(&loaded.config.whatsapp.webhook.app_secret_env)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "simulator-app-secret".into())
}

/// The resolved `[whatsapp.cloud]`, or a usage error saying it is needed.
pub fn cloud_config<'a>(loaded: &'a Loaded, command: &str) -> anyhow::Result<&'a CloudApiConfig> {
    loaded.cloud.as_ref().ok_or_else(|| {
        Failure::usage(format!(
            "{command} needs the Cloud API: set whatsapp.mode = \"cloud\" or add a [whatsapp.cloud] table"
        ))
    })
}

/// The Cloud API client, its token from the variable `token_env` names (never from the file).
pub fn cloud_client(cloud: &CloudApiConfig) -> anyhow::Result<CloudApiClient> {
    let token = secret_from_env(&cloud.token_env, "the WhatsApp access token")?;
    CloudApiClient::new(cloud.clone(), ApiToken::new(token)).map_err(|e| anyhow!(e))
}

/// Builds the service. `simulator` mode: the in-process simulator is the transport and its webhooks
/// are delivered in-process by each tick, unpaced (the demo and the tests walk a simulated clock).
/// `cloud` mode: the real Cloud API client behind a [`Pacer`] for the number's throughput and pair
/// limits; statuses and replies arrive through the webhook endpoint `medrelay run` serves.
pub fn build_service(
    loaded: &Loaded,
    store: Store,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Service> {
    // Replies are written per system (the appointments' source), once: the first connector of the
    // system with a return file is its target.
    let mut targets: Vec<(String, Arc<dyn WriteBack>)> = Vec::new();
    // HL7 and FHIR targets run their network I/O on this runtime from the write-back thread.
    let runtime = || {
        tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow!("HL7 and FHIR write-back need the async runtime"))
    };
    for (system, c) in loaded.write_back_targets() {
        if let Some(rf) = c.return_file() {
            let mut rf = rf.clone();
            rf.dir = loaded.resolve(&rf.dir);
            let target = CsvReturnFile::new(rf)
                .map_err(|e| anyhow!("connector `{}` return_file: {}", c.name(), e.join("; ")))?;
            targets.push((system.to_string(), Arc::new(target)));
        } else if let crate::config::ConnectorConfig::Hl7v2(h) = c
            && let Some(w) = &h.write_back
        {
            targets.push((
                system.to_string(),
                Arc::new(crate::hl7::write_back_target(loaded, h, w, runtime()?)?),
            ));
        } else if let crate::config::ConnectorConfig::Fhir(f) = c
            && let Some(server) = crate::fhir::server(loaded, f)?
        {
            let handle = runtime()?;
            let target = medrelay_connector_fhir::write_back::FhirWriteBack::new(
                server,
                f.identifier_system.clone(),
                handle,
            )
            .with_reschedule_as(f.reschedule_as);
            targets.push((system.to_string(), Arc::new(target)));
        }
    }
    let compiled = Arc::new(loaded.compiled.clone());
    let mut service = service_for_mode(loaded, store, compiled, targets, clock)?;
    if let Some(var) = &loaded.config.alerts.webhook_url_env {
        let url = secret_from_env(var, "the alert webhook URL (alerts.webhook_url_env)")?;
        let a = &loaded.config.alerts;
        service.alert_sink = Some(
            AlertSink::new(
                &url,
                a.format,
                std::time::Duration::from_secs(a.timeout_secs),
            )
            .map_err(|e| Failure::usage(format!("alerts.webhook_url_env: {e}")))?,
        );
    }
    Ok(service)
}

/// The service with the transport of `whatsapp.mode`.
fn service_for_mode(
    loaded: &Loaded,
    store: Store,
    compiled: Arc<medrelay_pipeline::config::Compiled>,
    targets: Vec<(String, Arc<dyn WriteBack>)>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Service> {
    let wa = &loaded.config.whatsapp;
    match wa.mode {
        WhatsAppMode::Simulator => {
            let simulator = Arc::new(Simulator::new(
                wa.simulator.simulator_config(),
                simulator_registry(loaded),
                business_number(loaded),
                app_secret_or_default(loaded).as_bytes(),
                clock.clone(),
            ));
            let transport: Arc<dyn WhatsAppTransport> = simulator.clone();
            Ok(Service::new(
                store,
                compiled,
                transport,
                Some(simulator),
                targets,
                clock,
            ))
        }
        WhatsAppMode::Cloud => {
            let cloud = cloud_config(loaded, "whatsapp.mode = \"cloud\"")?;
            let transport: Arc<dyn WhatsAppTransport> = Arc::new(cloud_client(cloud)?);
            let pacer: Arc<dyn Pacing> = Arc::new(Pacer::new(cloud.pacing_limits()));
            let service =
                Service::new_with_pacer(store, compiled, transport, None, targets, clock, pacer);
            service.instruments.set_throughput_limit(cloud.per_second);
            Ok(service)
        }
    }
}

/// Adapts the CSV reader to the pipeline's item source, writing the row report (bad rows and
/// warnings) as it goes, and leaving the file's summary in `summary` when the rows end.
struct CsvItems {
    rows: medrelay_connector_csv::CsvRows,
    report: Arc<Mutex<Option<RowReport>>>,
    summary: Arc<Mutex<Option<FileSummary>>>,
    file_name: String,
}

impl ItemSource for CsvItems {
    fn next_item(&mut self) -> Option<SourceItem> {
        let Some(row) = self.rows.next() else {
            *self.summary.lock().expect("summary lock") = Some(self.rows.summary());
            return None;
        };
        let warnings = self.rows.take_warnings();
        let mut report = self.report.lock().expect("report lock");
        if let Some(r) = report.as_mut() {
            for w in &warnings {
                r.warn(w);
            }
        }
        match row {
            RowResult::Event(e) => Some(SourceItem::Event(Box::new(e))),
            RowResult::Status(s) => Some(SourceItem::Status(s)),
            RowResult::Bad(bad) => {
                if let Some(r) = report.as_mut() {
                    r.record(&bad);
                }
                Some(SourceItem::Rejected(Rejected {
                    location: format!("{}:{}", self.file_name, bad.line),
                    column: bad.column,
                    reason: bad.reason,
                    raw: bad.raw,
                    filler_id: bad.filler_id,
                }))
            }
        }
    }

    fn position(&self) -> u64 {
        self.rows.bytes_read()
    }
}

/// The result of importing one CSV file.
#[derive(Debug, Clone)]
pub struct CsvImportResult {
    pub file: PathBuf,
    pub summary: ImportSummary,
    pub report: Option<PathBuf>,
    /// What the file's rows added up to (rows without a usable phone, status changes, unknown
    /// code values).
    pub rows: FileSummary,
    /// Imported rows with a warning in the report (a civil time in a daylight-saving gap).
    pub warnings: u64,
}

/// The last component of an input's path, as imports, quarantine and reports name it.
pub fn input_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Hex SHA-256 of bytes (input fingerprints in the imports table).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Imports one CSV file through a connector. `as_of` defaults to the file's modification time.
pub async fn import_csv(
    service: &Service,
    loaded: &Loaded,
    connector: &CsvConnectorConfig,
    file: &Path,
    as_of: Option<Timestamp>,
    progress: impl FnMut(medrelay_pipeline::ingest::Progress),
) -> anyhow::Result<CsvImportResult> {
    let site = &loaded.compiled.sites[&connector.site];
    let profile = &loaded.profiles[&connector.profile];
    let as_of = match as_of {
        Some(t) => t,
        None => std::fs::metadata(file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| Timestamp::try_from(t).ok())
            .unwrap_or_else(Timestamp::now),
    };
    let rows = medrelay_connector_csv::open(
        file,
        profile,
        ImportOptions {
            // Appointments are keyed by the system their ids belong to; the import itself (and its
            // snapshot sweep) by the feed.
            source: connector.system().to_string(),
            site: site.name.clone(),
            site_time_zone: site.time_zone.clone(),
            default_region: site.default_region.clone(),
            as_of,
        },
    )
    .map_err(|e| {
        // An unreadable file is a runtime failure (1); a file that is not the export the profile
        // describes is bad input (3); a profile that does not fit it is configuration (2).
        let message = format!("{}: {e}", file.display());
        if e.is_bad_input() {
            Failure {
                code: crate::exit::PARTIAL,
                message,
            }
            .into()
        } else if e.is_profile_mismatch() {
            Failure::usage(message)
        } else {
            anyhow!(message)
        }
    })?;
    let file_name = input_name(file);
    let report = Arc::new(Mutex::new(Some(RowReport::new(file))));
    let rows_summary = Arc::new(Mutex::new(None));
    let info = ImportInfo {
        source: connector.name.clone(),
        input_name: file_name.clone(),
        input_sha256: sha256_file(file).ok(),
        mode: match connector.mode {
            CsvMode::Delta => ImportMode::Delta,
            CsvMode::Snapshot => ImportMode::Snapshot,
        },
        as_of,
    };
    let horizon = connector
        .snapshot_horizon
        .as_deref()
        .and_then(medrelay_mapping::plan::parse_duration);
    let summary = service
        .ingest
        .import_stream(
            info,
            CsvItems {
                rows,
                report: report.clone(),
                summary: rows_summary.clone(),
                file_name,
            },
            4_000,
            horizon,
            progress,
        )
        .await
        .context("import failed; nothing after the last committed batch was imported")?;
    let rows_summary = rows_summary
        .lock()
        .expect("summary lock")
        .take()
        .unwrap_or_default();
    let report = report.lock().expect("report lock").take();
    let warnings = report.as_ref().map_or(0, RowReport::warnings);
    let report_file = report
        .map(|r| r.finish_with(&rows_summary))
        .transpose()
        .context("cannot write the row report")?
        .flatten();
    Ok(CsvImportResult {
        file: file.to_path_buf(),
        summary,
        report: report_file,
        rows: rows_summary,
        warnings,
    })
}
