//! The status page hospital IT and managers read (`[status_page]`): one server-rendered HTML page
//! (maud, no JavaScript, no build step) with health, feeds and their last input, queues, the send
//! rate against the configured throughput, the messaging-limit budget, recent alerts and errors,
//! and the KPI report of the last days with simple charts (inline SVG).
//!
//! It is read-only and shows no patient data: counts, states, configured names (feeds, sites,
//! templates), Cloud API error codes and alert details (which are written without PHI). It is
//! served on its own listener behind HTTP Basic authentication (a configured user and a password
//! from the environment, compared in constant time); repeated wrong passwords lock the source
//! address that sent them out for a minute.
//! Responses are `no-store` with a strict Content-Security-Policy.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::costs::RateTable;
use crate::http::health::{Check, HealthState, readiness};
use crate::silence::FeedWatch;
use crate::store::alerts::AlertLine;
use crate::store::metrics::{Sample, StoreMetrics};
use crate::store::report::{KpiRow, ReportGroup};

/// Wrong passwords from one source address within [`LOCKOUT_WINDOW`] after which the page
/// answers that address 429 until the window ends (a password guesser gets a handful of tries a
/// minute; staff at other addresses are not locked out with it).
const LOCKOUT_AFTER: u32 = 10;
const LOCKOUT_WINDOW: Duration = Duration::from_secs(60);
/// Source addresses tracked at once; beyond it, new ones share one window (memory stays bounded
/// whatever the number of addresses a guesser uses).
const LOCKOUT_SOURCES: usize = 4096;

/// Wrong-password counts by source address, each in its own window.
#[derive(Default)]
struct Failures {
    by_source: HashMap<IpAddr, (Instant, u32)>,
    overflow: Option<(Instant, u32)>,
}

impl Failures {
    /// The count of `source`, its window restarted when it ended.
    fn of(&mut self, source: IpAddr) -> &mut (Instant, u32) {
        if !self.by_source.contains_key(&source) && self.by_source.len() >= LOCKOUT_SOURCES {
            self.by_source
                .retain(|_, (since, _)| since.elapsed() <= LOCKOUT_WINDOW);
        }
        let slot = if self.by_source.contains_key(&source) || self.by_source.len() < LOCKOUT_SOURCES
        {
            self.by_source
                .entry(source)
                .or_insert_with(|| (Instant::now(), 0))
        } else {
            self.overflow.get_or_insert_with(|| (Instant::now(), 0))
        };
        if slot.0.elapsed() > LOCKOUT_WINDOW {
            *slot = (Instant::now(), 0);
        }
        slot
    }
}

/// What the page shows and who may see it.
#[derive(Clone)]
pub struct StatusPageState {
    pub health: HealthState,
    /// The Basic user name and password (never empty: the cli refuses to start otherwise).
    pub user: Arc<str>,
    pub password: Arc<str>,
    /// `[alerts.feeds]`: when each feed is expected to deliver.
    pub feeds: Vec<FeedWatch>,
    /// Connector names, so a feed that never delivered still has its row.
    pub connectors: Vec<String>,
    /// `[whatsapp] messaging_limit` (unique recipients per moving 24 h).
    pub messaging_limit: Option<u32>,
    /// `[whatsapp.cloud] per_second` when sending is paced.
    pub per_second: Option<u32>,
    pub rates: Option<RateTable>,
    /// The KPI period shown without `?days=`.
    pub report_days: i64,
    failures: Arc<Mutex<Failures>>,
}

impl StatusPageState {
    /// The page's state; `user` and `password` must not be empty.
    pub fn new(health: HealthState, user: &str, password: &str) -> Self {
        StatusPageState {
            health,
            user: Arc::from(user),
            password: Arc::from(password),
            feeds: Vec::new(),
            connectors: Vec::new(),
            messaging_limit: None,
            per_second: None,
            rates: None,
            report_days: 30,
            failures: Arc::default(),
        }
    }

