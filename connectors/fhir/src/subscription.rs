//! The FHIR Subscription notification endpoint (R4 backport / R4B / R5 `rest-hook` channel).
//!
//! `POST <path>` with a notification Bundle:
//! - a missing or wrong `Authorization` header (the Subscription's `channel.header`): 401, nothing
//!   stored, and the body is never read (the header is checked first, in constant time);
//! - then the body is read within the endpoint's [`RequestLimits`]: a request slot, the body
//!   limit (413, refused before reading when `Content-Length` announces more), the whole-body
//!   deadline (408), no free slot before it (503 `throttled`: deliver again);
//! - a body that is not a Bundle: the raw bytes go to quarantine, then 400 with an OperationOutcome;
//! - a handshake or heartbeat: recorded through [`BundleSink::heard`] (the Subscription is alive;
//!   its event counter shows missed events), then 200;
//! - an event notification: every entry's Appointment is committed through the [`BundleSink`],
//!   entries that cannot be read go to quarantine, and only then 200 with an OperationOutcome that
//!   lists them (error issues) or says "accepted";
//! - id-only notifications are read from the server first ([`ResourceFetcher`]); without one, 422;
//! - a failed commit: 503 with a `transient` issue, so the server delivers again.
//!
//! Responses are `application/fhir+json`. Logs carry counts and entry locations, never the body.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use medrelay_listener::{BodyError, RequestLimits, read_body, same};
use serde_json::Value;

use crate::map::{FhirOptions, MappedBundle, NotificationStatus, map_bundle};
use crate::outcome::{Issue, operation_outcome};

/// Where mapped notifications go. `store` commits the events and the rejected entries (and, for a
/// body that is not a Bundle, `whole` with the raw bytes) and returns only once that is durable.
#[async_trait::async_trait]
pub trait BundleSink: Send + Sync + 'static {
    async fn store(
        &self,
        mapped: &MappedBundle,
        whole: Option<(&Issue, &[u8])>,
    ) -> Result<(), String>;

    /// Every notification's status (handshake, heartbeat, events), after its events are stored:
    /// the Subscription is alive, and its event counter shows whether events went missing.
    async fn heard(&self, _status: &NotificationStatus) -> Result<(), String> {
        Ok(())
    }
}

/// Reads resources an id-only notification points at; returns a Bundle (JSON) of them with their
/// Patients and Consents.
#[async_trait::async_trait]
pub trait ResourceFetcher: Send + Sync + 'static {
    async fn fetch(&self, references: &[String]) -> Result<Vec<u8>, String>;
}

/// What the endpoint needs.
#[derive(Clone)]
pub struct SubscriptionState {
    pub feed: String,
    pub opts: Arc<FhirOptions>,
    pub sink: Arc<dyn BundleSink>,
    pub fetcher: Option<Arc<dyn ResourceFetcher>>,
    /// The exact `Authorization` header value the Subscription sends; never empty (the cli
    /// refuses to start with an empty variable, and [`router`] refuses an empty value).
    pub authorization: Arc<str>,
    pub now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Body limit, whole-body deadline and request slots of this endpoint.
    pub limits: RequestLimits,
}

fn fhir(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        body.to_string(),
    )
        .into_response()
}

fn one(status: StatusCode, code: &'static str, diagnostics: &str) -> Response {
    fhir(
        status,
        operation_outcome(&[Issue::error(code, diagnostics, None)]),
    )
}

/// The answer to a body that was not read.
fn body_refused(feed: &str, e: BodyError) -> Response {
    tracing::warn!(feed = %feed, error = %e, "FHIR notification refused before it was read");
    match e {
        BodyError::Busy => one(
            StatusCode::SERVICE_UNAVAILABLE,
            "throttled",
            "too many notifications at once; deliver again",
        ),
        BodyError::TooLarge => one(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            "the body is larger than the endpoint's body_limit",
        ),
        BodyError::TimedOut => one(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the body did not arrive within the endpoint's body_timeout_secs",
        ),
        BodyError::Broken => one(
            StatusCode::BAD_REQUEST,
            "incomplete",
            "the body could not be read",
        ),
    }
}

