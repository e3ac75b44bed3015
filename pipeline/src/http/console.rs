//! The staff web console (`[console]`): sign-in, the inbox of patient conversations, replies and
//! the actions staff take on a conversation. Server-rendered HTML (maud), no JavaScript.
//!
//! Security: local accounts with argon2id hashes (`medrelay users`); a session is a random token
//! in an HttpOnly, Secure, SameSite=Strict cookie, stored hashed, with an expiry and server-side
//! revocation (sign-out, password change, disable); every form carries the session's CSRF token
//! (sign-in: a double-submit cookie) and a request without it is refused 403; wrong passwords
//! lock the account for a while and a source address is rate limited. A `viewer` sees counts
//! only; opening a conversation (PHI) needs `staff` or `admin`, for the user's sites, and is
//! written into the audit chain with who opened it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use tracing::{info, warn};

use crate::accounts::{burn_password_check, new_token, token_hash, verify_password};
use crate::clock::Clock;
use crate::inbox::{ReengageTemplate, ReplyPlan, reply_plan};
use crate::store::Store;
use crate::store::inbox::{ConversationDetail, ConversationState, InboxFilter, StaffAction};
use crate::store::users::{ConsoleUser, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "medrelay_session";
/// The sign-in form's double-submit cookie.
pub const LOGIN_COOKIE: &str = "medrelay_login";
/// The pending sign-in at the identity provider (sealed state, nonce and PKCE verifier).
/// `SameSite=Lax`: the provider's redirect back is a cross-site navigation, on which a Strict
/// cookie would not be sent; it is only good for one callback within ten minutes.
pub const OIDC_COOKIE: &str = "medrelay_oidc";
/// Wrong passwords in a row after which an account is locked for [`LOCK_FOR`].
pub const LOCK_AFTER: i64 = 5;
/// How long a locked account stays locked.
pub const LOCK_FOR: SignedDuration = SignedDuration::from_mins(15);
/// The longest staff reply accepted (WhatsApp's text body limit is 4096 characters).
const MAX_REPLY_CHARS: usize = 4096;

/// A prepared answer staff pick instead of typing (`[[console.canned]]`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CannedAnswer {
    /// What staff see in the list.
    pub name: String,
    /// What the patient gets (no patient data: it is the same for everyone).
    pub text: String,
    /// The language it is written in (shown next to its name).
    #[serde(default)]
    pub language: Option<String>,
}

/// What the console needs.
#[derive(Clone)]
pub struct ConsoleState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// How long a session lasts.
    pub session_ttl: SignedDuration,
    /// The template staff may send outside the customer service window.
    pub reengage: Option<ReengageTemplate>,
    /// Site zones, to show times as the site reads them.
    pub zones: BTreeMap<String, TimeZone>,
    /// Prepared answers, in the order configured.
    pub canned: Vec<CannedAnswer>,
    /// Whether cookies carry `Secure` (off only for a plain-HTTP test on a non-loopback name).
    pub secure_cookies: bool,
    /// Where a patient's media is fetched from when staff open it (the WhatsApp transport);
    /// `None`: media is listed but cannot be opened here.
    pub media: Option<Arc<dyn crate::whatsapp::WhatsAppTransport>>,
    /// Sign-in with the hospital's identity provider, besides local passwords.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Sign-in attempts per source address.
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ConsoleState {
    /// The console over `store`; sessions last `session_ttl`.
    pub fn new(store: Store, clock: Arc<dyn Clock>, session_ttl: SignedDuration) -> Self {
        ConsoleState {
            store,
            clock,
            session_ttl,
            reengage: None,
            media: None,
            oidc: None,
            zones: BTreeMap::new(),
            canned: Vec::new(),
            secure_cookies: true,
            // 10 sign-in attempts a minute per address, bursts of 10.
            limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(10).expect("non-zero"),
            ))),
        }
    }

    fn zone(&self, site: Option<&str>) -> TimeZone {
        site.and_then(|s| self.zones.get(s))
            .cloned()
            .unwrap_or(TimeZone::UTC)
    }
}