    /// `None` for the right credentials; else the refusal (401, or 429 while `source` is locked).
    fn refusal(&self, headers: &HeaderMap, source: IpAddr) -> Option<Response> {
        let mut all = self.failures.lock().expect("failures lock");
        let failures = all.of(source);
        if failures.1 >= LOCKOUT_AFTER {
            return Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, "60")],
                    "too many wrong passwords; try again in a minute\n",
                )
                    .into_response(),
            );
        }
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .unwrap_or_default();
        let (user, password) = match given.iter().position(|b| *b == b':') {
            Some(i) => (&given[..i], &given[i + 1..]),
            None => (&given[..], &b""[..]),
        };
        // Both compared, always, in constant time: the answer does not tell which was wrong.
        let user_ok = medrelay_listener::same(user, self.user.as_bytes());
        let password_ok = medrelay_listener::same(password, self.password.as_bytes());
        if user_ok & password_ok && !self.password.is_empty() {
            return None;
        }
        if !given.is_empty() {
            failures.1 += 1;
            tracing::warn!(failures = failures.1, "status page: wrong user or password");
        }
        Some(
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"medrelay status\", charset=\"UTF-8\"",
                )],
                "authentication required\n",
            )
                .into_response(),
        )
    }
}

/// `?days=N`: the KPI period (the last N days, 1 to 366; default `report_days`).
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    days: Option<i64>,
}

/// Everything the page shows, read at one instant.
struct Snapshot {
    now: Timestamp,
    days: i64,
    checks: Vec<Check>,
    metrics: StoreMetrics,
    last_inputs: BTreeMap<String, Option<Timestamp>>,
    sent_last_minute: i64,
    sent_last_hour: i64,
    recipients_24h: usize,
    /// The limit in force and where it comes from.
    limit: (Option<u32>, String),
    alerts: Vec<AlertLine>,
    kpi_total: Option<KpiRow>,
    kpi_sites: Vec<KpiRow>,
}

async fn snapshot(s: &StatusPageState, days: i64) -> crate::store::StoreResult<Snapshot> {
    let store = &s.health.store;
    let now = s.health.clock.now();
    let checks = readiness(&s.health).await;
    let metrics = store.metrics(now).await?;
    let inputs = store.last_inputs().await?;
    let mut last_inputs: BTreeMap<String, Option<Timestamp>> = s
        .connectors
        .iter()
        .map(|c| (c.clone(), inputs.get(c).copied()))
        .collect();
    for (feed, at) in inputs {
        last_inputs.insert(feed, Some(at));
    }
    let from = now - SignedDuration::from_hours(24 * days);
    let rates = s.rates.as_ref();
    let kpi_total = store
        .kpi_report(from, now, ReportGroup::All, rates)
        .await?
        .into_iter()
        .next();
    let kpi_sites = store
        .kpi_report(from, now, ReportGroup::Site, rates)
        .await?;
    Ok(Snapshot {
        now,
        days,
        checks,
        metrics,
        last_inputs,
        sent_last_minute: store
            .messages_sent_since(now - SignedDuration::from_secs(60))
            .await?,
        sent_last_hour: store
            .messages_sent_since(now - SignedDuration::from_hours(1))
            .await?,
        recipients_24h: store
            .recipients_since(now - SignedDuration::from_hours(24))
            .await?
            .len(),
        limit: match store.reported_messaging_limit().await? {
            Some(r) => (
                r.limit,
                format!("as WhatsApp stated it ({}, {})", r.source, when(r.at, now)),
            ),
            None => (s.messaging_limit, "whatsapp.messaging_limit".to_owned()),
        },
        alerts: store.recent_alerts(20).await?,
        kpi_total,
        kpi_sites,
    })
}

fn when(at: Timestamp, now: Timestamp) -> String {
    let ago = now.duration_since(at).as_secs().max(0);
    let rel = match ago {
        0..60 => format!("{ago} s ago"),
        60..7200 => format!("{} min ago", ago / 60),
        7200..172_800 => format!("{} h ago", ago / 3600),
        _ => format!("{} days ago", ago / 86_400),
    };
    format!("{} UTC ({rel})", at.strftime("%Y-%m-%d %H:%M"))
}

