//! `medrelay.toml`: loading, path resolution and validation (pure: no network).
//!
//! The one place that knows every connector: [`ConnectorConfig`] is a closed enum, so adding a
//! connector is one crate under `connectors/` plus one variant here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use medrelay_connector_csv::{CsvProfile, ReturnFileConfig};
use medrelay_listener::tls::{ClientTls, ClientTlsFiles, ServerTlsFiles, TlsError};
use medrelay_listener::{ConnectionLimits, RequestLimits, ServerTls};
use medrelay_mapping::plan::parse_duration;
use medrelay_pipeline::config::{
    Compiled, ConsentConfig, PipelineConfig, PlanConfig, ReplyTexts, SiteConfig, TemplateConfig,
};
use medrelay_pipeline::http::simulator::SimServerConfig;
use medrelay_pipeline::http::webhook::{DEFAULT_BODY_LIMIT, DEFAULT_MAX_REQUESTS};
use medrelay_pipeline::store::StoreLocation;
use medrelay_pipeline::store::quarantine::QuotaLimits;
use medrelay_pipeline::whatsapp::cloud::CloudApiConfig;
use medrelay_pipeline::whatsapp::simulator::{ReplyMix, SimulatorConfig};
use serde::Deserialize;

/// Where the database and the installation secret live.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite database (the embedded default), unless `url` or `url_env` names a server.
    #[serde(default = "default_db")]
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgres://medrelay@db.example:5432/medrelay`), for several instances
    /// on one database. Without a password: this file is read and shown by `config check`.
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the PostgreSQL URL (the way to give a password).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Key file (used when `MEDRELAY_SECRET` is not set).
    #[serde(default = "default_key")]
    pub secret_file: PathBuf,
}

impl StoreConfig {
    /// Checks `url` / `url_env` without reading the environment: one of them at most, a
    /// PostgreSQL URL, and no password in the file.
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_some() && self.url_env.is_some() {
            return Err("[store] sets both url and url_env; keep one".into());
        }
        if let Some(url) = &self.url {
            check_postgres_url(url, "[store] url")?;
            if url_has_password(url) {
                return Err("[store] url carries a password; put the URL in an environment variable and name it in url_env".into());
            }
        }
        Ok(())
    }
}

/// Refuses anything but a `postgres://` / `postgresql://` URL (the text is not echoed: it may
/// hold a password).
fn check_postgres_url(url: &str, what: &str) -> Result<(), String> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(format!(
            "{what} must be a postgres:// URL (the SQLite database is `path`)"
        ))
    }
}

/// Whether the URL's authority has `user:password@`.
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
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
            url: None,
            url_env: None,
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
    /// How long a message left `sending` by a crash waits for a status webhook carrying its job id
    /// (`biz_opaque_callback_data`) before it is sent again: longer means fewer possible duplicates,
    /// shorter means less delay after a crash.
    #[serde(default = "default_sending_grace")]
    pub sending_grace: String,
    /// Environment variable with the bearer token `GET /metrics` needs (served on the webhook's
    /// port); unset: `/metrics` is not served. An empty variable stops `run`.
    #[serde(default)]
    pub metrics_token_env: Option<String>,
}

fn default_sending_grace() -> String {
    "10m".into()
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
            sending_grace: default_sending_grace(),
            metrics_token_env: None,
        }
    }
}

/// `[status_page]`: the read-only status page (`medrelay run` serves it on its own listener,
/// behind HTTP Basic authentication). No patient data is ever on it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// `IP:port` to serve on; keep it on loopback behind the site's TLS proxy, or an internal
    /// network.
    pub listen: String,
    /// The Basic user name.
    #[serde(default = "default_status_user")]
    pub user: String,
    /// Environment variable with the password (never in this file). Empty or unset stops `run`.
    #[serde(default = "default_status_password_env")]
    pub password_env: String,
    /// The KPI period the page shows by default, in days.
    #[serde(default = "default_status_days")]
    pub report_days: i64,
}

fn default_status_user() -> String {
    "it".into()
}
fn default_status_password_env() -> String {
    "MEDRELAY_STATUS_PASSWORD".into()
}
fn default_status_days() -> i64 {
    30
}

/// `[console]`: the staff web console (`medrelay run` serves it on its own listener). Accounts
/// are made with `medrelay users add`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `IP:port` to serve on: loopback behind the site's TLS proxy, or with `tls`.
    pub listen: String,
    /// `[console.tls]`: serve the console over TLS itself.
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
    /// How long a sign-in lasts, in hours (default 8: a shift).
    #[serde(default = "default_session_hours")]
    pub session_hours: i64,
    /// The approved template (no parameters) staff may send outside the 24 h customer service
    /// window, asking the patient to write back. Unset: staff cannot answer after 24 h.
    #[serde(default)]
    pub reengage_template: Option<String>,
    /// Its language (default `en_US`).
    #[serde(default = "default_reengage_language")]
    pub reengage_language: String,
    /// Cookies carry `Secure` (default true; browsers accept them on https and on localhost).
    #[serde(default = "default_true")]
    pub secure_cookies: bool,
    /// `[[console.canned]]`: prepared answers (`name`, `text`, optional `language`).
    #[serde(default)]
    pub canned: Vec<medrelay_pipeline::http::console::CannedAnswer>,
    /// `[console.oidc]`: sign-in with the hospital's identity provider as a second way in.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// `[console.oidc]`: OpenID Connect sign-in (authorization code with PKCE). The account stays
/// local: the claim `username_claim` names a console user, whose role and sites apply.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL (`https://login.hospital.example/realms/staff`).
    pub issuer: String,
    pub client_id: String,
    /// The environment variable holding the client secret (`client_secret_basic`); unset: a
    /// public client.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// This console's callback as registered at the provider (`https://console.example/oidc/callback`).
    pub redirect_url: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim naming the local account (default `preferred_username`; `email` works too).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// What the sign-in button names (default "the hospital's sign-in").
    #[serde(default = "default_oidc_display_name")]
    pub display_name: String,
    #[serde(default = "default_oidc_timeout")]
    pub timeout_secs: u64,
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into(), "email".into()]
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_oidc_display_name() -> String {
    "the hospital's sign-in".into()
}
fn default_oidc_timeout() -> u64 {
    10
}

fn default_session_hours() -> i64 {
    8
}
fn default_reengage_language() -> String {
    "en_US".into()
}
fn default_true() -> bool {
    true
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

/// `[audit]`: where signed checkpoints of the audit trail go.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Folder for the checkpoints `audit export` and the daily job of `run` write and `audit verify`
    /// compares (default: `audit-checkpoints` next to the database). They detect truncation of the
    /// whole trail only if they survive it: other storage, or copied off the machine.
    #[serde(default)]
    pub checkpoint_dir: Option<PathBuf>,
}

/// `[alerts]`: where alerts are pushed (once when they fire, once when they are resolved), and
/// the thresholds of the alerts checked after each pass.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Environment variable holding the webhook URL (Slack and Teams URLs are secrets, so the URL
    /// is never in this file). Unset: alerts stay in `medrelay status` and `/metrics` only.
    #[serde(default)]
    pub webhook_url_env: Option<String>,
    /// `json` (default), `slack` or `teams`.
    #[serde(default)]
    pub format: medrelay_pipeline::alerts::SinkFormat,
    /// Per request (default 10).
    #[serde(default = "default_alert_timeout")]
    pub timeout_secs: u64,
    /// `[alerts.feeds.<connector>]`: when a feed must have delivered, or `feed_silent` fires.
    #[serde(default)]
    pub feeds: BTreeMap<String, FeedExpectationConfig>,
    /// Inputs one feed may quarantine in an hour before `quarantine_growing` fires (default 50;
    /// 0: off).
    #[serde(default = "default_quarantine_per_hour")]
    pub quarantine_per_hour: u32,
    /// Opt-outs / patients messaged over `opt_out_window` above which `opt_out_rate` fires
    /// (default 0.02, the 2 % clinic guides name; 0: off).
    #[serde(default = "default_opt_out_rate")]
    pub opt_out_rate: f64,
    #[serde(default = "default_opt_out_window")]
    pub opt_out_window: String,
    /// Fewer patients messaged in the window: no rate is judged (default 50).
    #[serde(default = "default_opt_out_min_contacts")]
    pub opt_out_min_contacts: u32,
    /// A write-back target failing (down, unreachable, 5xx) for longer than this raises
    /// `writeback_failing` (default `15m`).
    #[serde(default = "default_writeback_failing_after")]
    pub writeback_failing_after: String,
}

fn default_writeback_failing_after() -> String {
    "15m".into()
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url_env: None,
            format: Default::default(),
            timeout_secs: default_alert_timeout(),
            feeds: BTreeMap::new(),
            quarantine_per_hour: default_quarantine_per_hour(),
            opt_out_rate: default_opt_out_rate(),
            opt_out_window: default_opt_out_window(),
            opt_out_min_contacts: default_opt_out_min_contacts(),
            writeback_failing_after: default_writeback_failing_after(),
        }
    }
}

fn default_quarantine_per_hour() -> u32 {
    50
}
fn default_opt_out_rate() -> f64 {
    0.02
}
fn default_opt_out_window() -> String {
    "7d".into()
}
fn default_opt_out_min_contacts() -> u32 {
    50
}

/// One feed's expected rhythm: exactly one of the two keys.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedExpectationConfig {
    /// At least one input in any period this long (`2h`): a stream such as MLLP.
    #[serde(default)]
    pub expect_every: Option<String>,
    /// At least one input each day before this local time of the connector's site (`06:00`),
    /// counted from that time the day before: a nightly export.
    #[serde(default)]
    pub expect_by: Option<String>,
}

