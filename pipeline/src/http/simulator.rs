//! `medrelay simulate`: the [`Simulator`] behind the Cloud API's HTTP surface, so the real
//! [`crate::whatsapp::cloud::CloudApiClient`] (and anyone else's client) can be pointed at it.
//!
//! - `POST /{version}/{phone_number_id}/messages`: [`Simulator::handle_send`], same success and error
//!   JSON and HTTP status as the Cloud API, behind the two limits Meta enforces: more than
//!   `per_second` messages in the last second gives 130429 (HTTP 429), and a second message to one
//!   recipient within `pair_interval_secs` gives 131056.
//! - `GET /{version}/{waba_id}/message_templates`: the simulator's registry in the Cloud API shape
//!   (`data`, `paging.cursors`, `paging.next`), paged by `limit` and `after`.
//! - `GET /{version}/{phone_number_id}?fields=...`: the phone number object, including its
//!   messaging limit (`whatsapp_business_manager_messaging_limit`, `messaging_limit_tier`).
//! - `GET /{version}/{media_id}`: a media object a simulated patient sent (`url`, `mime_type`,
//!   `sha256`, `file_size`), whose `url` (`GET /sim-media/{media_id}`, bearer token required)
//!   serves the file, as Meta's media endpoints do.
//! - a background task ([`SimServer::spawn_webhook_pusher`]) that POSTs the simulator's signed webhooks
//!   to a callback URL, retrying failures with backoff as Meta does.
//!
//! Log lines carry counts and codes, never numbers or bodies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::whatsapp::cloud::ApiToken;
use crate::whatsapp::simulator::{Simulator, error_json, http_status_for};

fn eighty() -> u32 {
    80
}
fn six() -> u64 {
    6
}
fn page_size() -> usize {
    25
}
fn twelve() -> u32 {
    12
}
fn tier_250() -> String {
    "TIER_250".into()
}

/// Settings of the simulator server (`[whatsapp.simulator.server]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimServerConfig {
    /// Throughput limit of the simulated business number (130429 above it).
    #[serde(default = "eighty")]
    pub per_second: u32,
    /// Pair limit: minimum seconds between two messages to one recipient (131056 below it); 0 disables.
    #[serde(default = "six")]
    pub pair_interval_secs: u64,
    /// Where to POST the simulator's webhooks (medrelay's `/webhook`); none keeps them in memory.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Templates per registry page when the request has no `limit`.
    #[serde(default = "page_size")]
    pub page_size: usize,
    /// Recipient (E.164 or digits) -> error code every send to it gets (see [`Simulator::fail_with`]).
    #[serde(default)]
    pub fail_with: BTreeMap<String, i64>,
    /// Delivery attempts per webhook before it is dropped (Meta keeps trying for days).
    #[serde(default = "twelve")]
    pub webhook_attempts: u32,
    /// The messaging limit the phone number object reports (`TIER_250` for a new portfolio).
    #[serde(default = "tier_250")]
    pub messaging_limit_tier: String,
    /// When set, requests must carry `Authorization: Bearer <token>` (else 401, code 190). Set in code
    /// from the environment, never from a file.
    #[serde(skip)]
    pub token: Option<ApiToken>,
}

impl Default for SimServerConfig {
    fn default() -> Self {
        SimServerConfig {
            per_second: eighty(),
            pair_interval_secs: six(),
            callback_url: None,
            page_size: page_size(),
            fail_with: BTreeMap::new(),
            webhook_attempts: twelve(),
            messaging_limit_tier: tier_250(),
            token: None,
        }
    }
}

/// What the server saw: for tests and the pacing benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimServerStats {
    /// Messages accepted by the simulator.
    pub accepted: u64,
    /// Requests answered with an error by the simulator itself (template, injected codes...).
    pub errors: u64,
    /// Requests refused with 130429.
    pub throughput_rejections: u64,
    /// Requests refused with 131056.
    pub pair_rejections: u64,
    /// Most requests that passed the throughput check within one second (sliding window).
    pub max_per_second: u64,
    /// Webhooks delivered to the callback URL (2xx).
    pub webhooks_delivered: u64,
    /// Failed webhook delivery attempts (each is retried).
    pub webhook_failures: u64,
    /// Webhooks given up on after `webhook_attempts`.
    pub webhooks_dropped: u64,
}

