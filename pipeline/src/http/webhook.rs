//! The Cloud API webhook endpoint medrelay serves.
//!
//! - `GET /webhook`: Meta's subscription check. `hub.mode=subscribe` and the configured
//!   `hub.verify_token` give 200 with `hub.challenge`; anything else 403.
//! - `POST /webhook`: the body is taken as raw bytes (the signature covers the bytes, not a re-encoded
//!   JSON), checked against `X-Hub-Signature-256` (401, nothing stored, when wrong or missing), stored
//!   with [`Inbound::receive`], and only then answered 200. A failed store answers 500 so Meta delivers
//!   again. Processing is triggered afterwards through a [`Notify`]; the body is not parsed here, so
//!   unknown fields can never cause an error response. Bodies over the limit get 413.
//!
//! Log lines carry the stored webhook id or the failure kind, never the body.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::inbound::Inbound;
use crate::whatsapp::webhook::verify;

/// Default request body limit: Meta's notifications are a few KiB; 1 MiB leaves room for batching.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

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
    /// Largest accepted body, in bytes.
    pub body_limit: usize,
}

impl WebhookState {
    /// State with the default body limit and a fresh [`Notify`].
    pub fn new(inbound: Arc<Inbound>, app_secret: &[u8], verify_token: &str) -> Self {
        WebhookState {
            inbound,
            app_secret: Arc::from(app_secret),
            verify_token: Arc::from(verify_token),
            stored: Arc::new(Notify::new()),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }
}

/// Constant-time comparison, so the verify token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
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
            warn!(error = %e, "webhook could not be stored; Meta will deliver it again");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The webhook router: `GET /webhook` (verification) and `POST /webhook` (notifications).
pub fn webhook_router(state: WebhookState) -> Router {
    let limit = state.body_limit;
    Router::new()
        .route("/webhook", get(verify_subscription).post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes (in-flight requests finish first).
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
