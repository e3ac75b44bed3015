//! The built-in WhatsApp Cloud API simulator, so the whole loop runs without a Meta account.
//!
//! It validates requests against the configured template registry like the Cloud API does (132001 for
//! an unknown template or language, 132000 for a wrong parameter count), answers with the same success
//! and error JSON, and produces the webhooks Meta would send: `sent`/`delivered`/`read` statuses (or
//! `failed` with 131026 for a blocklisted number) and, playing the patient, a quick-reply tap chosen by
//! a script or a deterministic reply mix. Webhook bodies are signed with `X-Hub-Signature-256`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::webhook::{
    BusinessNumber, InboundContent, InboundMessage, Pricing, StatusUpdate, message_webhook, sign,
    status_webhook,
};
use super::{Accepted, MediaFile, SendError, WhatsAppTransport, classify_response};
use crate::clock::Clock;

/// How simulated patients answer, in percent (the rest do not answer).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyMix {
    #[serde(default = "sixty")]
    pub confirm: u32,
    #[serde(default = "fifteen")]
    pub cancel: u32,
    #[serde(default)]
    pub reschedule: u32,
    /// A survey template (rating buttons): how patients rate the visit.
    #[serde(default = "sixty")]
    pub good: u32,
    #[serde(default = "twenty")]
    pub ok: u32,
    #[serde(default = "ten")]
    pub poor: u32,
}

fn sixty() -> u32 {
    60
}
fn fifteen() -> u32 {
    15
}
fn twenty() -> u32 {
    20
}
fn ten() -> u32 {
    10
}

impl Default for ReplyMix {
    fn default() -> Self {
        ReplyMix {
            confirm: 60,
            cancel: 15,
            reschedule: 0,
            good: 60,
            ok: 20,
            poor: 10,
        }
    }
}

/// Simulator settings (`[whatsapp.simulator]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Numbers (E.164 or digits) that are "not on WhatsApp": their messages fail with 131026.
    #[serde(default)]
    pub blocklist: Vec<String>,
    #[serde(default)]
    pub reply_mix: ReplyMix,
}

/// How many accepted request bodies [`Simulator::sent`] keeps (the oldest are dropped first).
pub const SENT_KEPT: usize = 50_000;

/// A template as the simulator's registry knows it.
#[derive(Clone, Debug, Default)]
pub struct SimTemplate {
    pub languages: Vec<String>,
    pub body_parameters: usize,
    /// Parameters of the TEXT header (0 or 1).
    pub header_parameters: usize,
    /// Button labels by index (`confirm`, `cancel`...): how the simulated patient finds a button.
    pub buttons: Vec<String>,
    /// `message_send_ttl_seconds` as the registry reports it.
    pub ttl_seconds: Option<i64>,
    /// `parameter_format: NAMED`: the body parameters' names, in order (`None`: positional).
    pub parameter_names: Option<Vec<String>>,
    /// The header parameter's name in a NAMED template.
    pub header_parameter_name: Option<String>,
    /// The category Meta approved it in (`UTILITY`, `MARKETING`...; empty reads as `UTILITY`):
    /// what the status webhooks' `pricing` says.
    pub category: String,
}

/// The `parameter_name`s of one component's parameters (`None` where a parameter has none).
fn parameter_names_of(components: &[Value], kind: &str) -> Vec<Option<String>> {
    components
        .iter()
        .filter(|c| {
            c["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case(kind))
        })
        .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
        .map(|p| p["parameter_name"].as_str().map(str::to_string))
        .collect()
}

/// What a scripted patient does with the next template message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatientAction {
    /// Tap the quick-reply button with this label.
    Tap(String),
    /// Send this text.
    Text(String),
    /// Do nothing.
    Ignore,
}

/// A webhook ready to POST: body and its signature header.
#[derive(Clone, Debug)]
pub struct SignedWebhook {
    pub body: Vec<u8>,
    pub signature: String,
}

#[derive(Default)]
struct State {
    seq: u64,
    /// The most recent accepted bodies (bounded: a long `medrelay simulate` must not grow forever).
    sent: VecDeque<Value>,
    webhooks: VecDeque<Value>,
    scripted: HashMap<String, VecDeque<PatientAction>>,
    fail_with: HashMap<String, i64>,
    /// When each patient last wrote (a tap or a text): their customer service window is open
    /// for 24 h from then.
    last_inbound: HashMap<String, i64>,
    /// Media the simulated patients sent, by media id (the Cloud API keeps them 30 days).
    media: HashMap<String, MediaFile>,
}