#[derive(Default)]
struct Limits {
    window: VecDeque<Instant>,
    last_to: HashMap<String, Instant>,
    stats: SimServerStats,
}

struct Inner {
    sim: Arc<Simulator>,
    config: SimServerConfig,
    limits: Mutex<Limits>,
    produced: Notify,
}

/// The simulator server. Cheap to clone.
#[derive(Clone)]
pub struct SimServer {
    inner: Arc<Inner>,
}

fn error(code: i64, details: &str) -> Response {
    let status = StatusCode::from_u16(http_status_for(code)).unwrap_or(StatusCode::BAD_REQUEST);
    (status, axum::Json(error_json(code, details))).into_response()
}

fn digits(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_digit()).collect()
}

impl SimServer {
    /// A server around `sim`; `config.fail_with` is applied to the simulator.
    pub fn new(sim: Arc<Simulator>, config: SimServerConfig) -> Self {
        for (to, code) in &config.fail_with {
            sim.fail_with(to, *code);
        }
        SimServer {
            inner: Arc::new(Inner {
                sim,
                config,
                limits: Mutex::new(Limits::default()),
                produced: Notify::new(),
            }),
        }
    }

    /// The simulator behind this server (scripts, `fail_with`, `sent`).
    pub fn simulator(&self) -> &Arc<Simulator> {
        &self.inner.sim
    }

    /// Counters so far.
    pub fn stats(&self) -> SimServerStats {
        self.inner.limits.lock().expect("limits lock").stats
    }

    /// The router (see the module docs).
    pub fn router(&self) -> Router {
        simulator_router(self.clone())
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.inner.config.token else {
            return true;
        };
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|got| medrelay_listener::same(got.as_bytes(), want.expose().as_bytes()))
    }

    /// Applies the throughput and pair limits to one request; `Err` is the error code to answer.
    fn admit(&self, to: Option<&str>) -> Result<(), i64> {
        let now = Instant::now();
        let cfg = &self.inner.config;
        let mut l = self.inner.limits.lock().expect("limits lock");
        while l
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            l.window.pop_front();
        }
        if l.window.len() >= cfg.per_second.max(1) as usize {
            l.stats.throughput_rejections += 1;
            return Err(130429);
        }
        l.window.push_back(now);
        l.stats.max_per_second = l.stats.max_per_second.max(l.window.len() as u64);
        if let Some(to) = to.filter(|_| cfg.pair_interval_secs > 0) {
            let interval = Duration::from_secs(cfg.pair_interval_secs);
            if l.last_to
                .get(to)
                .is_some_and(|last| now.duration_since(*last) < interval)
            {
                l.stats.pair_rejections += 1;
                return Err(131056);
            }
            l.last_to.insert(to.to_string(), now);
            if l.last_to.len() > 100_000 {
                l.last_to.retain(|_, t| now.duration_since(*t) < interval);
            }
        }
        Ok(())
    }

    fn count(&self, f: impl FnOnce(&mut SimServerStats)) {
        f(&mut self.inner.limits.lock().expect("limits lock").stats);
    }

    /// Starts the task that POSTs the simulator's signed webhooks to `callback_url` (in order, each
    /// retried with backoff from 250 ms up to 30 s, `webhook_attempts` times). It wakes on every
    /// accepted send and every 200 ms; it stops when `shutdown` is notified.
    pub fn spawn_webhook_pusher(
        &self,
        callback_url: String,
        shutdown: Arc<Notify>,
    ) -> JoinHandle<()> {
        let server = self.clone();
        tokio::spawn(async move {
            let http = match reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(2))
                .retry(reqwest::retry::never())
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "webhook pusher could not start");
                    return;
                }
            };
            loop {
                for wh in server.inner.sim.take_webhooks() {
                    let mut backoff = Duration::from_millis(250);
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let res = http
                            .post(&callback_url)
                            .header("content-type", "application/json")
                            .header("x-hub-signature-256", &wh.signature)
                            .body(wh.body.clone())
                            .send()
                            .await;
                        match res {
                            Ok(r) if r.status().is_success() => {
                                server.count(|s| s.webhooks_delivered += 1);
                                break;
                            }
                            other => {
                                let status = other.as_ref().ok().map(|r| r.status().as_u16());
                                server.count(|s| s.webhook_failures += 1);
                                if attempt >= server.inner.config.webhook_attempts.max(1) {
                                    warn!(
                                        ?status,
                                        attempt, "webhook dropped after repeated failures"
                                    );
                                    server.count(|s| s.webhooks_dropped += 1);
                                    break;
                                }
                                debug!(?status, attempt, "webhook delivery failed; retrying");
                                tokio::select! {
                                    _ = tokio::time::sleep(backoff) => {}
                                    _ = shutdown.notified() => return,
                                }
                                backoff = (backoff * 2).min(Duration::from_secs(30));
                            }
                        }
                    }
                }
                tokio::select! {
                    _ = server.inner.produced.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = shutdown.notified() => return,
                }
            }
        })
    }
}

