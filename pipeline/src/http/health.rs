//! `/healthz` and `/readyz` for load balancers, orchestrators and monitoring, served next to the
//! webhook by `medrelay run`. Both are public by design (they say nothing about patients) and
//! cheap (one trivial query, one migration list, a few in-memory flags).
//!
//! - `GET /healthz`: 200 `ok` while the process serves requests.
//! - `GET /readyz`: 200 when every check passes, else 503; the JSON body lists each check with
//!   `ok` and a short detail: `database` (answers a query within 2 s), `migrations` (the database
//!   has every migration this binary embeds), `sending` (not halted by an account-level Cloud API
//!   error), `listeners` (every MLLP / FHIR listener task still runs), `write_back` (no batch
//!   refused by its EHR and left open: it holds that system's later replies). Details carry ids,
//!   counts and error codes, never patient data.
//! - `GET /metrics` (only with a configured token, sent as `Authorization: Bearer <token>`,
//!   compared in constant time; 401 otherwise): the OpenMetrics text of [`crate::metrics`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tokio::task::AbortHandle;

use crate::send::HaltProbe;
use crate::store::Store;
use crate::store::writeback::BatchState;

/// Listener tasks the readiness check watches, by name (filled as they start).
pub type WatchedListeners = Arc<Mutex<Vec<(String, AbortHandle)>>>;

/// What the health endpoints look at.
#[derive(Clone)]
pub struct HealthState {
    pub store: Store,
    /// The sender's halt, when this process sends.
    pub halt: Option<HaltProbe>,
    pub listeners: WatchedListeners,
    /// The bearer token `/metrics` needs; `None`: `/metrics` is not served.
    pub metrics_token: Option<Arc<str>>,
    pub clock: Arc<dyn crate::clock::Clock>,
    /// This process's timings and counters (MLLP ACKs, served requests, send attempts).
    pub instruments: Option<Arc<crate::instruments::Instruments>>,
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

/// Runs every readiness check.
pub async fn readiness(state: &HealthState) -> Vec<Check> {
    let mut checks = Vec::with_capacity(5);
    let db = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    checks.push(check(
        "database",
        db_ok,
        match db {
            Ok(Ok(())) => "reachable".to_owned(),
            Ok(Err(_)) => "query failed".to_owned(),
            Err(_) => "no answer within 2 s".to_owned(),
        },
    ));
    if db_ok {
        checks.push(match state.store.pending_migrations().await {
            Ok(0) => check("migrations", true, "current"),
            Ok(n) => check("migrations", false, format!("{n} not applied")),
            Err(_) => check("migrations", false, "cannot be read"),
        });
        checks.push(match state.store.writeback_batches(false, 1).await {
            Ok(open) => {
                let refused: Vec<String> = open
                    .iter()
                    .filter(|b| b.state == BatchState::Refused)
                    .map(|b| format!("batch {} ({})", b.id, b.target))
                    .collect();
                if refused.is_empty() {
                    check("write_back", true, format!("{} open batch(es)", open.len()))
                } else {
                    check(
                        "write_back",
                        false,
                        format!(
                            "refused by the EHR and holding later replies: {} (`medrelay writeback list`)",
                            refused.join(", ")
                        ),
                    )
                }
            }
            Err(_) => check("write_back", false, "cannot be read"),
        });
    }
    checks.push(match state.halt.as_ref().and_then(HaltProbe::halted) {
        Some(why) => check("sending", false, format!("halted: {why}")),
        None => check("sending", true, "not halted"),
    });
    let listeners = state.listeners.lock().expect("listeners lock");
    let stopped: Vec<&str> = listeners
        .iter()
        .filter(|(_, h)| h.is_finished())
        .map(|(name, _)| name.as_str())
        .collect();
    checks.push(if stopped.is_empty() {
        check("listeners", true, format!("{} running", listeners.len()))
    } else {
        check(
            "listeners",
            false,
            format!("stopped: {}", stopped.join(", ")),
        )
    });
    checks
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<HealthState>) -> Response {
    let checks = readiness(&state).await;
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "checks": checks,
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<HealthState>, headers: HeaderMap) -> Response {
    let Some(token) = state.metrics_token.as_deref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token.is_empty() || !medrelay_listener::same(given.as_bytes(), token.as_bytes()) {
        tracing::warn!("metrics scrape with a missing or wrong bearer token");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let checks = readiness(&state).await;
    match state.store.metrics(state.clock.now()).await {
        Ok(m) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            crate::metrics::render(&m, &checks, state.instruments.as_deref()),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics could not be read from the store");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `GET /healthz`, `GET /readyz` and `GET /metrics`, to be merged into a served router.
pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}
