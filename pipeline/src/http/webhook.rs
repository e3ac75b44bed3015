//! The Cloud API webhook endpoint medrelay serves.
//!
//! - `GET /webhook`: Meta's subscription check. `hub.mode=subscribe` and the configured
//!   `hub.verify_token` give 200 with `hub.challenge`; anything else 403.
//! - `POST /webhook`: the `X-Hub-Signature-256` header must be present and well-formed
//!   (`sha256=` and 64 hex digits) before the body is read (else 401 at once: an unsigned body is
//!   never buffered). The body is then read within the endpoint's [`RequestLimits`] (a request
//!   slot, the body limit: 413, refused before reading when `Content-Length` announces more; the
//!   whole-body deadline: 408; no free slot before it: 503, Meta delivers again), taken as raw
//!   bytes (the signature covers the bytes, not a re-encoded JSON), checked against the signature
//!   (401, nothing stored, when wrong), stored with [`Inbound::receive`], and only then answered
//!   200. A failed store answers 500 so Meta delivers again. Processing is triggered afterwards
//!   through a [`Notify`]; the body is not parsed here, so unknown fields can never cause an error
//!   response.
//!
//! `medrelay run` serves it with [`medrelay_listener::serve_bounded`] (connection cap, header
//! timeout).
//!
//! Log lines carry the stored webhook id or the failure kind, never the body.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use medrelay_listener::{BodyError, RequestLimits, read_body, same};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::inbound::Inbound;
use crate::whatsapp::webhook::verify;

/// Default request body limit: Meta's notifications are a few KiB; 1 MiB leaves room for batching.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default time a request has, after its headers, to get a slot and deliver its whole body.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default requests read or stored at once (each holds at most the body limit).
pub const DEFAULT_MAX_REQUESTS: usize = 16;

/// What the webhook endpoint needs.
#[derive(Clone)]
pub struct WebhookState {
    /// Stores bodies (and processes them in [`spawn_processing`]).
    pub inbound: Arc<Inbound>,
    /// The Meta app secret the signatures are made with.
    pub app_secret: Arc<[u8]>,
    /// The verify token configured in the Meta app dashboard.
    pub verify_token: Arc<str>,
    /// Woken after each stored body, so processing starts at once.
    pub stored: Arc<Notify>,
    /// Body limit, whole-body deadline and request slots.
    pub limits: RequestLimits,
}

impl WebhookState {
    /// State with the default request limits and a fresh [`Notify`].
    pub fn new(inbound: Arc<Inbound>, app_secret: &[u8], verify_token: &str) -> Self {
        WebhookState {
            inbound,
            app_secret: Arc::from(app_secret),
            verify_token: Arc::from(verify_token),
            stored: Arc::new(Notify::new()),
            limits: RequestLimits::new(
                DEFAULT_BODY_LIMIT,
                DEFAULT_BODY_TIMEOUT,
                DEFAULT_MAX_REQUESTS,
            ),
        }
    }
}

/// Whether an `X-Hub-Signature-256` value has the shape Meta sends (`sha256=` and 64 hex digits):
/// checked before the body is read. Says nothing about whether it is right (that needs the body).
fn well_formed_signature(value: &str) -> bool {
    value
        .trim()
        .strip_prefix("sha256=")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn verify_subscription(
    State(state): State<WebhookState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mode = q.get("hub.mode").map(String::as_str);
    let token = q.get("hub.verify_token").map(String::as_bytes);
    match (mode, token, q.get("hub.challenge")) {
        (Some("subscribe"), Some(t), Some(challenge))
            if same(t, state.verify_token.as_bytes()) && challenge.len() <= 512 =>
        {
            info!("webhook subscription verified");
            (
                StatusCode::OK,
                [("content-type", "text/plain; charset=utf-8")],
                challenge.clone(),
            )
                .into_response()
        }
        _ => {
            warn!("webhook verification refused (wrong mode or token)");
            StatusCode::FORBIDDEN.into_response()
        }
    }
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Body) -> Response {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    // The header's shape first: an unsigned body is never read, let alone buffered.
    if !signature.is_some_and(well_formed_signature) {
        warn!(
            signature_present = signature.is_some(),
            "webhook rejected: missing or malformed signature header"
        );
        return StatusCode::UNAUTHORIZED.into_response();
    }
    // Held until the answer: the slot bounds how many bodies are held at once.
    let (body, _slot) = match read_body(&headers, body, &state.limits).await {
        Ok(read) => read,
        Err(e) => {
            warn!(error = %e, "webhook refused before its body was read");
            return match e {
                BodyError::Busy => StatusCode::SERVICE_UNAVAILABLE,
                BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                BodyError::Broken => StatusCode::BAD_REQUEST,
            }
            .into_response();
        }
    };
    if !verify(&state.app_secret, &body, signature) {
        warn!(
            bytes = body.len(),
            signature_present = signature.is_some(),
            "webhook rejected: bad signature"
        );
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match state.inbound.receive(&body).await {
        Ok(id) => {
            debug!(webhook = id, "webhook stored");
            state.stored.notify_one();
            StatusCode::OK.into_response()
        }
        Err(e) => {
            // Not stored, so not acknowledged: 503 says "try again" (Meta does, with backoff).
            warn!(error = %e, "webhook could not be stored; Meta will deliver it again");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The webhook router: `GET /webhook` (verification) and `POST /webhook` (notifications), within
/// `state.limits`. `medrelay run` serves it with [`medrelay_listener::serve_bounded`].
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new()
        .route("/webhook", get(verify_subscription).post(receive))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes (in-flight requests finish first),
/// with axum's defaults: for the simulator and tests. Endpoints that face other systems use
/// [`medrelay_listener::serve_bounded`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Applies stored webhooks whenever `stored` is notified, and every `every` anyway (bodies stored
/// before a restart, or a notification that raced). The only processor in server mode, so bodies are
/// never applied concurrently. Stops when `shutdown` is notified.
pub fn spawn_processing(
    inbound: Arc<Inbound>,
    stored: Arc<Notify>,
    every: Duration,
    shutdown: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match inbound.process_pending().await {
                Ok(r) if r.webhooks > 0 => debug!(
                    webhooks = r.webhooks,
                    statuses = r.statuses_applied,
                    replies = r.replies,
                    "webhooks processed"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "webhook processing failed; will try again"),
            }
            tokio::select! {
                _ = stored.notified() => {}
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.notified() => return,
            }
        }
    })
}