fn default_alert_timeout() -> u64 {
    10
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

/// `[whatsapp.simulator]`: the simulated patients (in-process simulator and `medrelay simulate`),
/// and `[whatsapp.simulator.server]` for the standalone server only. Kept apart from the pipeline's
/// [`SimulatorConfig`] so that the server's table can live under the same key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSection {
    /// Numbers (E.164 or digits) that are "not on WhatsApp": their messages fail with 131026.
    #[serde(default)]
    pub blocklist: Vec<String>,
    /// How simulated patients answer, in percent.
    #[serde(default)]
    pub reply_mix: ReplyMix,
    /// `medrelay simulate` settings (limits, callback URL, injected failures).
    #[serde(default)]
    pub server: SimServerConfig,
}

impl SimulatorSection {
    /// The simulated patients' settings, as the pipeline's simulator takes them.
    pub fn simulator_config(&self) -> SimulatorConfig {
        SimulatorConfig {
            blocklist: self.blocklist.clone(),
            reply_mix: self.reply_mix.clone(),
        }
    }
}

fn default_app_secret_env() -> String {
    "WHATSAPP_APP_SECRET".into()
}
fn default_verify_token_env() -> String {
    "WHATSAPP_VERIFY_TOKEN".into()
}
fn default_body_limit() -> usize {
    DEFAULT_BODY_LIMIT
}
fn default_http_max_connections() -> usize {
    medrelay_listener::DEFAULT_MAX_CONNECTIONS
}
fn default_header_timeout_secs() -> u64 {
    medrelay_listener::DEFAULT_HEADER_TIMEOUT.as_secs()
}
fn default_webhook_max_requests() -> usize {
    DEFAULT_MAX_REQUESTS
}
fn default_webhook_body_timeout_secs() -> u64 {
    medrelay_pipeline::http::webhook::DEFAULT_BODY_TIMEOUT.as_secs()
}

/// What is wrong with a served endpoint's limits (`key` prefixes the names, e.g.
/// `whatsapp.webhook`).
fn listener_limit_problems(
    key: &str,
    max_connections: usize,
    max_requests: usize,
    header_timeout_secs: u64,
    body_timeout_secs: u64,
) -> Vec<String> {
    let mut p = Vec::new();
    if !(1..=16384).contains(&max_connections) {
        p.push(format!("{key}.max_connections must be between 1 and 16384"));
    }
    if max_requests == 0 || max_requests > max_connections {
        p.push(format!(
            "{key}.max_requests must be between 1 and max_connections"
        ));
    }
    if !(1..=600).contains(&header_timeout_secs) {
        p.push(format!(
            "{key}.header_timeout_secs must be between 1 and 600"
        ));
    }
    if !(1..=3600).contains(&body_timeout_secs) {
        p.push(format!(
            "{key}.body_timeout_secs must be between 1 and 3600"
        ));
    }
    p
}

/// `[whatsapp.webhook]`: the endpoint Meta (or `medrelay simulate`) POSTs statuses and replies to.
/// Secrets are named by environment variable, never written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `IP:port` that `medrelay run` serves `GET`/`POST /webhook` on (e.g. `0.0.0.0:8443` behind a
    /// TLS proxy). None: no endpoint, so statuses and replies only arrive in simulator mode.
    #[serde(default)]
    pub listen: Option<String>,
    /// Variable holding the Meta app secret that signs webhooks (`X-Hub-Signature-256`); also what
    /// the simulators sign with.
    #[serde(default = "default_app_secret_env")]
    pub app_secret_env: String,
    /// Variable holding the verify token typed into the Meta app dashboard.
    #[serde(default = "default_verify_token_env")]
    pub verify_token_env: String,
    /// Largest accepted webhook body in bytes (larger: 413).
    #[serde(default = "default_body_limit")]
    pub body_limit: usize,
    /// TCP connections open at once; more wait in the backlog (hostile clients cannot exhaust
    /// memory with connections).
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Signed requests whose body is read or stored at once (memory: this many bodies at most).
    #[serde(default = "default_webhook_max_requests")]
    pub max_requests: usize,
    /// A connection must send a complete request head this soon after it opens (or after its
    /// previous answer); else it is closed (slow-header clients, idle connections).
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// After its head, a request must get a slot and deliver its whole body this soon (408 / 503).
    #[serde(default = "default_webhook_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// `[whatsapp.webhook.tls]`: serve the endpoint over TLS (Meta calls HTTPS only).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: None,
            app_secret_env: default_app_secret_env(),
            verify_token_env: default_verify_token_env(),
            body_limit: default_body_limit(),
            max_connections: default_http_max_connections(),
            max_requests: default_webhook_max_requests(),
            header_timeout_secs: default_header_timeout_secs(),
            body_timeout_secs: default_webhook_body_timeout_secs(),
            tls: None,
        }
    }
}

impl WebhookConfig {
    /// The endpoint's per-connection limits.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
        }
    }

    /// The endpoint's per-request limits (one set of slots per call: call once per listener).
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits::new(
            self.body_limit,
            std::time::Duration::from_secs(self.body_timeout_secs),
            self.max_requests,
        )
    }
}

/// `[whatsapp]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsAppConfig {
    /// `simulator` (default) or `cloud`.
    #[serde(default)]
    pub mode: WhatsAppMode,
    /// WhatsApp Business Account id (template registry, webhook metadata).
    pub waba_id: String,
    /// The business phone number's id (the send path).
    pub phone_number_id: String,
    /// The business number as digits (what simulated webhooks carry as metadata).
    pub display_phone_number: String,
    /// `[whatsapp.simulator]`.
    #[serde(default)]
    pub simulator: SimulatorSection,
    /// `[whatsapp.cloud]` as written: resolved into [`Loaded::cloud`] (ids default to the ones above),
    /// so the pipeline's [`CloudApiConfig`] stays the one definition of its keys.
    #[serde(default)]
    pub cloud: Option<toml::Table>,
    /// `[whatsapp.webhook]`.
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// The business portfolio's messaging limit (unique recipients of template messages in a
    /// moving 24 h: 250 for a new portfolio, then 2000 / 10000 / 100000); unset: unlimited. New
    /// recipients beyond it wait for the window to move, by lane; an alert at 80 %.
    #[serde(default)]
    pub messaging_limit: Option<u32>,
    /// A configured template that WhatsApp recategorises away from UTILITY: `warn` (an alert,
    /// sending goes on) or `halt` (an alert, and its steps wait until it is UTILITY again).
    #[serde(default)]
    pub on_recategorised: medrelay_pipeline::config::RecategorisedPolicy,
}