/// The console's routes.
pub fn console_router(state: ConsoleState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/inbox") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/oidc/start", get(oidc_start))
        .route("/oidc/callback", get(oidc_callback))
        .route("/inbox", get(inbox_page))
        .route("/inbox/{id}", get(conversation_page))
        .route("/inbox/{id}/media/{message}", get(media))
        .route("/inbox/{id}/reply", post(reply))
        .route("/inbox/{id}/take", post(take))
        .route("/inbox/{id}/act", post(act))
        .route("/inbox/{id}/close", post(close))
        .with_state(state)
        // Forms are small: a reply is at most 4096 characters.
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        // A request (its body included) that takes longer is answered 408 and its connection
        // slot freed: a slow client cannot hold the console from staff who are working.
        .layer(axum::middleware::from_fn(request_deadline))
}

/// The largest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// How long one request, body included, may take.
const REQUEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

async fn request_deadline(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(r) => r,
        Err(_) => secure_headers(
            (StatusCode::REQUEST_TIMEOUT, "the request took too long\n").into_response(),
        ),
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(state: &ConsoleState, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie of hex characters")
}

fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
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

fn page(title: &str, user: Option<&ConsoleUser>, csrf: Option<&str>, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · medrelay" }
                style { (STYLE) }
            }
            body {
                header {
                    strong { "medrelay console" }
                    @if let (Some(u), Some(csrf)) = (user, csrf) {
                        nav {
                            a href="/inbox" { "Inbox" }
                            span.who data-user=(u.name) { (u.name) " (" (u.role.as_str()) ")" }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" id="logout" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    secure_headers(Html(markup.into_string()).into_response())
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{background:#0b5;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center;justify-content:space-between;flex-wrap:wrap}\
header a{color:#fff}nav{display:flex;gap:1em;align-items:center}nav form{margin:0}\
main{padding:1em;max-width:60em}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4em;text-align:left}\
.emergency{color:#b00;font-weight:bold}.overdue{color:#b00}.msg{padding:.5em;margin:.4em 0;border-radius:.4em;max-width:40em}\
.in{background:#eef}.note{background:#f4f4f4;font-style:italic}.out{background:#efe;margin-left:auto}.meta{font-size:.8em;color:#666}\
textarea{width:100%;min-height:6em}.notice{background:#ffd;padding:.6em;border:1px solid #dd8}.error{background:#fdd;padding:.6em}";

/// 503 for a store failure: logged with `what` (the error names no patient data), and the
/// browser told only that the database is not available.
fn unavailable(e: &crate::store::StoreError, what: &str) -> Response {
    warn!(error = %e, "{what}");
    secure_headers(
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is not available\n",
        )
            .into_response(),
    )
}

fn forbidden(why: &str) -> Response {
    secure_headers((StatusCode::FORBIDDEN, format!("{why}\n")).into_response())
}

fn to_login() -> Response {
    secure_headers(Redirect::to("/login").into_response())
}

/// The signed-in user and the session's CSRF token, or the sign-in redirect.
async fn session(
    state: &ConsoleState,
    headers: &HeaderMap,
) -> Result<(ConsoleUser, String, String), Response> {
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Err(to_login());
    };
    let hash = token_hash(&token);
    match state.store.console_session(&hash, state.clock.now()).await {
        Ok(Some((user, csrf))) => Ok((user, csrf, hash)),
        Ok(None) => Err(to_login()),
        Err(e) => Err(unavailable(&e, "console session could not be read")),
    }
}

fn csrf_ok(given: &str, expected: &str) -> bool {
    !expected.is_empty() && medrelay_listener::same(given.as_bytes(), expected.as_bytes())
}

fn fmt_time(t: Timestamp, zone: &TimeZone) -> String {
    t.to_zoned(zone.clone())
        .strftime("%Y-%m-%d %H:%M %Z")
        .to_string()
}

async fn login_page(State(state): State<ConsoleState>) -> Response {
    login_form(&state, None)
}

fn login_form(state: &ConsoleState, error: Option<&str>) -> Response {
    let token = new_token();
    let mut r = page(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                p { label { "User " input type="text" name="user" id="user" autocomplete="username" required; } }
                p { label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; } }
                p { button type="submit" id="sign-in" { "Sign in" } }
            }
            @if let Some(o) = &state.oidc {
                p { a href="/oidc/start" id="sso" { "Sign in with " (o.settings().display_name) } }
            }
        },
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, 600),
    );
    if error.is_some() {
        *r.status_mut() = StatusCode::UNAUTHORIZED;
    }
    r
}

#[derive(Deserialize)]
struct LoginForm {
    user: String,
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if state.limiter.check_key(&peer.ip()).is_err() {
        return too_many_attempts();
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !csrf_ok(&form.csrf, &expected) {
        return forbidden("missing or wrong CSRF token: reload the sign-in page");
    }
    let now = state.clock.now();
    let record = match state.store.login_record(&form.user).await {
        Ok(r) => r,
        Err(e) => {
            return unavailable(&e, "console sign-in could not read the account");
        }
    };
    let Some(record) = record else {
        burn_password_check(&form.password);
        return login_form(&state, Some("Wrong user name or password."));
    };
    if record.user.disabled {
        burn_password_check(&form.password);
        return login_form(&state, Some("Wrong user name or password."));
    }
    if record.user.locked_until.is_some_and(|t| t > now) {
        burn_password_check(&form.password);
        return login_form(
            &state,
            Some(
                "This account is locked after repeated wrong passwords; try again later or ask an admin.",
            ),
        );
    }
    if !verify_password(&form.password, &record.password_hash) {
        match state
            .store
            .record_failed_login(&record.user.name, LOCK_AFTER, LOCK_FOR, now)
            .await
        {
            Ok(true) => {
                warn!(user = %record.user.name, "console account locked after repeated wrong passwords");
                return login_form(
                    &state,
                    Some(
                        "This account is locked after repeated wrong passwords; try again later or ask an admin.",
                    ),
                );
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "a failed sign-in could not be counted"),
        }
        return login_form(&state, Some("Wrong user name or password."));
    }
    let mut r = secure_headers(Redirect::to("/inbox").into_response());
    // 303 See Other after a POST.
    *r.status_mut() = StatusCode::SEE_OTHER;
    start_session(&state, &record.user.name, "password", now, r).await
}

/// Stores a new session for `user` (audited with `method`) and sets its cookie on `r`.
async fn start_session(
    state: &ConsoleState,
    user: &str,
    method: &str,
    now: Timestamp,
    mut r: Response,
) -> Response {
    let token = new_token();
    let csrf = new_token();
    let expires = now + state.session_ttl;
    if let Err(e) = state
        .store
        .start_console_session(user, &token_hash(&token), &csrf, expires, now, method)
        .await
    {
        return unavailable(&e, "console session could not be stored");
    }
    info!(user = %user, method, "console sign-in");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, SESSION_COOKIE, &token, state.session_ttl.as_secs()),
    );
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(state, LOGIN_COOKIE, "", 0));
    r
}

/// The console has no `[console.oidc]`.
fn no_provider() -> Response {
    secure_headers(
        (
            StatusCode::NOT_FOUND,
            "no identity provider is configured\n",
        )
            .into_response(),
    )
}

/// One address tried to sign in too often (the per-address limiter).
fn too_many_attempts() -> Response {
    secure_headers(
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            "too many sign-in attempts; try again in a minute\n",
        )
            .into_response(),
    )
}