async fn messages(
    State(server): State<SimServer>,
    Path((_version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !server.authorized(&headers) {
        return error(190, "Error validating access token");
    }
    if id != server.inner.sim.business().phone_number_id {
        return error(
            100,
            "Unsupported post request. Object with this ID does not exist",
        );
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return error(100, "Invalid JSON body");
    };
    let to = json["to"].as_str().map(digits).filter(|d| !d.is_empty());
    if let Err(code) = server.admit(to.as_deref()) {
        let details = if code == 130429 {
            "Message failed to send because there were too many messages sent from this phone number in a short period of time"
        } else {
            "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time"
        };
        return error(code, details);
    }
    match server.inner.sim.handle_send(&json) {
        Ok(ok) => {
            server.count(|s| s.accepted += 1);
            server.inner.produced.notify_one();
            (StatusCode::OK, axum::Json(ok)).into_response()
        }
        Err((status, err)) => {
            server.count(|s| s.errors += 1);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, axum::Json(err)).into_response()
        }
    }
}

/// The registry entries, one per (template, language), in the Cloud API's `Template` shape.
fn registry_json(sim: &Simulator) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, t) in sim.registry() {
        let placeholders: Vec<String> = match &t.parameter_names {
            Some(names) => names.iter().map(|n| format!("{{{{{n}}}}}")).collect(),
            None => (1..=t.body_parameters)
                .map(|i| format!("{{{{{i}}}}}"))
                .collect(),
        };
        let mut components = Vec::new();
        if t.header_parameters > 0 {
            let placeholder = t.header_parameter_name.as_deref().unwrap_or("1");
            components.push(json!({
                "type": "HEADER",
                "format": "TEXT",
                "text": format!("Appointment at {{{{{placeholder}}}}}"),
            }));
        }
        components.push(json!({
            "type": "BODY",
            "text": format!("Appointment reminder {}", placeholders.join(" ")),
        }));
        if !t.buttons.is_empty() {
            let buttons: Vec<Value> = t
                .buttons
                .iter()
                .map(|b| json!({"type": "QUICK_REPLY", "text": b}))
                .collect();
            components.push(json!({"type": "BUTTONS", "buttons": buttons}));
        }
        for language in &t.languages {
            let mut template = json!({
                "id": format!("sim-{name}-{language}"),
                "name": name,
                "language": language,
                "status": "APPROVED",
                "category": if t.category.is_empty() { "UTILITY".to_owned() } else { t.category.to_ascii_uppercase() },
                "parameter_format": if t.parameter_names.is_some() { "NAMED" } else { "POSITIONAL" },
                "components": components,
            });
            if let Some(ttl) = t.ttl_seconds {
                template["message_send_ttl_seconds"] = json!(ttl);
            }
            out.push(template);
        }
    }
    out
}