/// A customer service window's length (Meta: 24 h from the user's last message).
const SERVICE_WINDOW_SECONDS: i64 = 24 * 3600;

/// Bound on the windows remembered; beyond it, closed windows are forgotten.
const WINDOWS_KEPT: usize = 100_000;

impl State {
    fn window_open(&self, to: &str, now: i64) -> bool {
        self.last_inbound
            .get(to)
            .is_some_and(|&t| now < t + SERVICE_WINDOW_SECONDS)
    }

    fn patient_wrote(&mut self, from: &str, at: i64) {
        if self.last_inbound.len() >= WINDOWS_KEPT {
            self.last_inbound
                .retain(|_, t| at < *t + SERVICE_WINDOW_SECONDS);
        }
        let t = self.last_inbound.entry(from.to_string()).or_insert(at);
        *t = (*t).max(at);
    }
}

/// Codes Meta reports on the `failed` status webhook after accepting the send (not synchronously).
const ASYNC_FAILURES: [i64; 4] = [131026, 131047, 131049, 131050];

/// The HTTP status the Cloud API pairs with an error code.
pub fn http_status_for(code: i64) -> u16 {
    match code {
        130429 => 429,
        190 => 401,
        131000 | 131016 => 503,
        _ => 400,
    }
}

/// A short description for a simulated error code (what Meta's `message` says, roughly).
fn describe_code(code: i64) -> &'static str {
    match code {
        130429 => "Rate limit hit",
        131056 => "(Business Account, Consumer Account) pair rate limit hit",
        131026 => "Message undeliverable",
        131047 => "Re-engagement message",
        132000 => "Number of parameters does not match the expected number of params",
        132001 => "Template name does not exist in the translation",
        368 => "Temporarily blocked for policies violations",
        131048 => "Spam rate limit hit",
        190 => "Access token has expired",
        _ => "Simulated error",
    }
}

/// The Cloud API error JSON for `code` (used by the HTTP simulator's limits too).
pub fn error_json(code: i64, details: &str) -> Value {
    error_body(code, describe_code(code), details)
}

/// The simulator. Thread-safe; use one per test or demo.
pub struct Simulator {
    config: SimulatorConfig,
    templates: BTreeMap<String, SimTemplate>,
    business: BusinessNumber,
    app_secret: Vec<u8>,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

fn digits(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_digit()).collect()
}

fn error_body(code: i64, message: &str, details: &str) -> Value {
    json!({"error": {
        "message": format!("(#{code}) {message}"),
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details},
        "fbtrace_id": "ASimulatedTraceId"
    }})
}

/// FNV-1a: a stable hash so the reply mix is reproducible run after run.
fn stable_bucket(s: &str) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 100) as u32
}

