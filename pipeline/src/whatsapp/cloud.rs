//! The real WhatsApp Cloud API transport, and the template registry check.
//!
//! [`CloudApiClient`] POSTs the bodies built in [`super`] to `{base_url}/{graph_version}/{phone_number_id}/messages`
//! with the access token as a bearer. reqwest is built with a total and a connect timeout and **no
//! retries of its own**: a POST is not idempotent, so retrying is the outbox's decision (it reconciles
//! through `biz_opaque_callback_data` when a timed-out send was in fact accepted).
//!
//! Errors are classified with [`super::classify`] from the HTTP status and `error.code`; timeouts and
//! connection failures are [`SendError::Retry`]. No request or response body, URL with parameters, or
//! token is ever put in an error or a log line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{
    Accepted, MEDIA_MAX_BYTES, MediaFile, SendError, WhatsAppTransport, classify_response,
};
use crate::config::CompiledTemplate;

fn default_base_url() -> String {
    "https://graph.facebook.com".into()
}
fn default_graph_version() -> String {
    "v23.0".into()
}
fn default_token_env() -> String {
    "WHATSAPP_TOKEN".into()
}
fn default_per_second() -> u32 {
    80
}
fn default_pair_interval() -> u64 {
    6
}
fn default_timeout() -> u64 {
    20
}
fn default_connect_timeout() -> u64 {
    5
}

/// Cloud API settings (`[whatsapp.cloud]`): where to send, as which number, and how fast.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CloudApiConfig {
    /// Graph API root; the simulator's address in tests and `medrelay simulate`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Graph API version in the path (`v23.0`); pinned so a Meta default change cannot surprise us.
    #[serde(default = "default_graph_version")]
    pub graph_version: String,
    /// The business phone number's id (not the number itself).
    pub phone_number_id: String,
    /// WhatsApp Business Account id, for the template registry.
    pub waba_id: String,
    /// Environment variable holding the access token (never the token itself in a file).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Throughput of the business number: 80/s by default, 1,000/s after Meta's upgrade.
    #[serde(default = "default_per_second")]
    pub per_second: u32,
    /// Minimum seconds between two messages to one recipient (Meta's pair limit, about 6 s).
    #[serde(default = "default_pair_interval")]
    pub pair_interval_secs: u64,
    /// Whole-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// TCP + TLS connect timeout, seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

impl CloudApiConfig {
    /// A config with the defaults, for the given number and account.
    pub fn new(phone_number_id: impl Into<String>, waba_id: impl Into<String>) -> Self {
        CloudApiConfig {
            base_url: default_base_url(),
            graph_version: default_graph_version(),
            phone_number_id: phone_number_id.into(),
            waba_id: waba_id.into(),
            token_env: default_token_env(),
            per_second: default_per_second(),
            pair_interval_secs: default_pair_interval(),
            timeout_secs: default_timeout(),
            connect_timeout_secs: default_connect_timeout(),
        }
    }

    /// The pacing limits this number must respect.
    pub fn pacing_limits(&self) -> super::pacing::PacingLimits {
        super::pacing::PacingLimits {
            per_second: self.per_second,
            pair_interval: Duration::from_secs(self.pair_interval_secs),
        }
    }
}

/// The access token. Its `Debug`/`Display` never show it, so it cannot leak through a log or a panic.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        ApiToken(token.into())
    }

    /// Reads the token from the environment variable `var` (error names the variable, not the value).
    pub fn from_env(var: &str) -> Result<Self, CloudError> {
        match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(ApiToken(t.trim().to_string())),
            _ => Err(CloudError::MissingToken(var.to_string())),
        }
    }

    /// The token itself: only for the `Authorization` header (and comparing it in the simulator).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Failures outside of sending a message (setup, template registry). No PHI, no token.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("environment variable {0} with the WhatsApp access token is not set")]
    MissingToken(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("Cloud API request failed: {0}")]
    Http(String),
    #[error("Cloud API answered HTTP {status} (code {code:?})")]
    Api { status: u16, code: Option<i64> },
    #[error("Cloud API answer could not be read: {0}")]
    Decode(String),
}