fn oidc_cookie(state: &ConsoleState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{OIDC_COOKIE}={value}; Path=/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    ))
    .expect("a sealed value of URL-safe characters")
}

/// `GET /oidc/start`: to the identity provider, with a fresh state, nonce and PKCE challenge
/// whose secrets the browser keeps in a sealed cookie.
async fn oidc_start(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return no_provider();
    };
    if state.limiter.check_key(&peer.ip()).is_err() {
        return too_many_attempts();
    }
    let pending = crate::oidc::PendingLogin::new(state.clock.now());
    match oidc.authorization_url(&pending).await {
        Ok(url) => {
            let mut r = secure_headers(Redirect::to(&url).into_response());
            r.headers_mut().append(
                header::SET_COOKIE,
                oidc_cookie(
                    &state,
                    &pending.seal(state.store.keys().sign_in_key()),
                    crate::oidc::PENDING_FOR.as_secs(),
                ),
            );
            r
        }
        Err(e) => {
            warn!(error = %e, "sign-in with the identity provider could not start");
            let mut r = login_form(
                &state,
                Some(
                    "The hospital's sign-in cannot be reached now; try again, or sign in with a password.",
                ),
            );
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}

#[derive(Deserialize)]
struct OidcCallback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// `GET /oidc/callback`: the provider sends the browser back with a code; the ID token it is
/// exchanged for names a local account, which gets a session.
async fn oidc_callback(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<OidcCallback>,
) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return no_provider();
    };
    // Not rate limited here: each callback needs the sealed cookie of a sign-in that
    // `/oidc/start` (which is limited) began, and is good once.
    let refuse = |status: StatusCode, why: &str| {
        let mut r = login_form(&state, Some(why));
        *r.status_mut() = status;
        r.headers_mut()
            .append(header::SET_COOKIE, oidc_cookie(&state, "", 0));
        r
    };
    let now = state.clock.now();
    let pending = cookie(&headers, OIDC_COOKIE)
        .and_then(|c| crate::oidc::PendingLogin::open(&c, state.store.keys().sign_in_key(), now));
    let Some(pending) = pending else {
        return refuse(
            StatusCode::FORBIDDEN,
            "This sign-in was not started here or took too long; start again.",
        );
    };
    if !q
        .state
        .as_deref()
        .is_some_and(|s| medrelay_listener::same(s.as_bytes(), pending.state.as_bytes()))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "This sign-in was not started here; start again.",
        );
    }
    if q.error.is_some() {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "The hospital's sign-in did not sign you in.",
        );
    }
    let Some(code) = q.code.as_deref().filter(|c| !c.is_empty()) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The hospital's sign-in sent no code.",
        );
    };
    let name = match oidc.finish(code, &pending, now).await {
        Ok(name) => name,
        Err(e) => {
            warn!(error = %e, "sign-in with the identity provider refused");
            return refuse(
                StatusCode::UNAUTHORIZED,
                "The hospital's sign-in could not be verified.",
            );
        }
    };
    let record = match state.store.login_record(&name).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e, "console sign-in could not read the account"),
    };
    match record {
        Some(r) if !r.user.disabled => {
            // A same-site page leads on to the inbox: after the provider's cross-site redirect,
            // browsers would not send the Strict session cookie on a redirect.
            let page = page(
                "Signed in",
                None,
                None,
                html! {
                    meta http-equiv="refresh" content="0; url=/inbox";
                    p { "Signed in. " a href="/inbox" id="continue" { "Continue to the inbox" } }
                },
            );
            let mut r2 = start_session(&state, &r.user.name, "oidc", now, page).await;
            r2.headers_mut()
                .append(header::SET_COOKIE, oidc_cookie(&state, "", 0));
            r2
        }
        _ => {
            warn!(user = %name, "identity provider sign-in without an enabled local account");
            refuse(
                StatusCode::FORBIDDEN,
                "You are signed in at the hospital, but have no enabled account in this console; ask an admin to add you (medrelay users add).",
            )
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (_, csrf, hash) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&form.csrf, &csrf) {
        return forbidden("missing or wrong CSRF token");
    }
    if let Err(e) = state
        .store
        .revoke_console_session(&hash, state.clock.now())
        .await
    {
        warn!(error = %e, "console session could not be revoked");
    }
    let mut r = see_other("/login");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, SESSION_COOKIE, "", 0),
    );
    r
}