/// A wait in the largest units that matter (`42 s`, `7 min`, `5 h 10 min`, `18 d 17 h`).
fn span(secs: f64) -> String {
    let s = secs.max(0.0) as i64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

fn pct(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
}

fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
    s.labels
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// A horizontal bar chart as inline SVG; every bar also carries its value as text.
fn bar_chart(title: &str, bars: &[(String, f64, String)], max: f64) -> Markup {
    let row = 26.0;
    let height = row * bars.len() as f64 + 8.0;
    let scale = if max > 0.0 { 300.0 / max } else { 0.0 };
    html! {
        figure {
            figcaption { (title) }
            svg role="img" aria-label=(title) width="560" height=(height) viewBox={"0 0 560 " (height)} xmlns="http://www.w3.org/2000/svg" {
                title { (title) }
                @for (i, (name, value, shown)) in bars.iter().enumerate() {
                    @let y = 4.0 + row * i as f64;
                    text x="0" y=(y + 16.0) font-size="13" { (name) }
                    rect x="170" y=(y + 3.0) width=((value * scale).max(1.0)) height="16" fill="#3b6ea5" {}
                    text x=(178.0 + value * scale) y=(y + 16.0) font-size="13" { (shown) }
                }
            }
        }
    }
}

fn page(s: &StatusPageState, snap: &Snapshot) -> Markup {
    let now = snap.now;
    let ready = snap.checks.iter().all(|c| c.ok);
    let pending_by_lane: BTreeMap<String, f64> = snap
        .metrics
        .outbox_jobs
        .iter()
        .filter(|j| label(j, "state") == "pending")
        .map(|j| (label(j, "lane").to_owned(), j.value))
        .collect();
    let jobs_by_state: BTreeMap<String, f64> =
        snap.metrics
            .outbox_jobs
            .iter()
            .fold(BTreeMap::new(), |mut m, j| {
                *m.entry(label(j, "state").to_owned()).or_default() += j.value;
                m
            });
    let quarantined: BTreeMap<&str, f64> = snap
        .metrics
        .quarantined
        .iter()
        .map(|q| (label(q, "connector"), q.value))
        .collect();
    let rate = snap.sent_last_minute as f64 / 60.0;
    let open_alerts = snap
        .alerts
        .iter()
        .filter(|a| a.resolved_at.is_none())
        .count();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "medrelay status" }
                style { (STYLE) }
            }
            body {
                header {
                    h1 { "medrelay status" }
                    p { "As of " (when(now, now)) ". Counts, states and configured names only: no patient data on this page." }
                }
                section id="health" {
                    h2 { "Health: " span class=(if ready { "ok" } else { "bad" }) data-ready=(ready) { (if ready { "ready" } else { "NOT READY" }) } }
                    table {
                        tr { th { "check" } th { "state" } th { "detail" } }
                        @for c in &snap.checks {
                            tr { td { (c.name) } td class=(if c.ok { "ok" } else { "bad" }) { (if c.ok { "ok" } else { "failing" }) } td { (c.detail) } }
                        }
                    }
                }
                section id="feeds" {
                    h2 { "Feeds" }
                    table {
                        tr { th { "feed" } th { "last input" } th { "expected" } th { "quarantined" } }
                        @for (feed, last) in &snap.last_inputs {
                            @let watch = s.feeds.iter().find(|w| &w.feed == feed);
                            tr data-feed=(feed) {
                                td { (feed) }
                                td { @match last { Some(t) => (when(*t, now)), None => "never" } }
                                td { @match watch { Some(w) => (w.expect.describe()), None => "-" } }
                                td data-quarantined=(feed) { (quarantined.get(feed.as_str()).copied().unwrap_or(0.0)) }
                            }
                        }
                    }
                }
                section id="queues" {
                    h2 { "Queues" }
                    table {
                        tr { th { "message steps" } th { "count" } }
                        @for (state, n) in &jobs_by_state {
                            tr { td { (state) } td data-jobs=(state) { (n) } }
                        }
                        tr { td { "oldest due step waiting" } td data-oldest-due="" { (span(snap.metrics.oldest_due_seconds)) } }
                        tr { td { "replies not yet written back" } td data-writeback-backlog="" { (snap.metrics.writeback_backlog) } }
                        tr { td { "oldest open write-back batch" } td { (span(snap.metrics.writeback_oldest_open_seconds)) } }
                    }
                    @if !pending_by_lane.is_empty() {
                        @let bars: Vec<(String, f64, String)> = pending_by_lane.iter().map(|(lane, n)| (format!("lane {lane}"), *n, format!("{n}"))).collect();
                        @let max = pending_by_lane.values().copied().fold(0.0, f64::max);
                        (bar_chart("Pending steps by lane (lower lanes go first)", &bars, max))
                    }
                }
                section id="sending" {
                    h2 { "Sending" }
                    table {
                        tr { td { "accepted by WhatsApp, last minute" } td data-sent-minute="" { (snap.sent_last_minute) } }
                        tr { td { "accepted by WhatsApp, last hour" } td data-sent-hour="" { (snap.sent_last_hour) } }
                        tr { td { "send rate (last minute)" } td { (format!("{rate:.2} /s")) " against a limit of " @match s.per_second { Some(p) => (format!("{p} /s")), None => "none (simulator)" } } }
                        tr {
                            td { "messaging limit (unique recipients outside a service window, moving 24 h)" }
                            td data-budget="" {
                                (snap.recipients_24h) " of "
                                @match snap.limit.0 {
                                    Some(l) => { (l) " (" (format!("{:.0} %", snap.recipients_24h as f64 * 100.0 / f64::from(l.max(1)))) "), " (snap.limit.1) }
                                    None => { "unlimited, " (snap.limit.1) }
                                }
                            }
                        }
                    }
                }
                section id="alerts" {
                    h2 { "Alerts (" (open_alerts) " open)" }
                    @if snap.alerts.is_empty() { p { "None." } }
                    @else {
                        table {
                            tr { th { "raised" } th { "kind" } th { "detail" } th { "resolved" } }
                            @for a in &snap.alerts {
                                tr class=(if a.resolved_at.is_none() { "open" } else { "" }) data-alert=(a.kind) {
                                    td { (when(a.at, now)) } td { (a.kind) } td { (a.detail) }
                                    td { @match a.resolved_at { Some(t) => (when(t, now)), None => "open" } }
                                }
                            }
                        }
                    }
                }
                section id="errors" {
                    h2 { "Recent errors" }
                    @if snap.metrics.message_errors.is_empty() { p { "No Cloud API errors on record." } }
                    @else {
                        table {
                            tr { th { "Cloud API error code" } th { "messages" } th { "meaning" } }
                            @for e in &snap.metrics.message_errors {
                                @let code = label(e, "code");
                                tr { td { (code) } td data-error=(code) { (e.value) } td { (code.parse::<i64>().map(crate::whatsapp::describe_error_code).unwrap_or("")) } }
                            }
                        }
                    }
                }
                section id="report" {
                    h2 { "KPI report: appointments starting in the last " (snap.days) " days" }
                    @match &snap.kpi_total {
                        None => p { "No appointments in the period." },
                        Some(k) => {
                            table {
                                tr { td { "appointments" } td data-kpi="appointments" { (k.appointments) } }
                                tr { td { "messaged" } td data-kpi="messaged" { (k.messaged) } }
                                tr { td { "messages sent / delivered / read / failed" } td data-kpi="messages" { (k.messages_sent) " / " (k.messages_delivered) " / " (k.messages_read) " / " (k.messages_failed) } }
                                tr { td { "confirmed (confirmation rate)" } td data-kpi="confirmed" { (k.confirmed) " (" (pct(k.confirmation_rate)) ")" } }
                                tr { td { "cancelled via WhatsApp" } td data-kpi="cancelled" { (k.cancelled_via_whatsapp) } }
                                tr { td { "reschedule requests" } td data-kpi="reschedule" { (k.reschedule_requests) } }
                                tr { td { "opt-outs (opt-out rate)" } td data-kpi="opt_outs" { (k.opt_outs) " (" (pct(k.opt_out_rate)) ")" } }
                                tr { td { "no-show rate: reminded / not messaged" } td data-kpi="no_show" { (pct(k.no_show_rate_reminded)) " / " (pct(k.no_show_rate_not_messaged)) } }
                                tr { td { "reply time to a tap: median / p90" } td data-kpi="reply_time" { (k.reply_seconds_median.map_or("-".into(), |v| format!("{v:.0} s"))) " / " (k.reply_seconds_p90.map_or("-".into(), |v| format!("{v:.0} s"))) } }
                                @if let (Some(cost), Some(r)) = (k.cost, &s.rates) {
                                    tr { td { "cost (per confirmed appointment)" } td data-kpi="cost" { (format!("{cost:.4} {}", r.currency)) " (" (k.cost_per_confirmed.map_or("-".into(), |c| format!("{c:.4} {}", r.currency))) ")" } }
                                }
                            }
                            @let status_bars = vec![
                                ("sent".to_owned(), k.messages_sent as f64, k.messages_sent.to_string()),
                                ("delivered".to_owned(), k.messages_delivered as f64, k.messages_delivered.to_string()),
                                ("read".to_owned(), k.messages_read as f64, k.messages_read.to_string()),
                                ("failed".to_owned(), k.messages_failed as f64, k.messages_failed.to_string()),
                            ];
                            (bar_chart("Messages by status", &status_bars, k.messages_sent as f64))
                        }
                    }
                    @if !snap.kpi_sites.is_empty() {
                        @let rate_bars: Vec<(String, f64, String)> = snap.kpi_sites.iter().flat_map(|r| [
                            (format!("{} confirmed", r.group), r.confirmation_rate.unwrap_or(0.0) * 100.0, pct(r.confirmation_rate)),
                            (format!("{} opted out", r.group), r.opt_out_rate.unwrap_or(0.0) * 100.0, pct(r.opt_out_rate)),
                            (format!("{} no-show (rem.)", r.group), r.no_show_rate_reminded.unwrap_or(0.0) * 100.0, pct(r.no_show_rate_reminded)),
                        ]).collect();
                        (bar_chart("Rates by site (%)", &rate_bars, 100.0))
                    }
                    p class="note" { "Definitions: README, \"The KPI report\". Other periods: " a href="?days=7" { "7 days" } ", " a href="?days=90" { "90 days" } "." }
                }
            }
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:62rem;padding:0 1rem;color:#1d2733}\
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:1.6rem;border-bottom:1px solid #ccd}\
table{border-collapse:collapse;margin:.4rem 0}td,th{padding:.2rem .7rem;border-bottom:1px solid #e4e7ee;text-align:left;vertical-align:top}\
.ok{color:#1a7f37}.bad{color:#b42318;font-weight:600}tr.open td{background:#fff4e5}figure{margin:.6rem 0}\
figcaption{font-weight:600;margin-bottom:.2rem}.note{color:#556}";

async fn status_page(
    State(s): State<StatusPageState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = s.refusal(&headers, peer.ip().to_canonical()) {
        return with_headers(refused);
    }
    let days = q.days.unwrap_or(s.report_days).clamp(1, 366);
    let response = match snapshot(&s, days).await {
        Ok(snap) => Html(page(&s, &snap).into_string()).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "status page: the store could not be read");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database cannot be read; see /readyz\n",
            )
                .into_response()
        }
    };
    with_headers(response)
}

/// The page's security headers, on every answer.
fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// `GET /` (the page; `?days=N` for the KPI period), to be served on the page's own listener.
pub fn status_page_router(state: StatusPageState) -> Router {
    Router::new().route("/", get(status_page)).with_state(state)
}