/// reqwest errors without the URL (it may carry query parameters).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_decode() || e.is_body() {
        "response body"
    } else if e.is_request() {
        "request"
    } else {
        "transport"
    };
    let mut detail = e.to_string();
    if let Some(url) = e.url() {
        detail = detail.replace(url.as_str(), "<url>");
    }
    format!("{kind}: {detail}")
}

/// A Cloud API client for one business number.
pub struct CloudApiClient {
    http: reqwest::Client,
    config: CloudApiConfig,
    token: ApiToken,
    messages_url: String,
}

impl fmt::Debug for CloudApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudApiClient")
            .field("base_url", &self.config.base_url)
            .field("phone_number_id", &self.config.phone_number_id)
            .field("token", &self.token)
            .finish()
    }
}

/// A message template as the registry (`GET /{waba_id}/message_templates`) describes it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RemoteTemplate {
    /// Meta's template id (for support tickets).
    #[serde(default)]
    pub id: Option<String>,
    /// The name sends use (`template.name`).
    pub name: String,
    /// The language code sends use (`template.language.code`), e.g. `pt_BR`.
    pub language: String,
    /// APPROVED, PENDING, REJECTED, PAUSED, DISABLED...
    #[serde(default)]
    pub status: String,
    /// UTILITY, MARKETING or AUTHENTICATION: reminders must stay UTILITY.
    #[serde(default)]
    pub category: Option<String>,
    /// POSITIONAL (`{{1}}`) or NAMED (`{{name}}`); absent means positional.
    #[serde(default)]
    pub parameter_format: Option<String>,
    #[serde(default)]
    pub components: Vec<RemoteComponent>,
    /// How long WhatsApp keeps trying to deliver (absent: the category default, 30 days for utility).
    #[serde(default)]
    pub message_send_ttl_seconds: Option<i64>,
}

/// One component of a registry template (HEADER, BODY, FOOTER, BUTTONS).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RemoteComponent {
    /// HEADER, BODY, FOOTER or BUTTONS.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The text with its `{{..}}` placeholders (HEADER, BODY, FOOTER).
    #[serde(default)]
    pub text: Option<String>,
    /// A HEADER's format: TEXT, or a media kind (IMAGE, VIDEO, DOCUMENT, LOCATION).
    #[serde(default)]
    pub format: Option<String>,
    /// The buttons of a BUTTONS component.
    #[serde(default)]
    pub buttons: Vec<RemoteButton>,
}

/// A button of a BUTTONS component.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RemoteButton {
    /// QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE, FLOW...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The label the patient sees.
    #[serde(default)]
    pub text: Option<String>,
}

impl RemoteTemplate {
    fn component_text(&self, kind: &str) -> Option<&str> {
        self.components
            .iter()
            .find(|c| c.kind.eq_ignore_ascii_case(kind))
            .and_then(|c| c.text.as_deref())
    }

    /// The distinct placeholders of the BODY text (`1`, `2` or names), in order of appearance.
    pub fn body_placeholders(&self) -> Vec<String> {
        placeholders(self.component_text("BODY").unwrap_or_default())
    }

    /// The placeholders of the HEADER text (a TEXT header has at most one); none for media headers.
    pub fn header_placeholders(&self) -> Vec<String> {
        placeholders(self.component_text("HEADER").unwrap_or_default())
    }

    /// The HEADER's media format (IMAGE, VIDEO, DOCUMENT, LOCATION), if it has one: every send would
    /// need a media parameter, which medrelay's reminders never carry.
    pub fn media_header(&self) -> Option<String> {
        self.components
            .iter()
            .filter(|c| c.kind.eq_ignore_ascii_case("HEADER"))
            .filter_map(|c| c.format.clone())
            .find(|f| !f.eq_ignore_ascii_case("TEXT"))
    }
}