impl WhatsAppConfig {
    /// The Cloud API settings: `[whatsapp.cloud]` with `phone_number_id` and `waba_id` taken from
    /// `[whatsapp]` when not repeated. `Ok(None)` when there is no table and the mode is not cloud.
    pub fn resolve_cloud(&self) -> Result<Option<CloudApiConfig>, Vec<String>> {
        if self.cloud.is_none() && self.mode != WhatsAppMode::Cloud {
            return Ok(None);
        }
        let mut table = self.cloud.clone().unwrap_or_default();
        let mut errors = Vec::new();
        for (key, value) in [
            ("phone_number_id", &self.phone_number_id),
            ("waba_id", &self.waba_id),
        ] {
            match table.get(key) {
                None => {
                    table.insert(key.into(), toml::Value::String(value.clone()));
                }
                Some(toml::Value::String(v)) if v == value => {}
                Some(_) => errors.push(format!(
                    "whatsapp.cloud.{key} differs from whatsapp.{key}: give it once, in [whatsapp]"
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let cloud: CloudApiConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| vec![format!("whatsapp.cloud: {}", e.message())])?;
        let problems = cloud_problems(&cloud);
        if problems.is_empty() {
            Ok(Some(cloud))
        } else {
            Err(problems)
        }
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// The shape of `[whatsapp.cloud]`, checked without the network (so `medrelay check` catches a typo
/// before the first send fails at night).
pub fn cloud_problems(c: &CloudApiConfig) -> Vec<String> {
    let mut p = Vec::new();
    let rest = c
        .base_url
        .strip_prefix("https://")
        .or_else(|| c.base_url.strip_prefix("http://"));
    match rest {
        Some(r)
            if !r.trim_end_matches('/').is_empty()
                && !r.contains(|ch: char| ch.is_whitespace() || ch == '?' || ch == '#') => {}
        _ => p.push(format!(
            "whatsapp.cloud.base_url `{}` must be an http(s) URL without query, like https://graph.facebook.com",
            c.base_url
        )),
    }
    let version_ok = c.graph_version.strip_prefix('v').is_some_and(|v| {
        let mut parts = v.split('.');
        parts.next().is_some_and(is_digits)
            && parts.next().is_some_and(is_digits)
            && parts.next().is_none()
    });
    if !version_ok {
        p.push(format!(
            "whatsapp.cloud.graph_version `{}` must look like `v23.0`",
            c.graph_version
        ));
    }
    for (key, v) in [
        ("phone_number_id", &c.phone_number_id),
        ("waba_id", &c.waba_id),
    ] {
        if !is_digits(v) {
            p.push(format!(
                "whatsapp.{key} must be the numeric id from WhatsApp Manager"
            ));
        }
    }
    if !is_env_name(&c.token_env) {
        p.push(format!(
            "whatsapp.cloud.token_env `{}` must be an environment variable name (the token itself never goes in this file)",
            c.token_env
        ));
    }
    if !(1..=1000).contains(&c.per_second) {
        p.push(format!(
            "whatsapp.cloud.per_second {} must be between 1 and 1000 (Meta's throughput tiers)",
            c.per_second
        ));
    }
    if c.pair_interval_secs > 3600 {
        p.push("whatsapp.cloud.pair_interval_secs must be at most 3600".into());
    }
    if !(1..=300).contains(&c.timeout_secs) {
        p.push("whatsapp.cloud.timeout_secs must be between 1 and 300".into());
    }
    if c.connect_timeout_secs == 0 || c.connect_timeout_secs > c.timeout_secs {
        p.push("whatsapp.cloud.connect_timeout_secs must be between 1 and timeout_secs".into());
    }
    p
}

/// Whether an environment variable is set to something non-blank (its value is never returned).
fn env_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
}

/// Secrets that the configuration needs from the environment and that are missing: the Cloud API
/// token in cloud mode; the app secret and verify token when the webhook endpoint is served; a FHIR
/// connector's Subscription and server Authorization values. Names
/// variables, never values. Separate from [`load`] so commands that do not send can run without them.
pub fn environment_problems(loaded: &Loaded) -> Vec<String> {
    let mut p = Vec::new();
    let wa = &loaded.config.whatsapp;
    if wa.mode == WhatsAppMode::Cloud
        && let Some(cloud) = &loaded.cloud
        && !env_set(&cloud.token_env)
    {
        p.push(format!(
            "environment variable {} (whatsapp.cloud.token_env) with the WhatsApp access token is not set",
            cloud.token_env
        ));
    }
    if wa.webhook.listen.is_some() {
        for (var, key, what) in [
            (
                &wa.webhook.app_secret_env,
                "app_secret_env",
                "the Meta app secret that signs webhooks",
            ),
            (
                &wa.webhook.verify_token_env,
                "verify_token_env",
                "the webhook verify token",
            ),
        ] {
            if !env_set(var) {
                p.push(format!(
                    "environment variable {var} (whatsapp.webhook.{key}) with {what} is not set; the webhook endpoint needs it"
                ));
            }
        }
    }
    if let Some(var) = &loaded.config.alerts.webhook_url_env
        && !env_set(var)
    {
        p.push(format!(
            "environment variable {var} (alerts.webhook_url_env) with the alert webhook URL is not set"
        ));
    }
    if let Some(var) = &loaded.config.service.metrics_token_env
        && !env_set(var)
    {
        p.push(format!(
            "environment variable {var} (service.metrics_token_env) with the /metrics bearer token is not set"
        ));
    }
    for c in &loaded.config.connectors {
        let ConnectorConfig::Fhir(f) = c else {
            continue;
        };
        if let Some(s) = &f.subscription
            && !env_set(&s.authorization_env)
        {
            p.push(format!(
                "environment variable {} (connector `{}` subscription.authorization_env) with the Subscription's Authorization header is not set",
                s.authorization_env, f.name
            ));
        }
        if let Some(var) = f.server.as_ref().and_then(|s| s.authorization_env.as_ref())
            && !env_set(var)
        {
            p.push(format!(
                "environment variable {var} (connector `{}` server.authorization_env) is not set",
                f.name
            ));
        }
    }
    p
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
    /// `[connectors.open_slots]`: the EHR's "open slots" export (`medrelay slots import`).
    #[serde(default)]
    pub open_slots: Option<OpenSlotsConfig>,
}

/// `[connectors.open_slots]`: how the system's "open slots" export is read.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenSlotsConfig {
    /// `[connectors.open_slots.profile]`: delimiter, `datetime_format` and `[...profile.columns]`
    /// (`slot_id`, `start`, `end` or `duration_minutes`, `site`, `practitioner`, `service_type`,
    /// `location`).
    pub profile: medrelay_connector_csv::slots::SlotProfile,
}

fn default_max_message_bytes() -> usize {
    1024 * 1024
}

fn default_max_connections() -> usize {
    32
}

fn default_frame_timeout() -> u64 {
    60
}

fn default_idle_timeout() -> u64 {
    300
}

fn default_write_timeout() -> u64 {
    10
}

fn default_max_connections_per_source() -> usize {
    8
}

fn default_max_segments() -> usize {
    medrelay_connector_hl7v2::limits::ParseLimits::DEFAULT.max_segments
}

fn default_max_fields() -> usize {
    medrelay_connector_hl7v2::limits::ParseLimits::DEFAULT.max_fields
}

fn default_max_repetitions() -> usize {
    medrelay_connector_hl7v2::limits::ParseLimits::DEFAULT.max_repetitions
}

fn default_max_components() -> usize {
    medrelay_connector_hl7v2::limits::ParseLimits::DEFAULT.max_components
}

fn default_parse_budget_ms() -> u64 {
    5_000
}

fn default_quarantine_window_secs() -> u64 {
    QuotaLimits::DEFAULT.window.as_secs()
}

fn default_quarantine_max_messages() -> u64 {
    QuotaLimits::DEFAULT.max_messages
}

fn default_quarantine_max_bytes() -> u64 {
    QuotaLimits::DEFAULT.max_bytes
}

fn default_quarantine_max_messages_per_source() -> u64 {
    QuotaLimits::DEFAULT.max_messages_per_source
}

fn default_quarantine_max_bytes_per_source() -> u64 {
    QuotaLimits::DEFAULT.max_bytes_per_source
}

fn default_publicity_opt_out() -> Vec<String> {
    vec!["N".to_string()]
}

fn default_fallback_charset() -> String {
    "8859/1".to_string()
}

fn default_hl7_ordering() -> String {
    "arrival".to_string()
}

/// An HL7v2 interface: SIU messages over MLLP (`listen`) and/or as files (`inbox`, `medrelay
/// ingest hl7`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7ConnectorConfig {
    /// The feed's name: how quarantine and the audit trail name it.
    pub name: String,
    /// The scheduling system whose ids (SCH-2) the feed carries (default: `name`); share it with
    /// the nightly CSV of the same EHR so that both update one appointment.
    #[serde(default)]
    pub system: Option<String>,
    /// Configured site the appointments belong to (its zone reads times without an offset).
    pub site: String,
    /// The MLLP address `medrelay run` listens on, `IP:port` (e.g. `0.0.0.0:2575`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Folder `medrelay run` watches for `.hl7` files.
    #[serde(default)]
    pub inbox: Option<PathBuf>,
    /// Larger frames are answered AR without being buffered.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// MLLP connections served at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a started frame may take to complete before its connection is closed.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout_secs: u64,
    /// Seconds a connection may stay without starting a frame (noise does not count) before it
    /// is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Seconds an ACK may take to be written before the (non-reading) client is dropped.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
    /// MLLP connections one source address may hold at once.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: usize,
    /// Source networks (`10.0.0.0/8`, `127.0.0.1`) that may connect; empty: any.
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// Source networks (the EHR's engine) that may use the `reserved_connections` slots.
    #[serde(default)]
    pub reserved_for: Vec<String>,
    /// Slots of `max_connections` kept for `reserved_for`.
    #[serde(default)]
    pub reserved_connections: usize,
    /// Most segments, fields, repetitions and components one message may have (checked before
    /// it is parsed; beyond them the answer is AR).
    #[serde(default = "default_max_segments")]
    pub max_segments: usize,
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    #[serde(default = "default_max_repetitions")]
    pub max_repetitions: usize,
    #[serde(default = "default_max_components")]
    pub max_components: usize,
    /// Milliseconds one message's parse may take (beyond: AR, quarantined).
    #[serde(default = "default_parse_budget_ms")]
    pub parse_budget_ms: u64,
    /// The quarantine quota: rejected messages kept per moving window, for the feed and per
    /// source address; beyond it they are answered and counted but not kept.
    #[serde(default = "default_quarantine_window_secs")]
    pub quarantine_window_secs: u64,
    #[serde(default = "default_quarantine_max_messages")]
    pub quarantine_max_messages: u64,
    #[serde(default = "default_quarantine_max_bytes")]
    pub quarantine_max_bytes: u64,
    #[serde(default = "default_quarantine_max_messages_per_source")]
    pub quarantine_max_messages_per_source: u64,
    #[serde(default = "default_quarantine_max_bytes_per_source")]
    pub quarantine_max_bytes_per_source: u64,
    /// The charset (MSH-18 spelling) of messages without MSH-18 that are not UTF-8.
    #[serde(default = "default_fallback_charset")]
    pub fallback_charset: String,
    /// PD1-11 publicity codes meaning "do not contact" (an EHR opt-out). Default `["N"]`.
    #[serde(default = "default_publicity_opt_out")]
    pub publicity_opt_out: Vec<String>,
    /// PD1-11 publicity codes this EHR uses for a messaging opt-in. Default none.
    #[serde(default)]
    pub publicity_opt_in: Vec<String>,
    /// Our MSH-3 in ACKs.
    #[serde(default)]
    pub application: Option<String>,
    /// Our MSH-4 in ACKs.
    #[serde(default)]
    pub facility: Option<String>,
    /// Which clock orders messages about one appointment: `arrival` (default: the order of the
    /// connection or file), `message_time` (MSH-7) or `event_time` (EVN-6, else EVN-2, else MSH-7).
    #[serde(default = "default_hl7_ordering")]
    pub ordering: String,
    /// The sender's local SCH-25 values and the FHIR status each means (`"Confirmado" = "booked"`,
    /// `"C" = "cancelled"`); matched without case, spaces or punctuation, before the built-in
    /// table 0278 codes and synonyms.
    #[serde(default)]
    pub status_map: BTreeMap<String, String>,
    /// The parts of AIL-3 (a PL) that make the location, in order, joined by ", "
    /// (`point_of_care`, `room`, `bed`, `facility`, `building`, `floor`, `description`); default:
    /// the description, else the facility, else the point of care.
    #[serde(default)]
    pub location_parts: Vec<String>,
    /// Send patient answers back to the EHR's inbound interface as SRM messages.
    #[serde(default)]
    pub write_back: Option<Hl7WriteBackSection>,
    /// `[connectors.tls]`: MLLP over TLS on `listen` (certificate, key, and a CA for mutual TLS).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

/// `[connectors.write_back]` of an HL7v2 connector.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7WriteBackSection {
    /// `host:port` of the EHR's inbound MLLP interface.
    pub send_to: String,
    #[serde(default = "default_fhir_timeout")]
    pub timeout_secs: u64,
    /// The EHR's MSH-5 / MSH-6.
    #[serde(default)]
    pub receiving_application: String,
    #[serde(default)]
    pub receiving_facility: String,
    /// MSH-12 of the messages sent.
    #[serde(default = "default_hl7_version")]
    pub version: String,
    /// NTE-3 codes per action: `confirm`, `cancel`, `reschedule`, `not_notified`.
    #[serde(default)]
    pub action_codes: BTreeMap<String, String>,
    /// `[connectors.write_back.tls]`: connect to the EHR over TLS (its CA, optionally our client
    /// certificate for mutual TLS).
    #[serde(default)]
    pub tls: Option<ClientTlsFiles>,
}

fn default_hl7_version() -> String {
    "2.5.1".to_string()
}

impl Hl7ConnectorConfig {
    /// The system whose ids the feed carries.
    pub fn system(&self) -> &str {
        self.system.as_deref().unwrap_or(&self.name)
    }

    /// The MLLP listener's settings (networks that do not parse are left out: `check` and
    /// `load` refuse such a configuration before a listener starts).
    pub fn listener_options(&self) -> medrelay_connector_hl7v2::mllp::ListenerOptions {
        use std::time::Duration;
        let networks = |v: &[String]| v.iter().filter_map(|n| n.parse().ok()).collect();
        let mut o = medrelay_connector_hl7v2::mllp::ListenerOptions::new(&self.name);
        o.max_message_bytes = self.max_message_bytes;
        o.max_connections = self.max_connections;
        o.frame_timeout = Duration::from_secs(self.frame_timeout_secs);
        o.idle_timeout = Duration::from_secs(self.idle_timeout_secs);
        o.write_timeout = Duration::from_secs(self.write_timeout_secs);
        o.max_connections_per_source = self.max_connections_per_source.min(self.max_connections);
        o.allow_from = networks(&self.allow_from);
        o.reserved_for = networks(&self.reserved_for);
        o.reserved_connections = self.reserved_connections;
        o.limits = self.parse_limits();
        o.parse_budget = Duration::from_millis(self.parse_budget_ms);
        o
    }

    fn parse_limits(&self) -> medrelay_connector_hl7v2::limits::ParseLimits {
        medrelay_connector_hl7v2::limits::ParseLimits {
            max_segments: self.max_segments,
            max_fields: self.max_fields,
            max_repetitions: self.max_repetitions,
            max_components: self.max_components,
        }
    }

    /// The feed's quarantine quota.
    pub fn quarantine_limits(&self) -> QuotaLimits {
        QuotaLimits {
            window: std::time::Duration::from_secs(self.quarantine_window_secs),
            max_messages: self.quarantine_max_messages,
            max_bytes: self.quarantine_max_bytes,
            max_messages_per_source: self.quarantine_max_messages_per_source,
            max_bytes_per_source: self.quarantine_max_bytes_per_source,
        }
    }
}

/// What is wrong with an HL7v2 connector's MLLP protections (timeouts, connection limits,
/// networks, parse limits, quarantine quota).
fn validate_hl7_protections(c: &Hl7ConnectorConfig) -> Vec<String> {
    use medrelay_connector_hl7v2::access::Network;
    let mut errors = Vec::new();
    let mut problem = |p: String| errors.push(format!("connector `{}`: {p}", c.name));
    if !(1..=86_400).contains(&c.idle_timeout_secs) {
        problem("idle_timeout_secs must be between 1 and 86400".into());
    }
    if !(1..=600).contains(&c.write_timeout_secs) {
        problem("write_timeout_secs must be between 1 and 600".into());
    }
    if c.max_connections_per_source == 0 {
        problem("max_connections_per_source must be at least 1".into());
    }
    let mut networks = |key: &str, list: &[String]| -> Vec<Network> {
        list.iter()
            .filter_map(|n| match n.parse::<Network>() {
                Ok(net) => Some(net),
                Err(e) => {
                    problem(format!("{key}: {e}"));
                    None
                }
            })
            .collect()
    };
    let allow = networks("allow_from", &c.allow_from);
    let reserved = networks("reserved_for", &c.reserved_for);
    if !allow.is_empty() {
        for r in &reserved {
            if !allow.iter().any(|a| a.covers(r)) {
                problem(format!(
                    "reserved_for `{r}` is not inside allow_from, so it could never connect"
                ));
            }
        }
    }
    if c.reserved_connections > 0 && c.reserved_for.is_empty() {
        problem("reserved_connections needs reserved_for (the EHR's addresses)".into());
    }
    if c.reserved_connections >= c.max_connections.max(1) {
        problem("reserved_connections must be less than max_connections".into());
    }
    if let Some(key) = c.parse_limits().out_of_range() {
        let ceiling = medrelay_connector_hl7v2::limits::ParseLimits::CEILING;
        problem(format!(
            "{key} must be between 1 and the ceiling ({} segments, {} fields, {} repetitions, {} components)",
            ceiling.max_segments,
            ceiling.max_fields,
            ceiling.max_repetitions,
            ceiling.max_components
        ));
    }
    if !(10..=600_000).contains(&c.parse_budget_ms) {
        problem("parse_budget_ms must be between 10 and 600000".into());
    }
    if !(60..=30 * 86_400).contains(&c.quarantine_window_secs) {
        problem("quarantine_window_secs must be between 60 and 2592000 (30 days)".into());
    }
    if c.quarantine_max_messages_per_source == 0
        || c.quarantine_max_messages_per_source > c.quarantine_max_messages
    {
        problem(
            "quarantine_max_messages_per_source must be between 1 and quarantine_max_messages"
                .into(),
        );
    }
    if c.quarantine_max_bytes_per_source == 0
        || c.quarantine_max_bytes_per_source > c.quarantine_max_bytes
    {
        problem(
            "quarantine_max_bytes_per_source must be between 1 and quarantine_max_bytes".into(),
        );
    }
    errors
}

fn default_subscription_path() -> String {
    "/fhir/subscription".to_string()
}

fn default_fhir_body_limit() -> usize {
    8 * 1024 * 1024
}

fn default_subscription_max_requests() -> usize {
    4
}

fn default_subscription_body_timeout_secs() -> u64 {
    60
}

fn default_fhir_timeout() -> u64 {
    20
}

fn default_fhir_window() -> String {
    "14d".to_string()
}

/// `[connectors.subscription]`: the endpoint the EHR's FHIR Subscription (rest-hook) posts to.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSubscriptionConfig {
    /// `IP:port` `medrelay run` listens on (with `tls`, or behind the site's TLS reverse proxy).
    pub listen: String,
    #[serde(default = "default_subscription_path")]
    pub path: String,
    /// Environment variable holding the exact `Authorization` header value the Subscription sends
    /// (its `channel.header`), e.g. `Bearer 3f1c...`. Never the value itself.
    pub authorization_env: String,
    #[serde(default = "default_fhir_body_limit")]
    pub body_limit: usize,
    /// TCP connections open at once; more wait in the backlog.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Authenticated notifications read and mapped at once (memory: this many bodies at most).
    #[serde(default = "default_subscription_max_requests")]
    pub max_requests: usize,
    /// A connection must send a complete request head this soon after it opens (or after its
    /// previous answer); else it is closed.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// After its head, a notification must get a slot and deliver its whole body this soon.
    #[serde(default = "default_subscription_body_timeout_secs")]
    pub body_timeout_secs: u64,
    /// The Subscription's `heartbeatPeriod` (`60s`, `5m`): two periods without a heartbeat or a
    /// notification raise `feed_silent` (unless `[alerts.feeds.<name>]` sets its own rhythm).
    #[serde(default)]
    pub heartbeat_period: Option<String>,
    /// `[connectors.subscription.tls]`: serve the endpoint over TLS (no reverse proxy needed).
    #[serde(default)]
    pub tls: Option<ServerTlsFiles>,
}

impl FhirSubscriptionConfig {
    /// The endpoint's per-connection limits.
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs),
        }
    }

    /// The endpoint's per-request limits (one set of slots per call: call once per listener).
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits::new(
            self.body_limit,
            std::time::Duration::from_secs(self.body_timeout_secs),
            self.max_requests,
        )
    }
}

