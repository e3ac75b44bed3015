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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
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

/// `GET /healthz` and `GET /readyz`, to be merged into a served router.
pub fn health_router(state: HealthState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}