async fn templates(
    State(server): State<SimServer>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !server.authorized(&headers) {
        return error(190, "Error validating access token");
    }
    if id != server.inner.sim.business().waba_id {
        return error(
            100,
            "Unsupported get request. Object with this ID does not exist",
        );
    }
    let all = registry_json(&server.inner.sim);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(server.inner.config.page_size)
        .clamp(1, 1000);
    let start = q
        .get("after")
        .and_then(|a| a.strip_prefix('c'))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
        .min(all.len());
    let end = (start + limit).min(all.len());
    let mut paging =
        json!({"cursors": {"before": format!("c{start}"), "after": format!("c{end}")}});
    if end < all.len() {
        paging["next"] = json!(format!(
            "/{version}/{id}/message_templates?limit={limit}&after=c{end}"
        ));
    }
    (
        StatusCode::OK,
        axum::Json(json!({"data": all[start..end], "paging": paging})),
    )
        .into_response()
}

/// `GET /{version}/{phone_number_id}?fields=...`: the phone number object, with the fields a
/// caller may ask for; an unknown field is Meta's error 100.
async fn phone_number(
    State(server): State<SimServer>,
    Path((_version, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !server.authorized(&headers) {
        return error(190, "Error validating access token");
    }
    // A media id: the media object, with a short-lived URL on this server (Meta's is on
    // lookaside.fbsbx.com, valid 5 minutes, and wants the same bearer token).
    if let Some(file) = server.inner.sim.media(&id) {
        use sha2::{Digest, Sha256};
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        return (
            StatusCode::OK,
            axum::Json(json!({
                "messaging_product": "whatsapp",
                "url": format!("http://{host}/sim-media/{id}"),
                "mime_type": file.mime_type,
                "sha256": hex::encode(Sha256::digest(&file.bytes)),
                "file_size": file.bytes.len(),
                "id": id,
            })),
        )
            .into_response();
    }
    let business = server.inner.sim.business();
    if id != business.phone_number_id {
        return error(
            100,
            "Unsupported get request. Object with this ID does not exist",
        );
    }
    let tier = server.inner.config.messaging_limit_tier.clone();
    let fields = q.get("fields").map_or(
        "id,display_phone_number,verified_name,quality_rating",
        String::as_str,
    );
    let mut out = json!({"id": id});
    for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let value = match field {
            "id" => json!(id),
            "display_phone_number" => json!(business.display_phone_number),
            "verified_name" => json!("medrelay simulator"),
            "quality_rating" => json!("GREEN"),
            "messaging_limit_tier" | "whatsapp_business_manager_messaging_limit" => json!(tier),
            "throughput" => json!({"level": "STANDARD"}),
            other => {
                return error(
                    100,
                    &format!(
                        "Tried accessing nonexisting field ({other}) on node type (WhatsAppBusinessPhoneNumber)"
                    ),
                );
            }
        };
        out[field] = value;
    }
    (StatusCode::OK, axum::Json(out)).into_response()
}

/// `GET /sim-media/{media_id}`: the file behind a media URL (bearer token required, as Meta's).
async fn media_file(
    State(server): State<SimServer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !server.authorized(&headers) {
        return error(190, "Error validating access token");
    }
    match server.inner.sim.media(&id) {
        Some(file) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, file.mime_type)],
            file.bytes,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The simulator's Cloud API router (see the module docs).
pub fn simulator_router(server: SimServer) -> Router {
    Router::new()
        .route("/sim-media/{id}", get(media_file))
        .route("/{version}/{id}", get(phone_number))
        .route("/{version}/{id}/messages", post(messages))
        .route("/{version}/{id}/message_templates", get(templates))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(server)
}