/// `[connectors.server]`: the EHR's FHIR REST base, for id-only notifications and for polling.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirServerConfig {
    /// e.g. `https://ehr.example.org/fhir/R4`.
    pub base_url: String,
    /// Environment variable holding the whole `Authorization` header value, when needed.
    #[serde(default)]
    pub authorization_env: Option<String>,
    #[serde(default = "default_fhir_timeout")]
    pub timeout_secs: u64,
    /// `medrelay run` (and `ingest fhir --server`) searches appointments starting from now to
    /// now + this window, with their Patients and Consents.
    #[serde(default = "default_fhir_window")]
    pub window: String,
    /// Search the server from `medrelay run` (off: notifications and `ingest fhir --server` only).
    #[serde(default)]
    pub poll: bool,
    /// How often `run` searches when `poll` is on.
    #[serde(default = "default_fhir_poll_every")]
    pub poll_every: String,
    /// `[connectors.server.smart]`: SMART Backend Services tokens instead of a static header.
    #[serde(default)]
    pub smart: Option<FhirSmartConfig>,
}

/// `[connectors.server.smart]`: how medrelay gets access tokens from an EHR that uses SMART
/// Backend Services (a signed JWT assertion, client-credentials grant). The public key to register
/// with the EHR: `medrelay fhir jwks --connector NAME`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSmartConfig {
    /// The token endpoint (`token_endpoint` of the server's `.well-known/smart-configuration`).
    pub token_url: String,
    /// The client id the EHR registered for medrelay.
    pub client_id: String,
    /// Scopes, space-separated (`system/Appointment.rs system/Patient.rs system/Appointment.u`).
    pub scope: String,
    /// The private key file (PEM), relative to this file; readable by the service account only.
    pub private_key: PathBuf,
    /// `ES384` or `RS384` (what the key is).
    pub algorithm: medrelay_connector_fhir::smart::SmartAlgorithm,
    /// Key id in the assertions and the JWKS (default: the key's RFC 7638 thumbprint).
    #[serde(default)]
    pub kid: Option<String>,
}