fn see_other(to: &str) -> Response {
    let mut r = secure_headers(Redirect::to(to).into_response());
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

async fn inbox_page(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    let (user, csrf, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = state.clock.now();
    let counts = match state.store.inbox_counts(now).await {
        Ok(c) => c,
        Err(e) => {
            return unavailable(&e, "inbox counts could not be read");
        }
    };
    let summary = html! {
        p.counts {
            "Open " strong data-count="open" { (counts.open) } " · "
            "assigned " strong data-count="assigned" { (counts.assigned) } " · "
            "waiting for the patient " strong data-count="waiting" { (counts.waiting) } " · "
            "past the reply SLA " strong.overdue data-count="overdue" { (counts.overdue) }
        }
    };
    if !user.role.sees_phi() {
        return page(
            "Inbox",
            Some(&user),
            Some(&csrf),
            html! {
                h1 { "Inbox" }
                (summary)
                p.notice { "Your role (viewer) shows the queue's size only. Conversations need the staff role." }
            },
        );
    }
    let filter = InboxFilter {
        sites: if user.role == Role::Admin {
            None
        } else {
            user.sites.clone()
        },
        include_closed: false,
    };
    let lines = match state.store.conversations(&filter).await {
        Ok(l) => l,
        Err(e) => {
            return unavailable(&e, "conversations could not be read");
        }
    };
    page(
        "Inbox",
        Some(&user),
        Some(&csrf),
        html! {
            h1 { "Inbox" }
            (summary)
            @if lines.is_empty() { p { "Nothing waits for an answer." } }
            @else {
                table {
                    thead { tr { th { "#" } th { "Why" } th { "Site" } th { "State" } th { "Answer due" } th { "Last message" } th { "Messages" } } }
                    tbody {
                        @for l in &lines {
                            @let zone = state.zone(l.site.as_deref());
                            tr data-conversation=(l.id) {
                                td { a href={ "/inbox/" (l.id) } { (l.id) } }
                                td class=(if l.priority == 0 { "emergency" } else { "" }) { (reason_label(l.reason.as_str())) }
                                td { (l.site.as_deref().unwrap_or("-")) }
                                td { (l.state.as_str()) @if let Some(a) = &l.assigned_to { " (" (a) ")" } }
                                td class=(if l.reply_due_at.is_some_and(|d| d <= now) { "overdue" } else { "" }) {
                                    @match l.reply_due_at { Some(d) => (fmt_time(d, &zone)), None => "-" }
                                }
                                td { (fmt_time(l.last_patient_at, &zone)) }
                                td { (l.messages) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn reason_label(reason: &str) -> &'static str {
    match reason {
        "emergency" => "EMERGENCY phrase",
        "media" => "media message",
        "survey" => "low survey score: follow up",
        _ => "message",
    }
}

/// The conversation for a staff user allowed to open it (audited), or the refusal.
async fn open_for(
    state: &ConsoleState,
    user: &ConsoleUser,
    id: i64,
) -> Result<ConversationDetail, Response> {
    may_open(state, user, id).await?;
    match state
        .store
        .open_conversation(id, &user.name, "console", state.clock.now())
        .await
    {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(secure_headers(
            (StatusCode::NOT_FOUND, "no such conversation\n").into_response(),
        )),
        Err(e) => Err(unavailable(&e, "conversation could not be opened")),
    }
}

/// Whether `user` may open conversation `id` (a role that sees PHI, a site they work): its list
/// line, or the refusal. Reads no content, so writes no audit record.
async fn may_open(
    state: &ConsoleState,
    user: &ConsoleUser,
    id: i64,
) -> Result<crate::store::inbox::ConversationLine, Response> {
    if !user.role.sees_phi() {
        return Err(forbidden(
            "your role (viewer) does not show patient conversations",
        ));
    }
    let line = match state.store.conversation_line(id).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err(secure_headers(
                (StatusCode::NOT_FOUND, "no such conversation\n").into_response(),
            ));
        }
        Err(e) => {
            return Err(unavailable(&e, "conversation could not be read"));
        }
    };
    if !user.works_site(line.site.as_deref()) {
        return Err(forbidden(
            "this conversation belongs to a site you do not work",
        ));
    }
    Ok(line)
}

/// Types a browser may show inline; anything else is downloaded, never rendered.
const INLINE_MEDIA: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "audio/ogg",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "video/mp4",
    "application/pdf",
];

/// `GET /inbox/{id}/media/{message}`: a patient's image, document or recording, fetched from the
/// Cloud API now (never stored or logged here), for a staff user allowed to open the
/// conversation; the access is audited before anything is fetched.
async fn media(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path((id, message)): Path<(i64, i64)>,
) -> Response {
    let (user, _, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(refused) = may_open(&state, &user, id).await {
        return refused;
    }
    let Some(source) = &state.media else {
        return secure_headers(
            (
                StatusCode::NOT_IMPLEMENTED,
                "this console cannot fetch media from WhatsApp\n",
            )
                .into_response(),
        );
    };
    let (media_id, kind) = match state
        .store
        .open_media(id, message, &user.name, "console", state.clock.now())
        .await
    {
        Ok(Some(m)) => m,
        Ok(None) => {
            return secure_headers(
                (
                    StatusCode::NOT_FOUND,
                    "no media in this message (or it was pruned by retention)\n",
                )
                    .into_response(),
            );
        }
        Err(e) => return unavailable(&e, "media could not be opened"),
    };
    match source.fetch_media(&media_id).await {
        Ok(file) => {
            info!(conversation = id, message, user = %user.name, kind = %kind, "media opened");
            let mime = file.mime_type.to_ascii_lowercase();
            let inline = INLINE_MEDIA.contains(&mime.as_str());
            let content_type = if inline {
                mime.as_str()
            } else {
                "application/octet-stream"
            };
            let mut r = secure_headers((StatusCode::OK, file.bytes).into_response());
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            );
            let disposition = format!(
                "{}; filename=\"{kind}-{message}\"",
                if inline { "inline" } else { "attachment" }
            );
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            );
            r
        }
        Err(e) => {
            // The error names a code, never the file or the patient.
            warn!(conversation = id, message, error = %e, "media could not be fetched from WhatsApp");
            secure_headers(
                (
                    StatusCode::BAD_GATEWAY,
                    format!("WhatsApp did not give the file: {e}\n"),
                )
                    .into_response(),
            )
        }
    }
}

async fn conversation_page(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let (user, csrf, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match open_for(&state, &user, id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let now = state.clock.now();
    let zone = state.zone(d.line.site.as_deref());
    let plan = reply_plan(d.last_inbound_at, now, state.reengage.as_ref());
    let closed = d.line.state == ConversationState::Closed;
    page(
        &format!("Conversation {id}"),
        Some(&user),
        Some(&csrf),
        html! {
            h1 { "Conversation " (id) }
            p data-state=(d.line.state.as_str()) {
                span class=(if d.line.priority == 0 { "emergency" } else { "" }) { (reason_label(d.line.reason.as_str())) }
                " · " (d.line.state.as_str())
                @if let Some(a) = &d.line.assigned_to { " · taken by " (a) }
                @if let Some(due) = d.line.reply_due_at { " · answer due " (fmt_time(due, &zone)) }
            }
            dl {
                dt { "WhatsApp number" } dd data-phi="phone" { "+" (d.phone_e164.trim_start_matches('+')) }
                @if let Some(a) = &d.appointment {
                    dt { "Patient" } dd data-phi="name" { (a.given_name.as_deref().unwrap_or("")) " " (a.family_name.as_deref().unwrap_or("")) }
                    dt { "Appointment" } dd {
                        (fmt_time(a.start, &TimeZone::get(&a.time_zone).unwrap_or(TimeZone::UTC)))
                        " · " (a.status)
                        @if let Some(p) = &a.practitioner { " · " (p) }
                        @if let Some(s) = &a.service_type { " · " (s) }
                        " · " (a.source) " " (a.filler_id)
                    }
                }
            }
            section.messages {
                @for m in &d.messages {
                    div class={ "msg " (m.direction) } data-message=(m.id) data-direction=(m.direction) {
                        div.meta {
                            (fmt_time(m.at, &zone))
                            @if let Some(u) = &m.staff_user { " · " (u) }
                            @if m.kind != "text" { " · " (m.kind) }
                            @if m.direction == "out" {
                                " · " span data-send-state=(m.state) { (m.state) }
                                @if let Some(s) = &m.status { " (" span data-status=(s) { (s) } ")" }
                                @if let Some(s) = &m.state_detail { " — " (s) }
                            }
                        }
                        @if let Some(b) = &m.body { div.body { (b) } }
                        @if m.media_id.is_some() {
                            @if state.media.is_some() {
                                div.meta { a href={ "/inbox/" (id) "/media/" (m.id) } data-media=(m.id) { "Open the " (m.kind) } " (fetched from WhatsApp when you open it; audited)" }
                            } @else {
                                div.meta { "media: this console cannot fetch it from WhatsApp" }
                            }
                        }
                    }
                }
            }
            @if !closed {
                section.reply {
                    @match &plan {
                        ReplyPlan::Text => {
                            p.meta { "The customer service window is open until "
                                (fmt_time(d.last_inbound_at.map(|t| t + crate::inbox::SERVICE_WINDOW).unwrap_or(now), &zone))
                                ": your answer goes as a WhatsApp text message." }
                            form method="post" action={ "/inbox/" (id) "/reply" } {
                                input type="hidden" name="csrf" value=(csrf);
                                textarea name="text" id="reply-text" maxlength="4096" {}
                                @if !state.canned.is_empty() {
                                    p { label { "or a prepared answer: "
                                        select name="canned" id="canned" {
                                            option value="" { "(none: send what I typed)" }
                                            @for (i, c) in state.canned.iter().enumerate() {
                                                option value=(i) { (c.name) @if let Some(l) = &c.language { " (" (l) ")" } }
                                            }
                                        }
                                    } }
                                }
                                button type="submit" id="send-reply" { "Send reply" }
                            }
                        }
                        ReplyPlan::TemplateOnly(t) => {
                            p.notice { "The patient last wrote more than 24 h ago: WhatsApp allows no free text now, only an approved template. Send "
                                code { (t.name) } " to ask the patient to write back; answer them then." }
                            form method="post" action={ "/inbox/" (id) "/reply" } {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="template" value="1";
                                button type="submit" id="send-template" { "Send " (t.name) }
                            }
                        }
                        ReplyPlan::Refused => {
                            p.notice { "The patient last wrote more than 24 h ago: WhatsApp allows no free text now, and no re-engagement template is configured ([console] reengage_template). Call the patient." }
                        }
                    }
                }
                section.actions {
                    p.meta { "Record what you learnt from the patient (written back to the EHR like a tap):" }
                    @for (value, label) in [("confirm", "Patient confirms"), ("cancel", "Patient cancels"), ("reschedule", "Patient wants another time"), ("called", "I called the patient")] {
                        @if d.appointment.is_some() || value == "called" {
                            form method="post" action={ "/inbox/" (id) "/act" } style="display:inline" {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="action" value=(value);
                                button type="submit" id={ "act-" (value) } { (label) }
                            }
                        }
                    }
                }
                form method="post" action={ "/inbox/" (id) "/take" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="take" { "Take it" }
                }
                form method="post" action={ "/inbox/" (id) "/close" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" id="close" { "Close conversation" }
                }
            }
            @if closed { p.meta { "Closed." } }
        },
    )
}

#[derive(Deserialize)]
struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

async fn act(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ActForm>,
) -> Response {
    let (user, csrf, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&form.csrf, &csrf) {
        return forbidden("missing or wrong CSRF token");
    }
    let Some(action) = StaffAction::parse(&form.action) else {
        return secure_headers(
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown action\n").into_response(),
        );
    };
    if let Err(r) = open_for(&state, &user, id).await {
        return r;
    }
    match state
        .store
        .record_staff_action(id, &user.name, action, state.clock.now())
        .await
    {
        Ok(Ok(())) => see_other(&format!("/inbox/{id}")),
        Ok(Err(why)) => {
            secure_headers((StatusCode::UNPROCESSABLE_ENTITY, format!("{why}\n")).into_response())
        }
        Err(e) => unavailable(&e, "staff action could not be recorded"),
    }
}

#[derive(Deserialize)]
struct ReplyForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    template: Option<String>,
    /// The index of a prepared answer, used when no text was typed.
    #[serde(default)]
    canned: String,
}

/// Answers a patient as the signed-in user. Errors name the reason, never the text.
pub enum ReplyRefusal {
    /// Outside the customer service window with no template (or a text where only the
    /// template may go).
    WindowClosed,
    Empty,
    TooLong,
    Closed,
}

/// Queues a staff answer after the window check; the service sends it once.
pub async fn answer(
    store: &Store,
    reengage: Option<&ReengageTemplate>,
    conversation: &ConversationDetail,
    actor: &str,
    text: Option<&str>,
    now: Timestamp,
) -> Result<Result<i64, ReplyRefusal>, crate::store::StoreError> {
    if conversation.line.state == ConversationState::Closed {
        return Ok(Err(ReplyRefusal::Closed));
    }
    match (
        reply_plan(conversation.last_inbound_at, now, reengage),
        text,
    ) {
        (ReplyPlan::Text, Some(t)) => {
            let t = t.trim();
            if t.is_empty() {
                return Ok(Err(ReplyRefusal::Empty));
            }
            if t.chars().count() > MAX_REPLY_CHARS {
                return Ok(Err(ReplyRefusal::TooLong));
            }
            store
                .queue_staff_reply(conversation.line.id, actor, "text", t, now)
                .await
                .map(Ok)
        }
        (ReplyPlan::Text, None) => Ok(Err(ReplyRefusal::Empty)),
        (ReplyPlan::TemplateOnly(t), None) => store
            .queue_staff_reply(
                conversation.line.id,
                actor,
                "template",
                &format!("{}@{}", t.name, t.language),
                now,
            )
            .await
            .map(Ok),
        (ReplyPlan::TemplateOnly(_) | ReplyPlan::Refused, _) => Ok(Err(ReplyRefusal::WindowClosed)),
    }
}

impl ReplyRefusal {
    /// What staff are told.
    pub fn message(&self) -> &'static str {
        match self {
            ReplyRefusal::WindowClosed => {
                "the patient last wrote more than 24 h ago: WhatsApp allows no free text now (only the re-engagement template, if configured)"
            }
            ReplyRefusal::Empty => "the reply is empty",
            ReplyRefusal::TooLong => "the reply is longer than WhatsApp's 4096 characters",
            ReplyRefusal::Closed => "the conversation is closed",
        }
    }
}

async fn reply(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<ReplyForm>,
) -> Response {
    let (user, csrf, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&form.csrf, &csrf) {
        return forbidden("missing or wrong CSRF token");
    }
    let d = match open_for(&state, &user, id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let canned = form
        .canned
        .parse::<usize>()
        .ok()
        .and_then(|i| state.canned.get(i));
    let typed = form.text.trim();
    let text = match (typed.is_empty(), canned) {
        (true, Some(c)) => c.text.as_str(),
        _ => typed,
    };
    let text = form.template.is_none().then_some(text);
    match answer(
        &state.store,
        state.reengage.as_ref(),
        &d,
        &user.name,
        text,
        state.clock.now(),
    )
    .await
    {
        Ok(Ok(message)) => {
            info!(conversation = id, message, user = %user.name, "staff reply queued");
            see_other(&format!("/inbox/{id}"))
        }
        Ok(Err(refusal)) => secure_headers(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{}\n", refusal.message()),
            )
                .into_response(),
        ),
        Err(e) => unavailable(&e, "staff reply could not be queued"),
    }
}

async fn take(
    state: State<ConsoleState>,
    headers: HeaderMap,
    id: Path<i64>,
    form: Form<CsrfForm>,
) -> Response {
    change_state(state, headers, id, form, ConversationState::Assigned).await
}

async fn close(
    state: State<ConsoleState>,
    headers: HeaderMap,
    id: Path<i64>,
    form: Form<CsrfForm>,
) -> Response {
    change_state(state, headers, id, form, ConversationState::Closed).await
}

async fn change_state(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
    to: ConversationState,
) -> Response {
    let (user, csrf, _) = match session(&state, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&form.csrf, &csrf) {
        return forbidden("missing or wrong CSRF token");
    }
    if !user.role.sees_phi() {
        return forbidden("your role (viewer) does not work the inbox");
    }
    match state.store.conversation_line(id).await {
        Ok(Some(l)) if user.works_site(l.site.as_deref()) => {}
        Ok(Some(_)) => return forbidden("this conversation belongs to a site you do not work"),
        Ok(None) => {
            return secure_headers(
                (StatusCode::NOT_FOUND, "no such conversation\n").into_response(),
            );
        }
        Err(e) => {
            return unavailable(&e, "conversation could not be read");
        }
    }
    match state
        .store
        .set_conversation_state(id, &user.name, to, state.clock.now())
        .await
    {
        Ok(_) => {
            let back = if to == ConversationState::Closed {
                "/inbox".to_owned()
            } else {
                format!("/inbox/{id}")
            };
            see_other(&back)
        }
        Err(e) => unavailable(&e, "conversation state could not be changed"),
    }
}