/// The distinct `{{..}}` placeholders of a component text, in order of appearance.
fn placeholders(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().to_string();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
        rest = &after[end + 2..];
    }
    out
}

impl RemoteTemplate {
    /// Number of QUICK_REPLY buttons.
    pub fn quick_replies(&self) -> usize {
        self.components
            .iter()
            .filter(|c| c.kind.eq_ignore_ascii_case("BUTTONS"))
            .flat_map(|c| &c.buttons)
            .filter(|b| b.kind.eq_ignore_ascii_case("QUICK_REPLY"))
            .count()
    }
}

#[derive(Deserialize)]
struct TemplatePage {
    #[serde(default)]
    data: Vec<RemoteTemplate>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

impl CloudApiClient {
    /// A client with an explicit token.
    pub fn new(config: CloudApiConfig, token: ApiToken) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(config.connect_timeout_secs.max(1)))
            .retry(reqwest::retry::never())
            .user_agent(concat!("medrelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Client(describe(&e)))?;
        let messages_url = format!(
            "{}/{}/{}/messages",
            config.base_url.trim_end_matches('/'),
            config.graph_version,
            config.phone_number_id
        );
        Ok(CloudApiClient {
            http,
            config,
            token,
            messages_url,
        })
    }

    /// A client whose token comes from the environment variable named in the config.
    pub fn from_env(config: CloudApiConfig) -> Result<Self, CloudError> {
        let token = ApiToken::from_env(&config.token_env)?;
        CloudApiClient::new(config, token)
    }

    /// The settings in use.
    pub fn config(&self) -> &CloudApiConfig {
        &self.config
    }

    /// Reads every template of the business account, following the cursor paging.
    pub async fn fetch_templates(&self) -> Result<Vec<RemoteTemplate>, CloudError> {
        let url = format!(
            "{}/{}/{}/message_templates",
            self.config.base_url.trim_end_matches('/'),
            self.config.graph_version,
            self.config.waba_id
        );
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        // A bound, so a server that keeps returning `next` cannot loop us forever.
        for _ in 0..1000 {
            let mut page_url = reqwest::Url::parse(&url)
                .map_err(|e| CloudError::Client(format!("base_url: {e}")))?;
            if let Some(a) = &after {
                page_url.query_pairs_mut().append_pair("after", a);
            }
            let bytes = self.graph_get(page_url).await?;
            let page: TemplatePage = serde_json::from_slice(&bytes)
                .map_err(|e| CloudError::Decode(format!("template page: {e}")))?;
            out.extend(page.data);
            let next = page.paging.and_then(|p| {
                p.next.as_ref()?;
                p.cursors?.after
            });
            match next {
                Some(a) if after.as_deref() != Some(a.as_str()) => after = Some(a),
                _ => return Ok(out),
            }
        }
        Ok(out)
    }
}

/// The business number's messaging limit as the Graph API or a webhook states it: `TIER_250`,
/// `TIER_2K`, `TIER_10K`, `TIER_100K`, `TIER_UNLIMITED` (also `TIER_50`, `TIER_1K` of older
/// accounts), or a plain number. `Some(None)` is unlimited; `None`: not a limit we can read.
pub fn parse_messaging_limit(value: &str) -> Option<Option<u32>> {
    let v = value.trim().to_ascii_uppercase();
    if let Ok(n) = v.parse::<u32>() {
        return Some(Some(n));
    }
    let tier = v.strip_prefix("TIER_")?;
    if tier == "UNLIMITED" {
        return Some(None);
    }
    let (digits, scale) = match tier.strip_suffix('K') {
        Some(d) => (d, 1000),
        None => (tier, 1),
    };
    digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .map(Some)
}

/// A messaging limit as a Graph API field holds it: `"TIER_2K"`, `2000`, or an object with
/// `tier`, `current_limit` or `limit`.
fn limit_of(v: &Value) -> Option<Option<u32>> {
    match v {
        Value::String(s) => parse_messaging_limit(s),
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some),
        Value::Object(o) => ["tier", "current_limit", "limit"]
            .iter()
            .find_map(|k| o.get(*k).filter(|v| !v.is_object()).and_then(limit_of)),
        _ => None,
    }
}

