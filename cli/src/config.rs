//! `medrelay.toml`: loading, path resolution and validation (pure: no network).
//!
//! The one place that knows every connector: [`ConnectorConfig`] is a closed enum, so adding a
//! connector is one crate under `connectors/` plus one variant here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medrelay_connector_csv::{CsvProfile, ReturnFileConfig};
use medrelay_mapping::plan::parse_duration;
use medrelay_pipeline::config::{
    Compiled, ConsentConfig, PipelineConfig, PlanConfig, ReplyTexts, SiteConfig, TemplateConfig,
};
use medrelay_pipeline::whatsapp::simulator::SimulatorConfig;
use serde::Deserialize;

/// Where the database and the installation secret live.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_db")]
    pub path: PathBuf,
    /// Key file (used when `MEDRELAY_SECRET` is not set).
    #[serde(default = "default_key")]
    pub secret_file: PathBuf,
}

fn default_db() -> PathBuf {
    "medrelay.db".into()
}
fn default_key() -> PathBuf {
    "medrelay.key".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: default_db(),
            secret_file: default_key(),
        }
    }
}

/// Service loop settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default = "default_poll")]
    pub poll_interval: String,
    #[serde(default = "default_batch")]
    pub send_batch: i64,
}

fn default_poll() -> String {
    "5s".into()
}
fn default_batch() -> i64 {
    50
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            poll_interval: default_poll(),
            send_batch: default_batch(),
        }
    }
}

/// `[retention]`: how long raw inputs and patient data are kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Raw payloads (quarantined rows, webhook bodies, sent message bodies, free-text replies).
    #[serde(default = "default_raw_days")]
    pub raw_days: u32,
    /// Patient data of appointments that ended this many days ago.
    #[serde(default = "default_phi_days")]
    pub phi_days: u32,
}

fn default_raw_days() -> u32 {
    30
}
fn default_phi_days() -> u32 {
    90
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            raw_days: default_raw_days(),
            phi_days: default_phi_days(),
        }
    }
}

/// Which WhatsApp the service talks to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhatsAppMode {
    /// The built-in simulator (no credentials, no network).
    #[default]
    Simulator,
    /// The real Cloud API.
    Cloud,
}

/// `[whatsapp]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppConfig {
    #[serde(default)]
    pub mode: WhatsAppMode,
    pub waba_id: String,
    pub phone_number_id: String,
    pub display_phone_number: String,
    #[serde(default)]
    pub simulator: SimulatorConfig,
}

/// How a CSV feed relates to what came before.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CsvMode {
    Delta,
    Snapshot,
}

/// A CSV connector.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvConnectorConfig {
    /// The feed's name: how imports, quarantine and the audit trail name it.
    pub name: String,
    /// The scheduling system whose appointment ids this feed carries (default: `name`). Feeds of one
    /// system (say an HL7 interface and the nightly CSV of the same EHR) share appointments: the
    /// same id from both is one appointment, messaged once.
    #[serde(default)]
    pub system: Option<String>,
    /// Configured site the appointments belong to.
    pub site: String,
    /// Name of a profile in `[csv.profiles]` or the profiles file.
    pub profile: String,
    pub mode: CsvMode,
    /// For snapshots covering only the next N days (`14d`): only appointments inside it are swept.
    #[serde(default)]
    pub snapshot_horizon: Option<String>,
    /// Folder `medrelay run` watches for new files.
    #[serde(default)]
    pub inbox: Option<PathBuf>,
    /// Where confirmations go back to the EHR.
    #[serde(default)]
    pub return_file: Option<ReturnFileConfig>,
}

/// Every connector medrelay knows.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConnectorConfig {
    Csv(CsvConnectorConfig),
}

impl CsvConnectorConfig {
    /// The system whose ids the feed carries: the `source` half of every appointment key.
    pub fn system(&self) -> &str {
        self.system.as_deref().unwrap_or(&self.name)
    }
}

impl ConnectorConfig {
    /// The connector's name (the feed).
    pub fn name(&self) -> &str {
        match self {
            ConnectorConfig::Csv(c) => &c.name,
        }
    }