async fn notify(State(s): State<SubscriptionState>, headers: HeaderMap, body: Body) -> Response {
    // The credential first: an unauthenticated body is never read, let alone buffered.
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if s.authorization.is_empty() || !same(auth, s.authorization.as_bytes()) {
        tracing::warn!(feed = %s.feed, "FHIR notification with a missing or wrong Authorization header");
        return one(
            StatusCode::UNAUTHORIZED,
            "security",
            "missing or wrong Authorization header",
        );
    }
    // Held until the answer: the slot bounds how many Bundles are read and mapped at once.
    let (body, _slot) = match read_body(&headers, body, &s.limits).await {
        Ok(read) => read,
        Err(e) => return body_refused(&s.feed, e),
    };
    let now = (s.now)();
    let mut mapped = match map_bundle(&body, &s.opts, now) {
        Ok(m) => m,
        Err(issue) => {
            return match s
                .sink
                .store(&MappedBundle::default(), Some((&issue, &body)))
                .await
            {
                Ok(()) => {
                    tracing::warn!(feed = %s.feed, %issue, "FHIR notification quarantined");
                    fhir(StatusCode::BAD_REQUEST, operation_outcome(&[issue]))
                }
                Err(e) => {
                    tracing::error!(feed = %s.feed, error = %e, "FHIR notification not stored");
                    one(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "not stored; deliver again",
                    )
                }
            };
        }
    };
    let kind = mapped
        .notification
        .as_ref()
        .map(|n| n.kind.clone())
        .unwrap_or_default();
    if matches!(kind.as_str(), "handshake" | "heartbeat") {
        tracing::info!(feed = %s.feed, kind, "FHIR subscription {kind}");
        if let Some(status) = &mapped.notification
            && let Err(e) = s.sink.heard(status).await
        {
            tracing::error!(feed = %s.feed, error = %e, "FHIR {kind} not recorded");
            return one(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "not recorded; deliver again",
            );
        }
        return fhir(StatusCode::OK, operation_outcome(&[]));
    }
    // id-only: read what the notification points at.
    if mapped.events.is_empty() && mapped.rejected.is_empty() {
        let focus: Vec<String> = mapped
            .notification
            .as_ref()
            .map(|n| n.focus.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(mapped.missing.iter().cloned())
            .filter(|r| r.contains("Appointment/"))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !focus.is_empty() {
            let Some(fetcher) = &s.fetcher else {
                return one(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not-supported",
                    "id-only notifications need the connector's server settings to read the resources",
                );
            };
            let fetched = match fetcher.fetch(&focus).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(feed = %s.feed, error = %e, "could not read the notified resources");
                    return one(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "transient",
                        "the notified resources could not be read; deliver again",
                    );
                }
            };
            match map_bundle(&fetched, &s.opts, now) {
                Ok(m) => {
                    mapped.events = m.events;
                    mapped.rejected = m.rejected;
                }
                Err(issue) => {
                    return fhir(StatusCode::BAD_GATEWAY, operation_outcome(&[issue]));
                }
            }
        }
    }
    if let Err(e) = s.sink.store(&mapped, None).await {
        tracing::error!(feed = %s.feed, error = %e, "FHIR notification not stored");
        return one(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "not stored; deliver again",
        );
    }
    // The events are durable: a failure to record the counter only weakens gap detection.
    if let Some(status) = &mapped.notification
        && let Err(e) = s.sink.heard(status).await
    {
        tracing::error!(feed = %s.feed, error = %e, "FHIR notification counter not recorded");
    }
    for r in &mapped.rejected {
        tracing::warn!(feed = %s.feed, entry = %r.location, issue = %r.issue, "FHIR entry quarantined");
    }
    tracing::info!(feed = %s.feed, appointments = mapped.events.len(), rejected = mapped.rejected.len(),
                   "FHIR notification stored");
    let issues: Vec<Issue> = mapped
        .rejected
        .iter()
        .map(|r| {
            let mut i = r.issue.clone();
            i.diagnostics = format!("{}: {}", r.location, i.diagnostics);
            i
        })
        .collect();
    fhir(StatusCode::OK, operation_outcome(&issues))
}

/// The endpoint as a router: `POST path`, within `state.limits`. Serve it with
/// [`medrelay_listener::serve_bounded`] for the connection limits. An empty `authorization`
/// would let anyone in, so it is refused here too (fail closed), not only by the configuration.
pub fn router(state: SubscriptionState, path: &str) -> Result<Router, String> {
    if state.authorization.trim().is_empty() {
        return Err(format!(
            "feed `{}`: the Subscription's Authorization value is empty",
            state.feed
        ));
    }
    Ok(Router::new().route(path, post(notify)).with_state(state))
}