impl CloudApiClient {
    /// `GET url` with the token: the body of a 2xx answer, else the status and Meta's error code.
    async fn graph_get(&self, url: impl reqwest::IntoUrl) -> Result<axum::body::Bytes, CloudError> {
        let resp = self
            .http
            .get(url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| CloudError::Http(describe(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CloudError::Http(describe(&e)))?;
        if !(200..300).contains(&status) {
            let code = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["code"].as_i64());
            return Err(CloudError::Api { status, code });
        }
        Ok(bytes)
    }

    /// Reads the business number's messaging limit (`whatsapp_business_manager_messaging_limit`,
    /// else the older `messaging_limit_tier`). `Ok(None)` when the answer has neither (the token
    /// may not see it); `Ok(Some(None))` for unlimited.
    pub async fn fetch_messaging_limit(&self) -> Result<Option<Option<u32>>, CloudError> {
        let url = format!(
            "{}/{}/{}?fields=whatsapp_business_manager_messaging_limit,messaging_limit_tier",
            self.config.base_url.trim_end_matches('/'),
            self.config.graph_version,
            self.config.phone_number_id
        );
        let body: Value = serde_json::from_slice(&self.graph_get(url).await?)
            .map_err(|e| CloudError::Decode(format!("phone number: {e}")))?;
        Ok(limit_of(&body["whatsapp_business_manager_messaging_limit"])
            .or_else(|| limit_of(&body["messaging_limit_tier"])))
    }
}

#[async_trait]
impl WhatsAppTransport for CloudApiClient {
    async fn send(&self, body: &Value) -> Result<Accepted, SendError> {
        let resp = self
            .http
            .post(&self.messages_url)
            .bearer_auth(self.token.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| SendError::Retry {
                code: None,
                detail: describe(&e),
            })?;
        let status = resp.status().as_u16();
        // A body that cannot be read after a 2xx may still mean "accepted": the outbox reconciles
        // through the status webhook's callback data.
        let bytes = resp.bytes().await.map_err(|e| SendError::Retry {
            code: None,
            detail: describe(&e),
        })?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if (200..300).contains(&status) {
            return match json
                .as_ref()
                .and_then(|v| v["messages"][0]["id"].as_str())
                .filter(|id| !id.is_empty())
            {
                Some(id) => Ok(Accepted {
                    wamid: id.to_string(),
                }),
                None => Err(SendError::Retry {
                    code: None,
                    detail: format!("HTTP {status} without a message id"),
                }),
            };
        }
        Err(classify_response(status, json.as_ref()))
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaFile, SendError> {
        let permanent = |detail: &str| SendError::Permanent {
            code: 0,
            detail: detail.into(),
        };
        let retry = |e: &reqwest::Error| SendError::Retry {
            code: None,
            detail: describe(e),
        };
        // The id comes from a webhook: it goes into a URL path only if it is a plain id.
        if media_id.is_empty()
            || media_id.len() > 128
            || !media_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(permanent("not a media id"));
        }
        let base = self.config.base_url.trim_end_matches('/');
        let url = format!("{base}/{}/{media_id}", self.config.graph_version);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| retry(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| retry(&e))?;
        let meta: Option<Value> = serde_json::from_slice(&bytes).ok();
        if !(200..300).contains(&status) {
            return Err(classify_response(status, meta.as_ref()));
        }
        let meta = meta.ok_or_else(|| permanent("the media lookup answer is not JSON"))?;
        let (Some(file_url), Some(mime)) = (meta["url"].as_str(), meta["mime_type"].as_str())
        else {
            return Err(permanent("the media lookup answer has no url or mime_type"));
        };
        if meta["file_size"]
            .as_u64()
            .is_some_and(|n| n > MEDIA_MAX_BYTES as u64)
        {
            return Err(permanent("the media file is larger than 100 MiB"));
        }
        // The access token goes only to Meta's media host or to the configured API host (the
        // simulator), never to wherever a lookup answer points.
        let file_url = reqwest::Url::parse(file_url).map_err(|_| permanent("bad media url"))?;
        let api_host = reqwest::Url::parse(base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let trusted = file_url.host_str().is_some_and(|h| {
            h == "lookaside.fbsbx.com"
                || h.ends_with(".fbsbx.com")
                || h.ends_with(".whatsapp.net")
                || Some(h) == api_host.as_deref()
        }) && (file_url.scheme() == "https"
            || api_host.as_deref() == file_url.host_str());
        if !trusted {
            return Err(permanent("the media url is not on a WhatsApp media host"));
        }
        let mut resp = self
            .http
            .get(file_url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| retry(&e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(classify_response(status, None));
        }
        let mut file = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| retry(&e))? {
            if file.len() + chunk.len() > MEDIA_MAX_BYTES {
                return Err(permanent("the media file is larger than 100 MiB"));
            }
            file.extend_from_slice(&chunk);
        }
        if let Some(want) = meta["sha256"].as_str() {
            use sha2::{Digest, Sha256};
            if !hex::encode(Sha256::digest(&file)).eq_ignore_ascii_case(want) {
                return Err(permanent("the media file does not match its sha256"));
            }
        }
        Ok(MediaFile {
            mime_type: mime.to_string(),
            bytes: file,
        })
    }
}

/// What is wrong between a configured template and the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateIssue {
    /// No template with this name in this language.
    Missing,
    /// Present but not usable (`PENDING`, `REJECTED`, `PAUSED`, `DISABLED`).
    NotApproved { status: String },
    /// The BODY has a different number of placeholders than the configured parameters (132000).
    BodyParameters { configured: usize, registry: usize },
    /// Named vs positional parameters, or different names.
    ParameterNames {
        configured: Vec<String>,
        registry: Vec<String>,
    },
    /// The HEADER has a different number of placeholders (or a different name) than configured.
    HeaderParameter {
        configured: Option<String>,
        registry: Vec<String>,
    },
    /// The registry's header is an image, video, document or location: sends need media we never send.
    MediaHeader { format: String },
    /// A different number of quick-reply buttons.
    QuickReplies { configured: usize, registry: usize },
    /// The registry's category is not UTILITY (every step medrelay sends is a utility message: a
    /// template approved or recategorised as MARKETING is priced as marketing, undeliverable to
    /// some countries, 131049 to +1 numbers, and under other TTL rules).
    Category { registry: String },
    /// The registry's `message_send_ttl_seconds` is not the configured `ttl`.
    Ttl {
        configured: i64,
        registry: Option<i64>,
    },
}

/// One problem found by [`check_templates`]; it names templates, never patients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateProblem {
    /// Key in `[templates]`.
    pub key: String,
    /// Template name in WhatsApp Manager.
    pub name: String,
    /// The configured language that has the problem.
    pub language: String,
    /// What is wrong.
    pub issue: TemplateIssue,
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "templates.{} ({} / {}): ",
            self.key, self.name, self.language
        )?;
        match &self.issue {
            TemplateIssue::Missing => write!(f, "not in the WhatsApp Business Account"),
            TemplateIssue::NotApproved { status } => write!(f, "status is {status}, not APPROVED"),
            TemplateIssue::BodyParameters {
                configured,
                registry,
            } => write!(
                f,
                "body has {registry} placeholders but {configured} parameters are configured (sends would fail with 132000)"
            ),
            TemplateIssue::ParameterNames {
                configured,
                registry,
            } => write!(
                f,
                "parameter names differ: configured {configured:?}, registry {registry:?}"
            ),
            TemplateIssue::HeaderParameter {
                configured,
                registry,
            } => write!(
                f,
                "header has {} placeholder(s) {registry:?} but {} configured (sends would fail with 132000)",
                registry.len(),
                match configured {
                    Some(c) => format!("one parameter ({c})"),
                    None => "no parameter".to_string(),
                }
            ),
            TemplateIssue::MediaHeader { format } => write!(
                f,
                "the header is {format}: every send would need a media parameter medrelay does not send; use a TEXT header"
            ),
            TemplateIssue::QuickReplies {
                configured,
                registry,
            } => write!(
                f,
                "{registry} quick-reply buttons in the registry, {configured} configured"
            ),
            TemplateIssue::Category { registry } => write!(
                f,
                "category is {registry}, not UTILITY: appointment messages are utility messages (a MARKETING template is priced as marketing and not delivered to +1 numbers, 131049); ask Meta to recategorise or use another template"
            ),
            TemplateIssue::Ttl {
                configured,
                registry,
            } => match registry {
                Some(r) => write!(
                    f,
                    "message_send_ttl_seconds is {r} in the registry, {configured} configured"
                ),
                None => write!(
                    f,
                    "no message_send_ttl_seconds in the registry (WhatsApp's 30-day default), {configured} configured: set it in WhatsApp Manager"
                ),
            },
        }
    }
}