    /// The system whose appointment ids the connector carries (the appointment key's source).
    pub fn system(&self) -> &str {
        match self {
            ConnectorConfig::Csv(c) => c.system(),
        }
    }

    /// Where replies for this connector's appointments go back to the EHR, if anywhere.
    pub fn return_file(&self) -> Option<&ReturnFileConfig> {
        match self {
            ConnectorConfig::Csv(c) => c.return_file.as_ref(),
        }
    }
}

/// `[csv]`: named profiles, inline or from a file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSection {
    #[serde(default)]
    pub profiles_file: Option<PathBuf>,
    #[serde(default)]
    pub profiles: BTreeMap<String, CsvProfile>,
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    pub whatsapp: WhatsAppConfig,
    pub sites: BTreeMap<String, SiteConfig>,
    #[serde(default)]
    pub consent: ConsentConfig,
    pub plan: PlanConfig,
    pub templates: BTreeMap<String, TemplateConfig>,
    #[serde(default)]
    pub reply_texts: ReplyTexts,
    #[serde(default)]
    pub sensitive: medrelay_mapping::policy::SensitivePolicy,
    #[serde(default)]
    pub csv: CsvSection,
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
}

/// A loaded and validated configuration, paths resolved against the config file's folder.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub base: PathBuf,
    pub config: Config,
    pub compiled: Compiled,
    pub profiles: BTreeMap<String, CsvProfile>,
    pub poll_interval: std::time::Duration,
}

/// A configuration problem: every error found, each on its own line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", errors.join("\n  "))]
pub struct ConfigError {
    pub path: String,
    pub errors: Vec<String>,
}