impl Loaded {
    /// The SMART client of connector `connector`'s `[connectors.server.smart]`: one per connector
    /// and process (the key read once), so that polling, id-only reads and write-back share its
    /// cached token.
    pub fn smart_auth(
        &self,
        connector: &str,
        s: &FhirSmartConfig,
        timeout: std::time::Duration,
    ) -> Result<Arc<medrelay_connector_fhir::smart::SmartAuth>, String> {
        let mut clients = self.smart_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(connector) {
            return Ok(c.clone());
        }
        let c = smart_auth(&self.base, s, timeout)?;
        clients.insert(connector.to_owned(), c.clone());
        Ok(c)
    }
}

fn smart_auth(
    base: &Path,
    s: &FhirSmartConfig,
    timeout: std::time::Duration,
) -> Result<Arc<medrelay_connector_fhir::smart::SmartAuth>, String> {
    use medrelay_connector_fhir::smart::{SmartAuth, SmartSettings};
    let path = under(base, &s.private_key);
    let pem = std::fs::read(&path).map_err(|e| {
        format!(
            "server.smart.private_key {}: cannot read: {e}",
            path.display()
        )
    })?;
    SmartAuth::new(SmartSettings {
        token_url: s.token_url.clone(),
        client_id: s.client_id.clone(),
        scope: s.scope.clone(),
        algorithm: s.algorithm,
        private_key_pem: pem,
        kid: s.kid.clone(),
        timeout,
    })
    .map_err(|e| format!("server.smart.private_key {}: {e}", path.display()))
}

/// A SMART section's problems: a key that does not read, a token endpoint that is not HTTPS
/// (loopback aside), a static header configured next to it.
fn validate_smart(base: &Path, name: &str, s: &FhirServerConfig, errors: &mut Vec<String>) {
    let Some(smart) = &s.smart else { return };
    if s.authorization_env.is_some() {
        errors.push(format!(
            "connector `{name}`: server.authorization_env and server.smart exclude each other"
        ));
    }
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| smart.token_url.starts_with(p));
    if !smart.token_url.starts_with("https://") && !loopback {
        errors.push(format!(
            "connector `{name}`: server.smart.token_url must be https:// (the assertion and the token cross it)"
        ));
    }
    if smart.client_id.trim().is_empty() || smart.scope.trim().is_empty() {
        errors.push(format!(
            "connector `{name}`: server.smart needs client_id and scope"
        ));
    }
    if let Err(e) = smart_auth(base, smart, std::time::Duration::from_secs(s.timeout_secs)) {
        errors.push(format!("connector `{name}`: {e}"));
    }
}

fn default_fhir_poll_every() -> String {
    "15m".to_string()
}

/// A FHIR connector: Bundles from a Subscription endpoint, from files (`inbox`, `medrelay ingest
/// fhir FILE`) or from REST searches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConnectorConfig {
    pub name: String,
    /// The system whose appointment ids the feed carries (default: `name`).
    #[serde(default)]
    pub system: Option<String>,
    pub site: String,
    /// `Appointment.identifier.system` whose value is the appointment id (share it with the CSV
    /// or HL7 feed of the same EHR); default the logical id.
    #[serde(default)]
    pub identifier_system: Option<String>,
    /// Codings (`system|code`) that make a Consent a messaging consent (in `category`,
    /// `provision.purpose` or `provision.action`). Empty: Consents are not read.
    #[serde(default)]
    pub consent_codes: Vec<String>,
    /// Folder `medrelay run` watches for Bundle `.json` files.
    #[serde(default)]
    pub inbox: Option<PathBuf>,
    #[serde(default)]
    pub subscription: Option<FhirSubscriptionConfig>,
    #[serde(default)]
    pub server: Option<FhirServerConfig>,
    /// Write patient answers back to `[server]` (JSON Patch of the patient participant's status).
    #[serde(default)]
    pub write_back: bool,
    /// How a reschedule request is written back: `appointment_response` (declined, comment
    /// `reschedule-requested`) or `task` (for staff); never `tentative`.
    #[serde(default)]
    pub reschedule_as: medrelay_connector_fhir::write_back::RescheduleAs,
}

impl FhirConnectorConfig {
    /// The system whose ids the feed carries.
    pub fn system(&self) -> &str {
        self.system.as_deref().unwrap_or(&self.name)
    }
}