fn normal_language(l: &str) -> String {
    l.replace('-', "_").to_ascii_lowercase()
}

/// Compares the configured templates with the registry: every configured language exists, is
/// APPROVED, has as many body placeholders as configured parameters (and the same names for NAMED
/// templates), and as many quick-reply buttons. Pure, for `medrelay templates check`.
pub fn check_templates(
    configured: &BTreeMap<String, CompiledTemplate>,
    remote: &[RemoteTemplate],
) -> Vec<TemplateProblem> {
    let mut problems = Vec::new();
    for (key, t) in configured {
        for language in &t.languages {
            let problem = |issue| TemplateProblem {
                key: key.clone(),
                name: t.name.clone(),
                language: language.clone(),
                issue,
            };
            let found = remote.iter().find(|r| {
                r.name == t.name && normal_language(&r.language) == normal_language(language)
            });
            let Some(r) = found else {
                problems.push(problem(TemplateIssue::Missing));
                continue;
            };
            if !r.status.eq_ignore_ascii_case("APPROVED") {
                problems.push(problem(TemplateIssue::NotApproved {
                    status: r.status.clone(),
                }));
            }
            if let Some(category) = r.category.as_deref()
                && !category.eq_ignore_ascii_case("UTILITY")
            {
                problems.push(problem(TemplateIssue::Category {
                    registry: category.to_owned(),
                }));
            }
            let placeholders = r.body_placeholders();
            if placeholders.len() != t.body.len() {
                problems.push(problem(TemplateIssue::BodyParameters {
                    configured: t.body.len(),
                    registry: placeholders.len(),
                }));
            }
            let named = r
                .parameter_format
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case("NAMED"));
            match (&t.parameter_names, named) {
                (Some(names), true) => {
                    let a: BTreeSet<&String> = names.iter().collect();
                    let b: BTreeSet<&String> = placeholders.iter().collect();
                    if a != b {
                        problems.push(problem(TemplateIssue::ParameterNames {
                            configured: names.clone(),
                            registry: placeholders.clone(),
                        }));
                    }
                }
                (None, false) => {}
                (configured, _) => problems.push(problem(TemplateIssue::ParameterNames {
                    configured: configured.clone().unwrap_or_default(),
                    registry: if named {
                        placeholders.clone()
                    } else {
                        Vec::new()
                    },
                })),
            }
            if let Some(ttl) = t.ttl.map(|d| d.as_secs())
                && r.message_send_ttl_seconds != Some(ttl)
            {
                problems.push(problem(TemplateIssue::Ttl {
                    configured: ttl,
                    registry: r.message_send_ttl_seconds,
                }));
            }
            if let Some(format) = r.media_header() {
                problems.push(problem(TemplateIssue::MediaHeader { format }));
            }
            let header = r.header_placeholders();
            let header_ok = match (&t.header, &t.header_parameter_name) {
                (None, _) => header.is_empty(),
                (Some(_), Some(name)) if named => header == [name.clone()],
                (Some(_), _) => header.len() == 1,
            };
            if !header_ok {
                problems.push(problem(TemplateIssue::HeaderParameter {
                    configured: t.header.map(|_| {
                        t.header_parameter_name
                            .clone()
                            .unwrap_or_else(|| "1".to_string())
                    }),
                    registry: header,
                }));
            }
            if r.quick_replies() != t.buttons.len() {
                problems.push(problem(TemplateIssue::QuickReplies {
                    configured: t.buttons.len(),
                    registry: r.quick_replies(),
                }));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use medrelay_mapping::reply::{Choice, ReplyAction};
    use medrelay_mapping::template::{PhiLevel, TemplateField};

    fn configured(names: Option<Vec<String>>) -> BTreeMap<String, CompiledTemplate> {
        let body = vec![
            TemplateField::parse("given_name", PhiLevel::Standard).unwrap(),
            TemplateField::parse("local_date", PhiLevel::Standard).unwrap(),
        ];
        BTreeMap::from([(
            "reminder".to_string(),
            CompiledTemplate {
                key: "reminder".into(),
                name: "appt_reminder".into(),
                languages: vec!["pt_BR".into(), "en_US".into()],
                body,
                parameter_names: names,
                header: None,
                header_parameter_name: None,
                buttons: vec![
                    Choice::Reply(ReplyAction::Confirm),
                    Choice::Reply(ReplyAction::Cancel),
                ],
                ttl: None,
            },
        )])
    }

    fn remote(language: &str, status: &str, body: &str, buttons: usize) -> RemoteTemplate {
        RemoteTemplate {
            name: "appt_reminder".into(),
            language: language.into(),
            status: status.into(),
            components: vec![
                RemoteComponent {
                    kind: "BODY".into(),
                    text: Some(body.into()),
                    ..Default::default()
                },
                RemoteComponent {
                    kind: "BUTTONS".into(),
                    buttons: (0..buttons)
                        .map(|_| RemoteButton {
                            kind: "QUICK_REPLY".into(),
                            text: Some("x".into()),
                        })
                        .collect(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_matching_registry_has_no_problems() {
        let r = vec![
            remote("pt_BR", "APPROVED", "Olá {{1}}, consulta {{2}}. {{1}}", 2),
            remote("en_US", "APPROVED", "Hi {{1}}, on {{2}}", 2),
        ];
        assert_eq!(check_templates(&configured(None), &r), vec![]);
    }

    #[test]
    fn a_template_recategorised_as_marketing_is_reported() {
        let mut marketing = remote("pt_BR", "APPROVED", "Olá {{1}}, consulta {{2}}.", 2);
        marketing.category = Some("MARKETING".into());
        let mut utility = remote("en_US", "APPROVED", "Hi {{1}}, on {{2}}", 2);
        utility.category = Some("UTILITY".into());
        let p = check_templates(&configured(None), &[marketing, utility]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].issue,
            TemplateIssue::Category {
                registry: "MARKETING".into()
            }
        );
        assert!(p[0].to_string().contains("not UTILITY"), "{}", p[0]);
    }

    #[test]
    fn each_kind_of_mismatch_is_reported() {
        let r = vec![
            remote("pt_BR", "PAUSED", "Olá {{1}}", 3),
            // en_US missing
        ];
        let p = check_templates(&configured(None), &r);
        let issues: Vec<_> = p.iter().map(|p| p.issue.clone()).collect();
        assert!(issues.contains(&TemplateIssue::NotApproved {
            status: "PAUSED".into()
        }));
        assert!(issues.contains(&TemplateIssue::BodyParameters {
            configured: 2,
            registry: 1
        }));
        assert!(issues.contains(&TemplateIssue::QuickReplies {
            configured: 2,
            registry: 3
        }));
        assert!(issues.contains(&TemplateIssue::Missing));
        assert!(
            p[0].to_string()
                .starts_with("templates.reminder (appt_reminder / ")
        );
    }

    #[test]
    fn header_parameters_are_compared_with_the_registry() {
        let header = |text: &str| RemoteComponent {
            kind: "HEADER".into(),
            text: Some(text.into()),
            format: Some("TEXT".into()),
            buttons: vec![],
        };
        let mut with_header = configured(None);
        with_header.get_mut("reminder").unwrap().header =
            Some(TemplateField::parse("location", PhiLevel::Standard).unwrap());
        let mut r = vec![
            remote("pt_BR", "APPROVED", "Olá {{1}}, consulta {{2}}", 2),
            remote("en_US", "APPROVED", "Hi {{1}}, on {{2}}", 2),
        ];
        // The registry's header is fixed text: the configured parameter would fail with 132000.
        for t in &mut r {
            t.components.insert(0, header("Your appointment"));
        }
        let p = check_templates(&with_header, &r);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(matches!(
            &p[0].issue,
            TemplateIssue::HeaderParameter { configured: Some(_), registry } if registry.is_empty()
        ));
        assert!(p[0].to_string().contains("132000"), "{}", p[0]);
        // With a placeholder it matches; the unconfigured template now has one too many.
        for t in &mut r {
            t.components[0] = header("Appointment at {{1}}");
        }
        assert_eq!(check_templates(&with_header, &r), vec![]);
        assert_eq!(check_templates(&configured(None), &r).len(), 2);
        // An image header cannot be filled by a reminder at all.
        for t in &mut r {
            t.components[0] = RemoteComponent {
                kind: "HEADER".into(),
                format: Some("IMAGE".into()),
                ..Default::default()
            };
        }
        let p = check_templates(&configured(None), &r);
        assert!(
            p.iter().all(|p| p.issue
                == TemplateIssue::MediaHeader {
                    format: "IMAGE".into()
                }),
            "{p:?}"
        );
        assert!(p[0].to_string().contains("TEXT header"), "{}", p[0]);
    }

    #[test]
    fn named_parameters_are_compared_by_name() {
        let names = Some(vec!["first_name".to_string(), "date".to_string()]);
        let mut ok = remote("pt_BR", "APPROVED", "Olá {{first_name}} {{date}}", 2);
        ok.parameter_format = Some("NAMED".into());
        let mut en = ok.clone();
        en.language = "en_US".into();
        assert_eq!(
            check_templates(&configured(names.clone()), &[ok.clone(), en.clone()]),
            vec![]
        );
        en.components[0].text = Some("Hi {{name}} {{date}}".into());
        let p = check_templates(&configured(names.clone()), &[ok.clone(), en]);
        assert!(
            matches!(p[0].issue, TemplateIssue::ParameterNames { .. }),
            "{p:?}"
        );
        // Positional in the registry, named in config.
        let mut pos = remote("pt_BR", "APPROVED", "Olá {{1}} {{2}}", 2);
        pos.parameter_format = Some("POSITIONAL".into());
        let p = check_templates(&configured(names), &[pos]);
        assert!(
            p.iter()
                .any(|p| matches!(p.issue, TemplateIssue::ParameterNames { .. }))
        );
    }

    #[test]
    fn the_token_never_shows() {
        let t = ApiToken::new("EAAGsecret");
        assert!(!format!("{t:?}").contains("EAAG"));
        let c = CloudApiClient::new(CloudApiConfig::new("1", "2"), t).unwrap();
        assert!(!format!("{c:?}").contains("EAAG"));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: CloudApiConfig = toml::from_str("phone_number_id = \"1\"\nwaba_id = \"2\"").unwrap();
        assert_eq!(c, CloudApiConfig::new("1", "2"));
        assert_eq!(c.base_url, "https://graph.facebook.com");
        assert_eq!(c.graph_version, "v23.0");
        assert_eq!(c.per_second, 80);
        assert!(
            toml::from_str::<CloudApiConfig>(
                "phone_number_id = \"1\"\nwaba_id = \"2\"\ntoken = \"x\""
            )
            .is_err()
        );
    }
}