impl Loaded {
    /// Resolves a configured path relative to the config file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// The system a connector name stands for (`legacy` -> `openemr` when it carries OpenEMR ids);
    /// any other name is returned as is (it may already be a system).
    pub fn system_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.config
            .connectors
            .iter()
            .find(|c| c.name() == name)
            .map_or(name, ConnectorConfig::system)
    }

    /// One write-back target per system: the first connector of the system that has a
    /// `return_file`. Feeds of one system share appointments, so each reply must be written once.
    pub fn write_back_targets(&self) -> Vec<(&str, &ConnectorConfig)> {
        let mut out: Vec<(&str, &ConnectorConfig)> = Vec::new();
        for c in &self.config.connectors {
            if c.return_file().is_some() && !out.iter().any(|(s, _)| *s == c.system()) {
                out.push((c.system(), c));
            }
        }
        out
    }

    /// The CSV connector called `name`.
    pub fn csv_connector(&self, name: Option<&str>) -> Result<&CsvConnectorConfig, String> {
        let csv: Vec<&CsvConnectorConfig> = self
            .config
            .connectors
            .iter()
            .map(|ConnectorConfig::Csv(c)| c)
            .collect();
        match name {
            Some(n) => csv
                .into_iter()
                .find(|c| c.name == n)
                .ok_or_else(|| format!("no CSV connector named `{n}` in {}", self.path.display())),
            None if csv.len() == 1 => Ok(csv[0]),
            None => Err(format!(
                "{} CSV connectors are configured; choose one with --connector ({})",
                csv.len(),
                csv.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// Reads, parses and validates `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let err = |errors: Vec<String>| ConfigError {
        path: path.display().to_string(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(vec![format!("cannot read: {e}")]))?;
    load_str(&text, path)
}

/// Parses and validates configuration text as if it were at `path`.
pub fn load_str(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
    let err = |errors: Vec<String>| ConfigError {
        path: path.display().to_string(),
        errors,
    };
    let config: Config = toml::from_str(text).map_err(|e| err(vec![e.to_string()]))?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mut errors = Vec::new();
    let pipeline = PipelineConfig {
        sites: config.sites.clone(),
        consent: config.consent.clone(),
        plan: config.plan.clone(),
        templates: config.templates.clone(),
        reply_texts: config.reply_texts.clone(),
        sensitive: config.sensitive.clone(),
    };
    let compiled = pipeline.compile().map_err(|e| errors.extend(e)).ok();
    let mut profiles = config.csv.profiles.clone();
    if let Some(file) = &config.csv.profiles_file {
        let full = if file.is_absolute() {
            file.clone()
        } else {
            base.join(file)
        };
        match std::fs::read_to_string(&full) {
            Ok(t) => match toml::from_str::<BTreeMap<String, CsvProfile>>(&t) {
                Ok(more) => profiles.extend(more),
                Err(e) => errors.push(format!("csv.profiles_file {}: {e}", full.display())),
            },
            Err(e) => errors.push(format!(
                "csv.profiles_file {}: cannot read: {e}",
                full.display()
            )),
        }
    }
    for (name, p) in &profiles {
        if let Err(e) = p.validate() {
            errors.extend(e.into_iter().map(|e| format!("csv profile `{name}`: {e}")));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for c in &config.connectors {
        if !names.insert(c.name().to_string()) {
            errors.push(format!("connectors: duplicate name `{}`", c.name()));
        }
        let ConnectorConfig::Csv(c) = c;
        if !config.sites.contains_key(&c.site) {
            errors.push(format!("connector `{}`: unknown site `{}`", c.name, c.site));
        }
        if !profiles.contains_key(&c.profile) {
            errors.push(format!(
                "connector `{}`: unknown CSV profile `{}`",
                c.name, c.profile
            ));
        }
        if c.system
            .as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.contains('/'))
        {
            errors.push(format!(
                "connector `{}`: system must be a non-empty name without `/`",
                c.name
            ));
        }
        if let Some(h) = &c.snapshot_horizon
            && parse_duration(h).is_none()
        {
            errors.push(format!(
                "connector `{}`: snapshot_horizon `{h}` is not a duration",
                c.name
            ));
        }
    }
    let poll_interval = parse_duration(&config.service.poll_interval)
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or_else(|| {
            errors.push(format!(
                "service.poll_interval `{}` is not a duration like `5s`",
                config.service.poll_interval
            ));
            std::time::Duration::from_secs(5)
        });
    if config.whatsapp.mode == WhatsAppMode::Cloud {
        errors.push(
            "whatsapp.mode = \"cloud\" is not available in this build yet; use \"simulator\""
                .into(),
        );
    }
    match (compiled, errors.is_empty()) {
        (Some(compiled), true) => Ok(Loaded {
            path: path.to_path_buf(),
            base,
            config,
            compiled,
            profiles,
            poll_interval,
        }),
        _ => Err(err(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/medrelay.toml")
    }

    #[test]
    fn the_sample_config_is_valid() {
        let loaded = load(&sample()).unwrap();
        assert_eq!(loaded.config.connectors.len(), 3);
        assert!(loaded.profiles.contains_key("clinica"));
        assert!(loaded.csv_connector(Some("openemr")).is_ok());
        assert!(loaded.csv_connector(None).is_err());
        // `legacy` carries OpenEMR ids: one system, one write-back target (openemr's).
        assert_eq!(loaded.system_of("legacy"), "openemr");
        let targets: Vec<(&str, &str)> = loaded
            .write_back_targets()
            .into_iter()
            .map(|(s, c)| (s, c.name()))
            .collect();
        assert_eq!(targets, [("openemr", "openemr"), ("clinica", "clinica")]);
    }

    #[test]
    fn unknown_keys_and_every_error_are_reported() {
        let text = std::fs::read_to_string(sample()).unwrap();
        let bad = text.replace("[consent]", "[consent]\nopt_in_requird = false");
        let e = load_str(&bad, &sample()).unwrap_err();
        assert!(e.to_string().contains("opt_in_requird"), "{e}");
        let bad = text
            .replace("site = \"saopaulo\"", "site = \"nowhere\"")
            .replacen("\"local_time\", \"location\"]", "\"diagnosis\"]", 1);
        let e = load_str(&bad, &sample()).unwrap_err();
        assert!(
            e.errors
                .iter()
                .any(|m| m.contains("unknown site `nowhere`")),
            "{e}"
        );
        assert!(
            e.errors.iter().any(|m| m.contains("can never be rendered")),
            "{e}"
        );
    }
}