/// Checks an `interactive` object as the Cloud API does (type, body, the list's button, sections
/// and rows, or the reply buttons, with their lengths) and returns what the patient can choose:
/// (title, id) pairs. The error is the `error_data.details` text of a 131009.
fn check_interactive(i: &Value) -> Result<(bool, Vec<(String, String)>), String> {
    use super::interactive_limits as lim;
    let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
    let within = |v: &Value, max: usize, what: &str| match chars(v) {
        Some(n) if n > 0 && n <= max => Ok(()),
        Some(n) if n > max => Err(format!("{what} is {n} characters; the limit is {max}")),
        _ => Err(format!("{what} is required")),
    };
    within(&i["body"]["text"], lim::BODY_CHARS, "body.text")?;
    let mut choices = Vec::new();
    match i["type"].as_str() {
        Some("list") => {
            within(
                &i["action"]["button"],
                lim::LIST_BUTTON_CHARS,
                "action.button",
            )?;
            let sections = i["action"]["sections"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if sections.is_empty() || sections.len() > lim::LIST_SECTIONS {
                return Err(format!(
                    "action.sections: {} sections; 1 to {} are allowed",
                    sections.len(),
                    lim::LIST_SECTIONS
                ));
            }
            for (n, section) in sections.iter().enumerate() {
                if sections.len() > 1 {
                    within(
                        &section["title"],
                        lim::ROW_TITLE_CHARS,
                        &format!("sections[{n}].title"),
                    )?;
                }
                let rows = section["rows"].as_array().cloned().unwrap_or_default();
                if rows.is_empty() {
                    return Err(format!("sections[{n}].rows: at least one row is required"));
                }
                for (r, row) in rows.iter().enumerate() {
                    let at = format!("sections[{n}].rows[{r}]");
                    within(&row["id"], lim::ROW_ID_CHARS, &format!("{at}.id"))?;
                    within(&row["title"], lim::ROW_TITLE_CHARS, &format!("{at}.title"))?;
                    if !row["description"].is_null() {
                        within(
                            &row["description"],
                            lim::ROW_DESCRIPTION_CHARS,
                            &format!("{at}.description"),
                        )?;
                    }
                    choices.push((
                        row["title"].as_str().unwrap_or_default().to_string(),
                        row["id"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
            if choices.len() > lim::LIST_ROWS {
                return Err(format!(
                    "Total row count exceed max allowed count: {} ({} given)",
                    lim::LIST_ROWS,
                    choices.len()
                ));
            }
            let mut ids: Vec<&String> = choices.iter().map(|(_, id)| id).collect();
            ids.sort();
            ids.dedup();
            if ids.len() != choices.len() {
                return Err("row ids must be unique".into());
            }
            Ok((true, choices))
        }
        Some("button") => {
            let buttons = i["action"]["buttons"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if buttons.is_empty() || buttons.len() > lim::REPLY_BUTTONS {
                return Err(format!(
                    "action.buttons: {} buttons; 1 to {} are allowed",
                    buttons.len(),
                    lim::REPLY_BUTTONS
                ));
            }
            for (n, b) in buttons.iter().enumerate() {
                if b["type"] != "reply" {
                    return Err(format!("buttons[{n}].type must be reply"));
                }
                within(
                    &b["reply"]["id"],
                    lim::REPLY_BUTTON_ID_CHARS,
                    &format!("buttons[{n}].reply.id"),
                )?;
                within(
                    &b["reply"]["title"],
                    lim::REPLY_BUTTON_TITLE_CHARS,
                    &format!("buttons[{n}].reply.title"),
                )?;
                choices.push((
                    b["reply"]["title"].as_str().unwrap_or_default().to_string(),
                    b["reply"]["id"].as_str().unwrap_or_default().to_string(),
                ));
            }
            Ok((false, choices))
        }
        other => Err(format!(
            "interactive.type {} is not supported (list, button)",
            other.unwrap_or("(missing)")
        )),
    }
}

impl Simulator {
    /// A simulator with a template registry, signing its webhooks with `app_secret`.
    pub fn new(
        config: SimulatorConfig,
        templates: BTreeMap<String, SimTemplate>,
        business: BusinessNumber,
        app_secret: &[u8],
        clock: Arc<dyn Clock>,
    ) -> Self {
        Simulator {
            config,
            templates,
            business,
            app_secret: app_secret.to_vec(),
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Queues what the patient at `to` does with the next template messages, in order.
    pub fn script(&self, to: &str, actions: impl IntoIterator<Item = PatientAction>) {
        let mut st = self.state.lock().expect("simulator lock");
        st.scripted.entry(digits(to)).or_default().extend(actions);
    }

    /// Makes every later send to `to` fail with `code`: synchronously with the Cloud API error JSON
    /// and HTTP status, or, for codes Meta reports after accepting (131026, 131049, 131050), through a
    /// `failed` status webhook. For tests and `medrelay simulate` scenarios.
    pub fn fail_with(&self, to: &str, code: i64) {
        let mut st = self.state.lock().expect("simulator lock");
        st.fail_with.insert(digits(to), code);
    }

    /// The template registry the simulator validates against (served by the HTTP simulator).
    pub fn registry(&self) -> &BTreeMap<String, SimTemplate> {
        &self.templates
    }

    /// The business number the simulator plays.
    pub fn business(&self) -> &BusinessNumber {
        &self.business
    }

    /// The request bodies accepted so far (the last [`SENT_KEPT`]), exactly as received.
    pub fn sent(&self) -> Vec<Value> {
        self.state
            .lock()
            .expect("simulator lock")
            .sent
            .iter()
            .cloned()
            .collect()
    }

    /// Queues an inbound text from a patient (as if typed on the phone).
    pub fn patient_texts(&self, from: &str, body: &str) {
        let mut st = self.state.lock().expect("simulator lock");
        st.seq += 1;
        let msg = InboundMessage {
            id: format!("wamid.SIMIN{:012}", st.seq),
            from: digits(from),
            timestamp: self.clock.now().as_second(),
            context_id: None,
            content: InboundContent::Text { body: body.into() },
        };
        st.patient_wrote(&msg.from, msg.timestamp);
        let wh = message_webhook(&self.business, &msg);
        st.webhooks.push_back(wh);
    }

    /// Queues a media message from a patient (an image, a document...): the webhook carries its
    /// media id, and the file can be fetched like from the Cloud API. Returns the media id.
    pub fn patient_sends_media(
        &self,
        from: &str,
        kind: &str,
        file: MediaFile,
        caption: Option<&str>,
    ) -> String {
        let mut st = self.state.lock().expect("simulator lock");
        st.seq += 1;
        // Meta's media ids are numeric strings.
        let media_id = format!("{}", 900_000_000_000u64 + st.seq);
        st.media.insert(media_id.clone(), file);
        let msg = InboundMessage {
            id: format!("wamid.SIMIN{:012}", st.seq),
            from: digits(from),
            timestamp: self.clock.now().as_second(),
            context_id: None,
            content: InboundContent::Media {
                kind: kind.into(),
                media_id: Some(media_id.clone()),
                caption: caption.map(str::to_owned),
            },
        };
        st.patient_wrote(&msg.from, msg.timestamp);
        let wh = message_webhook(&self.business, &msg);
        st.webhooks.push_back(wh);
        media_id
    }

    /// A media file a simulated patient sent (what `GET /{media-id}` and its URL serve).
    pub fn media(&self, media_id: &str) -> Option<MediaFile> {
        self.state
            .lock()
            .expect("simulator lock")
            .media
            .get(media_id)
            .cloned()
    }

    /// Takes the webhooks produced so far, signed, in the order Meta would send them.
    pub fn take_webhooks(&self) -> Vec<SignedWebhook> {
        let mut st = self.state.lock().expect("simulator lock");
        st.webhooks
            .drain(..)
            .map(|v| {
                let body = v.to_string().into_bytes();
                SignedWebhook {
                    signature: sign(&self.app_secret, &body),
                    body,
                }
            })
            .collect()
    }

    /// Handles one `POST /messages` body: the success JSON, or the HTTP status and error JSON.
    pub fn handle_send(&self, body: &Value) -> Result<Value, (u16, Value)> {
        if body["messaging_product"] != "whatsapp" {
            return Err((
                400,
                error_body(
                    100,
                    "Invalid parameter",
                    "messaging_product must be whatsapp",
                ),
            ));
        }
        let Some(to) = body["to"].as_str().map(digits).filter(|d| d.len() >= 7) else {
            return Err((400, error_body(100, "Invalid parameter", "to is required")));
        };
        let injected = self
            .state
            .lock()
            .expect("simulator lock")
            .fail_with
            .get(&to)
            .copied();
        if let Some(code) = injected.filter(|c| !ASYNC_FAILURES.contains(c)) {
            return Err((http_status_for(code), error_json(code, "simulated failure")));
        }
        let mut tap_labels = Vec::new();
        let mut list = false;
        match body["type"].as_str() {
            Some("template") => {
                let name = body["template"]["name"].as_str().unwrap_or_default();
                let lang = body["template"]["language"]["code"]
                    .as_str()
                    .unwrap_or_default();
                let Some(t) = self.templates.get(name) else {
                    return Err((
                        404,
                        error_body(
                            132001,
                            "Template name does not exist in the translation",
                            &format!("template name ({name}) does not exist in {lang}"),
                        ),
                    ));
                };
                if !t.languages.iter().any(|l| l == lang) {
                    return Err((
                        404,
                        error_body(
                            132001,
                            "Template name does not exist in the translation",
                            &format!("template name ({name}) does not exist in {lang}"),
                        ),
                    ));
                }
                let components = body["template"]["components"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let body_names = parameter_names_of(&components, "body");
                let header_names = parameter_names_of(&components, "header");
                let (body_params, header_params) = (body_names.len(), header_names.len());
                if header_params != t.header_parameters {
                    return Err((
                        400,
                        error_json(
                            132000,
                            &format!(
                                "header: number of localizable_params ({header_params}) does not match the expected number of params ({})",
                                t.header_parameters
                            ),
                        ),
                    ));
                }
                // A NAMED template needs every parameter named (Meta: #100 "Parameter name is
                // missing or empty"), and by the template's own names.
                if let Some(names) = &t.parameter_names {
                    if body_names.iter().chain(&header_names).any(Option::is_none) {
                        return Err((
                            400,
                            error_body(
                                100,
                                "Invalid parameter",
                                "Parameter name is missing or empty",
                            ),
                        ));
                    }
                    let mut given: Vec<String> = body_names.into_iter().flatten().collect();
                    let mut expected = names.clone();
                    given.sort();
                    expected.sort();
                    let header_ok = header_names.is_empty()
                        || header_names.first().cloned().flatten() == t.header_parameter_name;
                    if given != expected || !header_ok {
                        return Err((
                            400,
                            error_json(
                                132000,
                                "parameter names do not match the template's named parameters",
                            ),
                        ));
                    }
                }
                if body_params != t.body_parameters {
                    return Err((
                        400,
                        error_json(
                            132000,
                            &format!(
                                "body: number of localizable_params ({body_params}) does not match the expected number of params ({})",
                                t.body_parameters
                            ),
                        ),
                    ));
                }
                for (i, label) in t.buttons.iter().enumerate() {
                    let payload = components
                        .iter()
                        .find(|c| {
                            c["type"]
                                .as_str()
                                .is_some_and(|t| t.eq_ignore_ascii_case("button"))
                                && (c["index"] == json!(i.to_string()) || c["index"] == json!(i))
                        })
                        .and_then(|c| c["parameters"][0]["payload"].as_str());
                    if let Some(p) = payload {
                        tap_labels.push((label.clone(), p.to_string()));
                    }
                }
            }
            Some("interactive") => match check_interactive(&body["interactive"]) {
                Ok((is_list, choices)) => {
                    list = is_list;
                    tap_labels = choices;
                }
                Err(details) => {
                    return Err((
                        400,
                        error_body(131009, "Parameter value is not valid", &details),
                    ));
                }
            },
            Some("text") => {
                if body["text"]["body"].as_str().is_none_or(str::is_empty) {
                    return Err((
                        400,
                        error_body(100, "Invalid parameter", "text.body is required"),
                    ));
                }
            }
            _ => {
                return Err((
                    400,
                    error_body(100, "Invalid parameter", "unsupported message type"),
                ));
            }
        }
        let now = self.clock.now().as_second();
        let mut st = self.state.lock().expect("simulator lock");
        st.seq += 1;
        let wamid = format!("wamid.SIM{:012}", st.seq);
        if st.sent.len() >= SENT_KEPT {
            st.sent.pop_front();
        }
        st.sent.push_back(body.clone());
        let callback = body["biz_opaque_callback_data"]
            .as_str()
            .map(str::to_string);
        // Meta's per-message pricing: a template in its approved category, free for a utility
        // template inside an open customer service window; a service message (text) is free
        // inside the window and cannot be sent outside it (131047, reported on the status).
        let window_open = st.window_open(&to, now);
        let pricing = if body["type"] == "template" {
            let name = body["template"]["name"].as_str().unwrap_or_default();
            let category = self
                .templates
                .get(name)
                .map(|t| t.category.to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "utility".into());
            let free = window_open && category == "utility";
            Pricing {
                billable: !free,
                kind: if free {
                    "free_customer_service"
                } else {
                    "regular"
                }
                .into(),
                category,
            }
        } else {
            Pricing {
                billable: false,
                category: "service".into(),
                kind: "free_customer_service".into(),
            }
        };
        let status = |status: &str, at: i64, error_code: Option<i64>| StatusUpdate {
            wamid: wamid.clone(),
            status: status.into(),
            timestamp: at,
            recipient_id: to.clone(),
            error_code,
            callback: callback.clone(),
            pricing: Some(pricing.clone()),
        };
        let async_failure = injected
            .filter(|c| ASYNC_FAILURES.contains(c))
            .or_else(|| {
                self.config
                    .blocklist
                    .iter()
                    .any(|b| digits(b) == to)
                    .then_some(131026)
            })
            .or_else(|| (body["type"] != "template" && !window_open).then_some(131047));
        if let Some(code) = async_failure {
            let wh = status_webhook(&self.business, &status("failed", now, Some(code)));
            st.webhooks.push_back(wh);
        } else {
            for (s, dt) in [("sent", 0), ("delivered", 1), ("read", 5)] {
                let wh = status_webhook(&self.business, &status(s, now + dt, None));
                st.webhooks.push_back(wh);
            }
            if !tap_labels.is_empty() {
                let interactive = body["type"] == "interactive";
                let rating = tap_labels
                    .iter()
                    .any(|(l, _)| matches!(l.as_str(), "good" | "ok" | "poor"));
                let action = match st.scripted.get_mut(&to).and_then(VecDeque::pop_front) {
                    Some(a) => a,
                    None => {
                        let mix = &self.config.reply_mix;
                        let bucket = stable_bucket(callback.as_deref().unwrap_or(&wamid));
                        if interactive {
                            // A patient shown a list or buttons picks one of them.
                            PatientAction::Tap(
                                tap_labels[bucket as usize % tap_labels.len()].0.clone(),
                            )
                        } else if rating {
                            if bucket < mix.good {
                                PatientAction::Tap("good".into())
                            } else if bucket < mix.good + mix.ok {
                                PatientAction::Tap("ok".into())
                            } else if bucket < mix.good + mix.ok + mix.poor {
                                PatientAction::Tap("poor".into())
                            } else {
                                PatientAction::Ignore
                            }
                        } else if bucket < mix.confirm {
                            PatientAction::Tap("confirm".into())
                        } else if bucket < mix.confirm + mix.cancel {
                            PatientAction::Tap("cancel".into())
                        } else if bucket < mix.confirm + mix.cancel + mix.reschedule {
                            PatientAction::Tap("reschedule".into())
                        } else {
                            PatientAction::Ignore
                        }
                    }
                };
                let content =
                    match action {
                        PatientAction::Tap(label) => tap_labels
                            .iter()
                            .find(|(l, _)| *l == label)
                            .map(|(title, p)| {
                                if interactive {
                                    InboundContent::Interactive {
                                        id: p.clone(),
                                        list,
                                        title: Some(title.clone()),
                                    }
                                } else {
                                    InboundContent::Button { payload: p.clone() }
                                }
                            }),
                        PatientAction::Text(body) => Some(InboundContent::Text { body }),
                        PatientAction::Ignore => None,
                    };
                if let Some(content) = content {
                    st.seq += 1;
                    let msg = InboundMessage {
                        id: format!("wamid.SIMIN{:012}", st.seq),
                        from: to.clone(),
                        timestamp: now + 60,
                        context_id: Some(wamid.clone()),
                        content,
                    };
                    st.patient_wrote(&msg.from, msg.timestamp);
                    let wh = message_webhook(&self.business, &msg);
                    st.webhooks.push_back(wh);
                }
            }
        }
        Ok(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": to}],
            "messages": [{"id": wamid, "message_status": "accepted"}]
        }))
    }
}

#[async_trait]
impl WhatsAppTransport for Simulator {
    async fn send(&self, body: &Value) -> Result<Accepted, SendError> {
        match self.handle_send(body) {
            Ok(v) => Ok(Accepted {
                wamid: v["messages"][0]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }),
            Err((status, err)) => Err(classify_response(status, Some(&err))),
        }
    }

    async fn fetch_media(&self, media_id: &str) -> Result<MediaFile, SendError> {
        self.media(media_id).ok_or_else(|| SendError::Permanent {
            code: 100,
            detail: "media not found".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::whatsapp::webhook::parse;
    use crate::whatsapp::{ListRow, list_message};

    const PATIENT: &str = "5511987654321";

    fn simulator() -> (Simulator, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new("2026-06-01T12:00:00Z".parse().unwrap()));
        let business = BusinessNumber {
            waba_id: "1".into(),
            phone_number_id: "2".into(),
            display_phone_number: "15550001".into(),
        };
        let sim = Simulator::new(
            SimulatorConfig::default(),
            BTreeMap::new(),
            business,
            b"secret",
            clock.clone(),
        );
        (sim, clock)
    }

    fn rows(n: usize) -> Vec<ListRow> {
        (0..n)
            .map(|i| ListRow {
                id: format!("row{i}"),
                title: i.to_string(),
                description: None,
            })
            .collect()
    }

    /// What the simulator told the webhook endpoint: statuses and messages, parsed.
    fn webhooks(sim: &Simulator) -> Vec<crate::whatsapp::webhook::Webhook> {
        sim.take_webhooks()
            .iter()
            .map(|w| parse(&w.body).unwrap())
            .collect()
    }

    #[test]
    fn a_list_outside_the_customer_service_window_fails_with_131047() {
        let (sim, _clock) = simulator();
        let accepted = sim
            .handle_send(&list_message(PATIENT, "Pick", "Choose", &rows(3), None))
            .unwrap();
        assert_eq!(accepted["messages"][0]["message_status"], "accepted");
        let statuses: Vec<_> = webhooks(&sim)
            .into_iter()
            .flat_map(|w| w.statuses)
            .collect();
        assert_eq!(statuses.len(), 1);
        assert_eq!(
            (statuses[0].status.as_str(), statuses[0].error_code),
            ("failed", Some(131047))
        );
    }

    #[test]
    fn inside_the_window_a_list_is_delivered_and_the_patient_picks_a_row() {
        let (sim, clock) = simulator();
        sim.patient_texts(PATIENT, "hello");
        sim.take_webhooks();
        clock.advance(jiff::SignedDuration::from_hours(23));
        sim.script(PATIENT, [PatientAction::Tap("2".into())]);
        sim.handle_send(&list_message(PATIENT, "Pick", "Choose", &rows(10), None))
            .unwrap();
        let hooks = webhooks(&sim);
        let statuses: Vec<String> = hooks
            .iter()
            .flat_map(|w| w.statuses.iter().map(|s| s.status.clone()))
            .collect();
        assert_eq!(statuses, ["sent", "delivered", "read"]);
        let picked: Vec<_> = hooks.iter().flat_map(|w| w.messages.clone()).collect();
        assert_eq!(
            picked[0].content,
            InboundContent::Interactive {
                id: "row2".into(),
                list: true,
                title: Some("2".into())
            }
        );
        assert!(picked[0].context_id.is_some());
        // 24 h after the patient's last message the window is closed again.
        clock.advance(jiff::SignedDuration::from_hours(25));
        sim.handle_send(&list_message(PATIENT, "Pick", "Choose", &rows(2), None))
            .unwrap();
        let failed: Vec<_> = webhooks(&sim)
            .into_iter()
            .flat_map(|w| w.statuses)
            .collect();
        assert_eq!(failed[0].error_code, Some(131047));
    }

    #[test]
    fn lists_and_buttons_beyond_the_cloud_api_limits_are_refused_with_131009() {
        let (sim, _clock) = simulator();
        let refused = |body: Value| {
            let (status, err) = sim.handle_send(&body).unwrap_err();
            assert_eq!(status, 400);
            assert_eq!(err["error"]["code"], 131009, "{err}");
            err["error"]["error_data"]["details"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let eleven = refused(list_message(PATIENT, "Pick", "Choose", &rows(11), None));
        assert!(eleven.contains("max allowed count: 10"), "{eleven}");
        let mut long = rows(1);
        long[0].title = "A title of more than twenty-four".into();
        let title = refused(list_message(PATIENT, "Pick", "Choose", &long, None));
        assert!(title.contains("title is 32 characters"), "{title}");
        let button = refused(list_message(
            PATIENT,
            "Pick",
            "A button label that is too long",
            &rows(1),
            None,
        ));
        assert!(button.contains("action.button"), "{button}");
        let four = json!({
            "messaging_product": "whatsapp", "to": PATIENT, "type": "interactive",
            "interactive": {"type": "button", "body": {"text": "Take it?"}, "action": {"buttons":
                (0..4).map(|i| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": "Yes"}})).collect::<Vec<_>>()}}
        });
        assert!(refused(four).contains("1 to 3"));
        let mut duplicate = rows(2);
        duplicate[1].id = "row0".into();
        assert!(
            refused(list_message(PATIENT, "Pick", "Choose", &duplicate, None)).contains("unique")
        );
    }
}