/// Every connector medrelay knows.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
// A few per process, read once at start: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum ConnectorConfig {
    Csv(CsvConnectorConfig),
    Hl7v2(Hl7ConnectorConfig),
    Fhir(FhirConnectorConfig),
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
            ConnectorConfig::Hl7v2(c) => &c.name,
            ConnectorConfig::Fhir(c) => &c.name,
        }
    }

    /// The system whose appointment ids the connector carries (the appointment key's source).
    pub fn system(&self) -> &str {
        match self {
            ConnectorConfig::Csv(c) => c.system(),
            ConnectorConfig::Hl7v2(c) => c.system(),
            ConnectorConfig::Fhir(c) => c.system(),
        }
    }

    /// Where replies for this connector's appointments go back to the EHR, if anywhere.
    pub fn return_file(&self) -> Option<&ReturnFileConfig> {
        match self {
            ConnectorConfig::Csv(c) => c.return_file.as_ref(),
            ConnectorConfig::Hl7v2(_) | ConnectorConfig::Fhir(_) => None,
        }
    }

    /// Whether replies for this connector's system can be written back through it.
    pub fn writes_back(&self) -> bool {
        match self {
            ConnectorConfig::Csv(c) => c.return_file.is_some(),
            ConnectorConfig::Hl7v2(c) => c.write_back.is_some(),
            ConnectorConfig::Fhir(c) => c.write_back && c.server.is_some(),
        }
    }

    /// The site the connector's appointments belong to.
    pub fn site(&self) -> &str {
        match self {
            ConnectorConfig::Csv(c) => &c.site,
            ConnectorConfig::Hl7v2(c) => &c.site,
            ConnectorConfig::Fhir(c) => &c.site,
        }
    }

    /// The folder `medrelay run` watches, if any.
    pub fn inbox(&self) -> Option<&Path> {
        match self {
            ConnectorConfig::Csv(c) => c.inbox.as_deref(),
            ConnectorConfig::Hl7v2(c) => c.inbox.as_deref(),
            ConnectorConfig::Fhir(c) => c.inbox.as_deref(),
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
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
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
    /// `[survey]`: what follows a post-visit survey's rating.
    #[serde(default)]
    pub survey: medrelay_pipeline::config::SurveyConfig,
    #[serde(default)]
    pub csv: CsvSection,
    #[serde(default)]
    pub connectors: Vec<ConnectorConfig>,
    /// `[costs]`: the price list the report multiplies Meta's per-message pricing by.
    #[serde(default)]
    pub costs: Option<medrelay_pipeline::costs::RateTable>,
    #[serde(default)]
    pub status_page: Option<StatusPageConfig>,
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
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
    /// `[service] sending_grace`, parsed.
    pub sending_grace: jiff::SignedDuration,
    /// `[whatsapp.cloud]` resolved and validated: present in cloud mode (defaults when the table is
    /// absent) and whenever the table is written (so `templates check` works before switching).
    pub cloud: Option<CloudApiConfig>,
    /// `[whatsapp.webhook] listen`, parsed.
    pub webhook_listen: Option<std::net::SocketAddr>,
    /// `[alerts.feeds]`, resolved against the connectors and their sites' zones.
    pub feed_watches: Vec<medrelay_pipeline::silence::FeedWatch>,
    /// `[status_page] listen`, parsed.
    pub status_page_listen: Option<std::net::SocketAddr>,
    /// `[console] listen`, parsed.
    pub console_listen: Option<std::net::SocketAddr>,
    /// `[alerts]` thresholds of the after-pass checks, parsed.
    pub thresholds: medrelay_pipeline::watch::Thresholds,
    /// The TLS configurations listeners were started with ([`Loaded::server_tls`]): what SIGHUP
    /// reloads. Shared by the reloaded configurations of one process.
    pub tls_in_use: Arc<Mutex<Vec<ServerTls>>>,
    /// SMART clients by connector ([`Loaded::smart_auth`]), shared like `tls_in_use`.
    pub smart_clients: SmartClients,
}

/// SMART Backend Services clients by connector name.
pub type SmartClients =
    Arc<Mutex<BTreeMap<String, Arc<medrelay_connector_fhir::smart::SmartAuth>>>>;

/// A configuration problem: every error found, each on its own line.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {}", errors.join("\n  "))]
pub struct ConfigError {
    pub path: String,
    pub errors: Vec<String>,
}

impl Loaded {
    /// A listener's TLS from its files (paths relative to the config file), remembered so that
    /// [`Loaded::reload_tls`] reads the files again on SIGHUP.
    pub fn server_tls(&self, files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
        let tls = ServerTls::load(&resolved_server_tls(&self.base, files))?;
        self.tls_in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tls.clone());
        Ok(tls)
    }

    /// A TLS client configuration from its files (paths relative to the config file).
    pub fn client_tls(&self, files: &ClientTlsFiles) -> Result<ClientTls, TlsError> {
        ClientTls::load(&resolved_client_tls(&self.base, files))
    }

    /// Reads every listener's certificate and key again (a renewal): new connections use them;
    /// one that fails keeps its configuration. Returns (reloaded, failed with why).
    pub fn reload_tls(&self) -> (usize, Vec<String>) {
        let in_use = self.tls_in_use.lock().unwrap_or_else(|e| e.into_inner());
        let mut failed = Vec::new();
        for tls in in_use.iter() {
            if let Err(e) = tls.reload() {
                failed.push(e.to_string());
            }
        }
        (in_use.len() - failed.len(), failed)
    }

    /// Resolves a configured path relative to the config file.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Where the store lives: the PostgreSQL server `[store] url` / `url_env` names, else the
    /// SQLite file `path`. Errors name the setting, never the URL.
    pub fn store_location(&self) -> Result<StoreLocation, String> {
        let store = &self.config.store;
        if let Some(url) = &store.url {
            return Ok(StoreLocation::Postgres(url.clone()));
        }
        if let Some(var) = &store.url_env {
            let url = std::env::var(var)
                .map_err(|_| format!("[store] url_env names {var}, which is not set"))?;
            check_postgres_url(&url, &format!("the value of {var}"))?;
            return Ok(StoreLocation::Postgres(url));
        }
        Ok(StoreLocation::Sqlite(self.resolve(&store.path)))
    }

    /// The folder of audit checkpoints: `[audit] checkpoint_dir`, else `audit-checkpoints` in the
    /// database's folder.
    pub fn checkpoint_dir(&self) -> PathBuf {
        match &self.config.audit.checkpoint_dir {
            Some(dir) => self.resolve(dir),
            None => {
                let db = self.resolve(&self.config.store.path);
                db.parent()
                    .unwrap_or(Path::new("."))
                    .join("audit-checkpoints")
            }
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

    /// One write-back target per system: the first connector of the system that writes back (a CSV
    /// `return_file`, a FHIR connector with `write_back`). Feeds of one system share appointments, so each reply must be written once.
    pub fn write_back_targets(&self) -> Vec<(&str, &ConnectorConfig)> {
        let mut out: Vec<(&str, &ConnectorConfig)> = Vec::new();
        for c in &self.config.connectors {
            if c.writes_back() && !out.iter().any(|(s, _)| *s == c.system()) {
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
            .filter_map(|c| match c {
                ConnectorConfig::Csv(c) => Some(c),
                _ => None,
            })
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

    /// The HL7v2 connector called `name` (or the only one).
    pub fn hl7_connector(&self, name: Option<&str>) -> Result<&Hl7ConnectorConfig, String> {
        let all: Vec<&Hl7ConnectorConfig> = self
            .config
            .connectors
            .iter()
            .filter_map(|c| match c {
                ConnectorConfig::Hl7v2(c) => Some(c),
                _ => None,
            })
            .collect();
        match name {
            Some(n) => all.into_iter().find(|c| c.name == n).ok_or_else(|| {
                format!("no HL7v2 connector named `{n}` in {}", self.path.display())
            }),
            None if all.len() == 1 => Ok(all[0]),
            None if all.is_empty() => Err(format!(
                "no HL7v2 connector ([[connectors]] type = \"hl7v2\") in {}",
                self.path.display()
            )),
            None => Err(format!(
                "{} HL7v2 connectors are configured; choose one with --connector",
                all.len()
            )),
        }
    }

    /// The FHIR connector called `name` (or the only one).
    pub fn fhir_connector(&self, name: Option<&str>) -> Result<&FhirConnectorConfig, String> {
        let all: Vec<&FhirConnectorConfig> = self
            .config
            .connectors
            .iter()
            .filter_map(|c| match c {
                ConnectorConfig::Fhir(c) => Some(c),
                _ => None,
            })
            .collect();
        match name {
            Some(n) => all
                .into_iter()
                .find(|c| c.name == n)
                .ok_or_else(|| format!("no FHIR connector named `{n}` in {}", self.path.display())),
            None if all.len() == 1 => Ok(all[0]),
            None if all.is_empty() => Err(format!(
                "no FHIR connector ([[connectors]] type = \"fhir\") in {}",
                self.path.display()
            )),
            None => Err(format!(
                "{} FHIR connectors are configured; choose one with --connector",
                all.len()
            )),
        }
    }

    /// The MLLP listeners to start: each HL7v2 connector with `listen`, parsed (validated at load).
    pub fn mllp_listeners(&self) -> Vec<(&Hl7ConnectorConfig, std::net::SocketAddr)> {
        self.config
            .connectors
            .iter()
            .filter_map(|c| match c {
                ConnectorConfig::Hl7v2(c) => c
                    .listen
                    .as_deref()
                    .and_then(|l| l.parse().ok())
                    .map(|a| (c, a)),
                _ => None,
            })
            .collect()
    }
}

/// What is wrong with a FHIR connector's settings.
fn validate_fhir(c: &FhirConnectorConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let name = &c.name;
    for code in &c.consent_codes {
        if code
            .split_once('|')
            .is_none_or(|(s, k)| s.is_empty() || k.is_empty())
        {
            errors.push(format!(
                "connector `{name}`: consent code `{code}` must be `system|code`, like http://loinc.org|59284-0"
            ));
        }
    }
    if let Some(s) = &c.subscription {
        if s.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!(
                "connector `{name}`: subscription.listen `{}` must be IP:port, like 0.0.0.0:8444",
                s.listen
            ));
        }
        if !s.path.starts_with('/') {
            errors.push(format!(
                "connector `{name}`: subscription.path must start with /"
            ));
        }
        if !is_env_name(&s.authorization_env) {
            errors.push(format!(
                "connector `{name}`: subscription.authorization_env `{}` must be an environment variable name (secrets never go in this file)",
                s.authorization_env
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&s.body_limit) {
            errors.push(format!(
                "connector `{name}`: subscription.body_limit must be between 1024 and 67108864"
            ));
        }
        errors.extend(
            listener_limit_problems(
                "subscription",
                s.max_connections,
                s.max_requests,
                s.header_timeout_secs,
                s.body_timeout_secs,
            )
            .into_iter()
            .map(|p| format!("connector `{name}`: {p}")),
        );
    }
    if c.write_back && c.server.is_none() {
        errors.push(format!(
            "connector `{name}`: write_back needs a [connectors.server] to write to"
        ));
    }
    if let Some(s) = &c.server {
        if !(s.base_url.starts_with("https://") || s.base_url.starts_with("http://")) {
            errors.push(format!(
                "connector `{name}`: server.base_url `{}` must be an http(s) URL",
                s.base_url
            ));
        }
        if s.authorization_env
            .as_deref()
            .is_some_and(|e| !is_env_name(e))
        {
            errors.push(format!(
                "connector `{name}`: server.authorization_env must be an environment variable name"
            ));
        }
        if s.timeout_secs == 0 {
            errors.push(format!(
                "connector `{name}`: server.timeout_secs must be at least 1"
            ));
        }
        if parse_duration(&s.poll_every).is_none_or(|d| !d.is_positive()) {
            errors.push(format!(
                "connector `{name}`: server.poll_every `{}` is not a duration like `15m`",
                s.poll_every
            ));
        }
        if parse_duration(&s.window).is_none_or(|d| !d.is_positive()) {
            errors.push(format!(
                "connector `{name}`: server.window `{}` is not a duration like `14d`",
                s.window
            ));
        }
    }
    errors
}

/// What is wrong with an HL7v2 connector's settings.
fn validate_hl7(c: &Hl7ConnectorConfig) -> Vec<String> {
    let mut errors = validate_hl7_protections(c);
    if let Some(l) = &c.listen
        && l.parse::<std::net::SocketAddr>().is_err()
    {
        errors.push(format!(
            "connector `{}`: listen `{l}` must be IP:port, like 0.0.0.0:2575",
            c.name
        ));
    }
    if c.max_connections == 0 || c.frame_timeout_secs == 0 {
        errors.push(format!(
            "connector `{}`: max_connections and frame_timeout_secs must be at least 1",
            c.name
        ));
    }
    if !(1024..=64 * 1024 * 1024).contains(&c.max_message_bytes) {
        errors.push(format!(
            "connector `{}`: max_message_bytes must be between 1024 and 67108864",
            c.name
        ));
    }
    if medrelay_connector_hl7v2::charset::encoding_for(&c.fallback_charset).is_none() {
        errors.push(format!(
            "connector `{}`: fallback_charset `{}` is not an MSH-18 character set (e.g. 8859/1, UNICODE UTF-8)",
            c.name, c.fallback_charset
        ));
    }
    if medrelay_connector_hl7v2::Ordering::parse(&c.ordering).is_none() {
        errors.push(format!(
            "connector `{}`: ordering `{}` must be arrival, message_time or event_time",
            c.name, c.ordering
        ));
    }
    for (local, status) in &c.status_map {
        if medrelay_connector_hl7v2::siu::status_key(local).is_empty() {
            errors.push(format!(
                "connector `{}`: status_map has a key without letters or digits",
                c.name
            ));
        }
        if medrelay_mapping::AppointmentStatus::from_code(status).is_none() {
            errors.push(format!(
                "connector `{}`: status_map value `{status}` is not a FHIR appointment status ({})",
                c.name,
                medrelay_mapping::AppointmentStatus::ALL
                    .map(|s| s.as_str())
                    .join(", ")
            ));
        }
    }
    for part in &c.location_parts {
        if medrelay_connector_hl7v2::LocationPart::parse(part).is_none() {
            errors.push(format!(
                "connector `{}`: location_parts: `{part}` is not one of {}",
                c.name,
                medrelay_connector_hl7v2::LocationPart::NAMES
            ));
        }
    }
    if let Some(w) = &c.write_back {
        if w.send_to
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            errors.push(format!(
                "connector `{}`: write_back.send_to `{}` must be host:port",
                c.name, w.send_to
            ));
        }
        for k in w.action_codes.keys() {
            if !["confirm", "cancel", "reschedule", "not_notified"].contains(&k.as_str()) {
                errors.push(format!(
                    "connector `{}`: write_back.action_codes: unknown action `{k}`",
                    c.name
                ));
            }
        }
        if w.timeout_secs == 0 {
            errors.push(format!(
                "connector `{}`: write_back.timeout_secs must be at least 1",
                c.name
            ));
        }
    }
    if let Some(code) = c
        .publicity_opt_out
        .iter()
        .find(|o| c.publicity_opt_in.iter().any(|i| i.eq_ignore_ascii_case(o)))
    {
        errors.push(format!(
            "connector `{}`: publicity code `{code}` is both an opt-in and an opt-out",
            c.name
        ));
    }
    errors
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
        survey: config.survey.clone(),
    };
    let compiled = pipeline
        .compile()
        .map_err(|e| errors.extend(e))
        .ok()
        .map(|mut c| {
            c.messaging_limit = config.whatsapp.messaging_limit;
            c.on_recategorised = config.whatsapp.on_recategorised;
            c
        });
    if config.whatsapp.messaging_limit == Some(0) {
        errors.push(
            "whatsapp.messaging_limit must be at least 1 (leave it out for unlimited)".into(),
        );
    }
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
    if let Err(e) = config.store.validate() {
        errors.push(e);
    }
    validate_tls(&config, &base, &mut errors);
    let mut names = std::collections::BTreeSet::new();
    for c in &config.connectors {
        if !names.insert(c.name().to_string()) {
            errors.push(format!("connectors: duplicate name `{}`", c.name()));
        }
        if !config.sites.contains_key(c.site()) {
            errors.push(format!(
                "connector `{}`: unknown site `{}`",
                c.name(),
                c.site()
            ));
        }
        if c.system().trim().is_empty() || c.system().contains('/') {
            errors.push(format!(
                "connector `{}`: system must be a non-empty name without `/`",
                c.name()
            ));
        }
        let c = match c {
            ConnectorConfig::Csv(c) => c,
            ConnectorConfig::Hl7v2(h) => {
                errors.extend(validate_hl7(h));
                continue;
            }
            ConnectorConfig::Fhir(f) => {
                errors.extend(validate_fhir(f));
                continue;
            }
        };
        if !profiles.contains_key(&c.profile) {
            errors.push(format!(
                "connector `{}`: unknown CSV profile `{}`",
                c.name, c.profile
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
        if let Some(o) = &c.open_slots
            && let Err(e) = o.profile.validate()
        {
            errors.extend(
                e.into_iter()
                    .map(|e| format!("connector `{}`: open_slots.profile: {e}", c.name)),
            );
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
    let sending_grace = parse_duration(&config.service.sending_grace)
        .filter(|d| d.is_positive())
        .unwrap_or_else(|| {
            errors.push(format!(
                "service.sending_grace `{}` is not a duration like `10m`",
                config.service.sending_grace
            ));
            jiff::SignedDuration::from_mins(10)
        });
    let cloud = config
        .whatsapp
        .resolve_cloud()
        .map_err(|e| errors.extend(e))
        .ok()
        .flatten();
    let webhook = &config.whatsapp.webhook;
    let webhook_listen = webhook.listen.as_deref().and_then(|l| {
        l.parse::<std::net::SocketAddr>()
            .map_err(|_| {
                errors.push(format!(
                    "whatsapp.webhook.listen `{l}` must be IP:port, like 0.0.0.0:8443"
                ))
            })
            .ok()
    });
    for (key, var) in [
        ("app_secret_env", &webhook.app_secret_env),
        ("verify_token_env", &webhook.verify_token_env),
    ] {
        if !is_env_name(var) {
            errors.push(format!(
                "whatsapp.webhook.{key} `{var}` must be an environment variable name (secrets never go in this file)"
            ));
        }
    }
    if !(1024..=16 * 1024 * 1024).contains(&webhook.body_limit) {
        errors.push("whatsapp.webhook.body_limit must be between 1024 and 16777216 bytes".into());
    }
    errors.extend(listener_limit_problems(
        "whatsapp.webhook",
        webhook.max_connections,
        webhook.max_requests,
        webhook.header_timeout_secs,
        webhook.body_timeout_secs,
    ));
    let feed_watches = compiled
        .as_ref()
        .map(|c| feed_watches(&config, c, &mut errors))
        .unwrap_or_default();
    if let Some(costs) = &config.costs {
        errors.extend(costs.problems());
    }
    let a = &config.alerts;
    let opt_out_window = medrelay_mapping::plan::parse_duration(&a.opt_out_window)
        .filter(|d| d.is_positive())
        .unwrap_or_else(|| {
            errors.push(format!(
                "alerts.opt_out_window `{}` must be a duration like 7d or 48h",
                a.opt_out_window
            ));
            jiff::SignedDuration::from_hours(7 * 24)
        });
    if !(0.0..1.0).contains(&a.opt_out_rate) {
        errors.push(
            "alerts.opt_out_rate must be a fraction from 0 (off) to below 1, like 0.02".into(),
        );
    }
    let thresholds = medrelay_pipeline::watch::Thresholds {
        quarantine_per_hour: (a.quarantine_per_hour > 0).then_some(a.quarantine_per_hour),
        opt_out_rate: (a.opt_out_rate > 0.0).then_some(a.opt_out_rate),
        opt_out_window,
        opt_out_min_contacts: a.opt_out_min_contacts,
        writeback_failing_after: medrelay_mapping::plan::parse_duration(&a.writeback_failing_after)
            .filter(|d| d.is_positive())
            .unwrap_or_else(|| {
                errors.push(format!(
                    "alerts.writeback_failing_after `{}` must be a duration like 15m",
                    a.writeback_failing_after
                ));
                jiff::SignedDuration::from_mins(15)
            }),
    };
    let console_listen = config.console.as_ref().and_then(|c| {
        if !(1..=24 * 7).contains(&c.session_hours) {
            errors.push("console.session_hours must be between 1 and 168".into());
        }
        if let Some(t) = &c.reengage_template
            && !config.templates.values().any(|x| &x.name == t)
        {
            errors.push(format!(
                "console.reengage_template `{t}` is not one of the configured [templates] (its name must be the WhatsApp template's)"
            ));
        }
        if let Some(o) = &c.oidc {
            // The provider and the callback are https, except on this machine (a test provider).
            let https_or_loopback = |u: &str| {
                reqwest::Url::parse(u).is_ok_and(|u| {
                    u.scheme() == "https"
                        || (u.scheme() == "http"
                            && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")))
                })
            };
            if !https_or_loopback(&o.issuer) {
                errors.push(format!(
                    "console.oidc.issuer `{}` must be an https URL",
                    o.issuer
                ));
            }
            if !https_or_loopback(&o.redirect_url) || !o.redirect_url.ends_with("/oidc/callback") {
                errors.push(format!(
                    "console.oidc.redirect_url `{}` must be this console's https URL ending in /oidc/callback",
                    o.redirect_url
                ));
            }
            if let Some(v) = &o.client_secret_env
                && !is_env_name(v)
            {
                errors.push(format!(
                    "console.oidc.client_secret_env `{v}` must be an environment variable name (secrets never go in this file)"
                ));
            }
            if o.client_id.trim().is_empty() || o.username_claim.trim().is_empty() {
                errors.push("console.oidc: client_id and username_claim must not be empty".into());
            }
        }
        match c.listen.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "console.listen `{}` must be IP:port, like 127.0.0.1:8092",
                    c.listen
                ));
                None
            }
        }
    });
    let status_page_listen = config.status_page.as_ref().and_then(|p| {
        if !is_env_name(&p.password_env) {
            errors.push(format!(
                "status_page.password_env `{}` must be an environment variable name (secrets never go in this file)",
                p.password_env
            ));
        }
        if p.user.is_empty() || p.user.contains(':') {
            errors.push("status_page.user must be a name without `:`".into());
        }
        if !(1..=366).contains(&p.report_days) {
            errors.push("status_page.report_days must be between 1 and 366".into());
        }
        p.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| {
                errors.push(format!(
                    "status_page.listen `{}` must be IP:port, like 127.0.0.1:8091",
                    p.listen
                ))
            })
            .ok()
    });
    match (compiled, errors.is_empty()) {
        (Some(compiled), true) => Ok(Loaded {
            path: path.to_path_buf(),
            base,
            config,
            compiled,
            profiles,
            poll_interval,
            sending_grace,
            cloud,
            webhook_listen,
            feed_watches,
            status_page_listen,
            console_listen,
            thresholds,
            tls_in_use: Arc::default(),
            smart_clients: Arc::default(),
        }),
        _ => Err(err(errors)),
    }
}

/// `path` relative to the configuration's folder `base`.
fn under(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn resolved_server_tls(base: &Path, f: &ServerTlsFiles) -> ServerTlsFiles {
    ServerTlsFiles {
        cert: under(base, &f.cert),
        key: under(base, &f.key),
        client_ca: f.client_ca.as_deref().map(|p| under(base, p)),
    }
}

fn resolved_client_tls(base: &Path, f: &ClientTlsFiles) -> ClientTlsFiles {
    ClientTlsFiles {
        ca: under(base, &f.ca),
        server_name: f.server_name.clone(),
        client_cert: f.client_cert.as_deref().map(|p| under(base, p)),
        client_key: f.client_key.as_deref().map(|p| under(base, p)),
    }
}

/// Every TLS section is read as the service would read it (certificate, key, CA), so that a
/// wrong file is found by `config check`, not at the first connection.
fn validate_tls(config: &Config, base: &Path, errors: &mut Vec<String>) {
    let mut servers: Vec<(String, &ServerTlsFiles)> = Vec::new();
    let mut clients: Vec<(String, &ClientTlsFiles)> = Vec::new();
    if let Some(t) = &config.whatsapp.webhook.tls {
        servers.push(("whatsapp.webhook.tls".into(), t));
    }
    for c in &config.connectors {
        match c {
            ConnectorConfig::Hl7v2(h) => {
                if let Some(t) = &h.tls {
                    if h.listen.is_none() {
                        errors.push(format!(
                            "connector `{}`: tls needs listen (it secures the MLLP listener)",
                            h.name
                        ));
                    }
                    servers.push((format!("connector `{}`: tls", h.name), t));
                }
                if let Some(t) = h.write_back.as_ref().and_then(|w| w.tls.as_ref()) {
                    clients.push((format!("connector `{}`: write_back.tls", h.name), t));
                }
            }
            ConnectorConfig::Fhir(f) => {
                if let Some(t) = f.subscription.as_ref().and_then(|s| s.tls.as_ref()) {
                    servers.push((format!("connector `{}`: subscription.tls", f.name), t));
                }
                if let Some(s) = &f.server {
                    validate_smart(base, &f.name, s, errors);
                }
            }
            ConnectorConfig::Csv(_) => {}
        }
    }
    for (label, files) in servers {
        if let Err(e) = ServerTls::load(&resolved_server_tls(base, files)) {
            errors.push(format!("{label}: {e}"));
        }
    }
    for (label, files) in clients {
        if let Err(e) = ClientTls::load(&resolved_client_tls(base, files)) {
            errors.push(format!("{label}: {e}"));
        }
    }
}

/// `[alerts.feeds]` checked against the connectors: each names one, with exactly one rhythm; a
/// daily time is read in the zone of the connector's site.
fn feed_watches(
    config: &Config,
    compiled: &Compiled,
    errors: &mut Vec<String>,
) -> Vec<medrelay_pipeline::silence::FeedWatch> {
    use medrelay_pipeline::silence::{Expectation, FeedWatch};
    let mut out = Vec::new();
    for (feed, e) in &config.alerts.feeds {
        let key = format!("alerts.feeds.{feed}");
        let Some(connector) = config.connectors.iter().find(|c| c.name() == feed) else {
            errors.push(format!("{key}: no connector is named `{feed}`"));
            continue;
        };
        let expect = match (&e.expect_every, &e.expect_by) {
            (Some(every), None) => match medrelay_mapping::plan::parse_duration(every) {
                Some(d) if d.is_positive() => Expectation::Every(d),
                _ => {
                    errors.push(format!(
                        "{key}.expect_every `{every}` is not a duration like `2h`"
                    ));
                    continue;
                }
            },
            (None, Some(by)) => {
                let Ok(time) = jiff::civil::Time::strptime("%H:%M", by.trim()) else {
                    errors.push(format!(
                        "{key}.expect_by `{by}` is not a local time like `06:00`"
                    ));
                    continue;
                };
                let zone = compiled
                    .sites
                    .get(connector.site())
                    .map_or(jiff::tz::TimeZone::UTC, |s| s.zone.clone());
                Expectation::DailyBy { time, zone }
            }
            _ => {
                errors.push(format!(
                    "{key}: set exactly one of `expect_every` (a stream) and `expect_by` (a daily export)"
                ));
                continue;
            }
        };
        out.push(FeedWatch {
            feed: feed.clone(),
            expect,
        });
    }
    // A Subscription with heartbeats is expected to be heard from every two periods.
    for c in &config.connectors {
        let ConnectorConfig::Fhir(f) = c else {
            continue;
        };
        let Some(period) = f
            .subscription
            .as_ref()
            .and_then(|s| s.heartbeat_period.as_ref())
        else {
            continue;
        };
        let Some(d) = medrelay_mapping::plan::parse_duration(period).filter(|d| d.is_positive())
        else {
            errors.push(format!(
                "connector `{}`: subscription.heartbeat_period `{period}` is not a duration like `60s` or `5m`",
                f.name
            ));
            continue;
        };
        if !out.iter().any(|w| w.feed == f.name) {
            out.push(FeedWatch {
                feed: f.name.clone(),
                expect: Expectation::Every(d * 2),
            });
        }
    }
    out
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
        assert_eq!(loaded.config.connectors.len(), 5);
        assert!(loaded.fhir_connector(None).is_ok());
        assert!(loaded.hl7_connector(None).is_ok());
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

    #[test]
    fn cloud_mode_takes_the_ids_from_whatsapp_and_checks_the_shape() {
        let text = std::fs::read_to_string(sample()).unwrap();
        let loaded = load_str(&text, &sample()).unwrap();
        assert!(
            loaded.cloud.is_none(),
            "simulator mode without a cloud table"
        );
        assert!(loaded.webhook_listen.is_none());

        // Cloud mode without a table: the defaults, with [whatsapp]'s ids.
        let cloud = text.replace("mode = \"simulator\"", "mode = \"cloud\"");
        let c = load_str(&cloud, &sample()).unwrap().cloud.unwrap();
        assert_eq!(c, CloudApiConfig::new("100000000000002", "100000000000001"));

        let with = |table: &str| {
            cloud.replacen(
                "\n[whatsapp.simulator]\n",
                &format!("\n{table}\n\n[whatsapp.simulator]\n"),
                1,
            )
        };
        let c = load_str(
            &with("[whatsapp.cloud]\nbase_url = \"http://127.0.0.1:8099\"\nper_second = 1000"),
            &sample(),
        )
        .unwrap()
        .cloud
        .unwrap();
        assert_eq!(
            (c.base_url.as_str(), c.per_second),
            ("http://127.0.0.1:8099", 1000)
        );

        let e = load_str(
            &with("[whatsapp.cloud]\nphone_number_id = \"9\"\n[whatsapp.webhook]\nlisten = \"localhost\""),
            &sample(),
        )
        .unwrap_err();
        assert!(
            e.errors
                .iter()
                .any(|m| m.contains("whatsapp.cloud.phone_number_id differs")),
            "{e}"
        );
        assert!(
            e.errors.iter().any(|m| m.contains("must be IP:port")),
            "{e}"
        );

        let e = load_str(
            &with("[whatsapp.cloud]\nbase_url = \"graph.facebook.com\"\ntoken_env = \"EAAG token\"\ntimeout_secs = 0"),
            &sample(),
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 4, "{e}");
    }

    #[test]
    fn missing_secrets_name_the_variable() {
        let text = std::fs::read_to_string(sample())
            .unwrap()
            .replace("mode = \"simulator\"", "mode = \"cloud\"")
            .replacen(
                "\n[whatsapp.simulator]\n",
                "\n[whatsapp.cloud]\ntoken_env = \"MEDRELAY_UNIT_NEVER_SET_1\"\n\
                 [whatsapp.webhook]\nlisten = \"127.0.0.1:8443\"\n\
                 app_secret_env = \"MEDRELAY_UNIT_NEVER_SET_2\"\n\
                 verify_token_env = \"MEDRELAY_UNIT_NEVER_SET_3\"\n\n[whatsapp.simulator]\n",
                1,
            )
            .replace(
                "# [connectors.subscription]\n# listen = \"127.0.0.1:8444\"\n# path = \"/fhir/subscription\"\n# authorization_env = \"CLINICA_FHIR_SUBSCRIPTION_AUTH\"",
                "[connectors.subscription]\nlisten = \"127.0.0.1:8444\"\nauthorization_env = \"MEDRELAY_UNIT_NEVER_SET_4\"",
            );
        let loaded = load_str(&text, &sample()).unwrap();
        let p = environment_problems(&loaded);
        assert_eq!(p.len(), 4, "{p:?}");
        for (i, m) in p.iter().enumerate() {
            assert!(
                m.contains(&format!("MEDRELAY_UNIT_NEVER_SET_{}", i + 1)),
                "{m}"
            );
        }
    }

    #[test]
    fn hl7_and_fhir_connector_settings_are_checked() {
        let text = std::fs::read_to_string(sample())
            .unwrap()
            .replace("# listen = \"0.0.0.0:2575\"", "listen = \"port 2575\"")
            .replace(
                "# fallback_charset = \"8859/1\"",
                "fallback_charset = \"EBCDIC\"",
            )
            .replace(
                "consent_codes = [\"http://loinc.org|59284-0\"]",
                "consent_codes = [\"59284-0\"]\nwrite_back = true",
            );
        let e = load_str(&text, &sample()).unwrap_err();
        for needle in [
            "listen `port 2575` must be IP:port",
            "fallback_charset `EBCDIC`",
            "consent code `59284-0` must be `system|code`",
            "write_back needs a [connectors.server]",
        ] {
            assert!(e.errors.iter().any(|m| m.contains(needle)), "{needle}: {e}");
        }
    }
    #[test]
    fn served_endpoint_limits_have_defaults_and_are_checked() {
        let text = std::fs::read_to_string(sample()).unwrap().replace(
            "# [connectors.subscription]\n# listen = \"127.0.0.1:8444\"\n# path = \"/fhir/subscription\"\n# authorization_env = \"CLINICA_FHIR_SUBSCRIPTION_AUTH\"",
            "[connectors.subscription]\nlisten = \"127.0.0.1:8444\"\nauthorization_env = \"MEDRELAY_UNIT_SUB\"",
        );
        let loaded = load_str(&text, &sample()).unwrap();
        let w = &loaded.config.whatsapp.webhook;
        let limits = (w.max_connections, w.max_requests, w.header_timeout_secs);
        assert_eq!((limits, w.body_timeout_secs), ((256, 16, 10), 30));
        let c = loaded.fhir_connector(None).unwrap();
        let s = c.subscription.clone().unwrap();
        let limits = (s.max_connections, s.max_requests, s.header_timeout_secs);
        assert_eq!((limits, s.body_timeout_secs), ((256, 4, 10), 60));
        assert_eq!(s.connection_limits().header_timeout.as_secs(), 10);
        assert_eq!(s.request_limits().body_limit, 8 * 1024 * 1024);

        let bad = text
            .replace(
                "authorization_env = \"MEDRELAY_UNIT_SUB\"",
                "authorization_env = \"MEDRELAY_UNIT_SUB\"\nmax_connections = 2\nmax_requests = 3\nheader_timeout_secs = 0",
            )
            .replacen(
                "\n[whatsapp.simulator]\n",
                "\n[whatsapp.webhook]\nmax_connections = 0\nbody_timeout_secs = 7200\n\n[whatsapp.simulator]\n",
                1,
            );
        let e = load_str(&bad, &sample()).unwrap_err();
        for needle in [
            "connector `clinica-fhir`: subscription.max_requests must be between 1 and max_connections",
            "connector `clinica-fhir`: subscription.header_timeout_secs must be between 1 and 600",
            "whatsapp.webhook.max_connections must be between 1 and 16384",
            "whatsapp.webhook.body_timeout_secs must be between 1 and 3600",
        ] {
            assert!(e.errors.iter().any(|m| m.contains(needle)), "{needle}: {e}");
        }
    }
}
