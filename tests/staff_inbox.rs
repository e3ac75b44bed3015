//! The staff inbox and its console (issue 15), over real HTTP with the simulator: patients' free
//! text and an emergency phrase open conversations (the emergency first); the console needs a
//! sign-in (CSRF on every form, lock-out after wrong passwords); a viewer sees counts and no
//! patient data; staff open a conversation (audited), answer inside WhatsApp's 24 h window with
//! a text the service sends once and reconciles with the status webhooks, and outside it only
//! with the re-engagement template (a text there is refused; the simulator answers 131047 for one
//! that slips through, as the Cloud API does). The reply SLA, counted in opening hours, raises
//! its alert once and an answer resolves it. No canary reaches the logs or the alerts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::store::inbox::{ConversationReason, InboxFilter};

const STAFF_PASSWORD_ENV: &str = "MEDRELAY_TEST_STAFF_PASSWORD";
const STAFF_PASSWORD: &str = "front-desk-pw-2026";
const FREE_TEXT: &str = "Can I come 30 minutes later? INBOXCANARY-7781";
const EMERGENCY: &str = "my father has chest pain INBOXCANARY-9932";
/// Patient data that must stay out of logs, alerts and the viewer's pages.
const CANARIES: &[&str] = &["INBOXCANARY", "Alice", "Bob", "2127365001", "2127365002"];

/// A cookie-keeping HTTP client that does not follow redirects.
struct Session {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

impl Session {
    fn new(addr: std::net::SocketAddr) -> Session {
        Session {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: format!("http://{addr}"),
            cookies: BTreeMap::new(),
        }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().unwrap();
            // Only the pending identity-provider sign-in is Lax (it must survive the provider's
            // cross-site redirect back), and only on /oidc.
            let same_site = if v.starts_with("medrelay_oidc=") {
                v.contains("SameSite=Lax") && v.contains("Path=/oidc;")
            } else {
                v.contains("SameSite=Strict")
            };
            assert!(
                v.contains("HttpOnly") && same_site && v.contains("Secure"),
                "{v}"
            );
            let (name, rest) = v.split_once('=').unwrap();
            let value = rest.split(';').next().unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.into(), value.into());
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(urlencoded(form))
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }

    /// Signs in through the form (its CSRF token and cookie first).
    async fn sign_in(&mut self, user: &str, password: &str) -> (u16, String) {
        let (_, page) = self.get("/login").await;
        let csrf = csrf_of(&page);
        self.post(
            "/login",
            &[("user", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }
}

/// `application/x-www-form-urlencoded`, as a browser encodes a form.
fn urlencoded(form: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".into(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    form.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The CSRF token of the first form in `page`.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let at = page.find(marker).expect("a form with a CSRF token") + marker.len();
    page[at..].split('"').next().unwrap().to_owned()
}

fn assert_clean(what: &str, text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "`{c}` leaked into {what}:\n{text}");
    }
}

/// The demo configuration with the console, opening hours and a re-engagement template.
pub fn inbox_config(dir: &std::path::Path) -> medrelay::config::Loaded {
    inbox_config_with(dir, "")
}

/// [`inbox_config`] with `console` appended to the `[console]` table (a `[console.oidc]`...).
pub fn inbox_config_with(dir: &std::path::Path, console: &str) -> medrelay::config::Loaded {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "fallback_languages = [\"en_US\"]\n",
        "fallback_languages = [\"en_US\"]\nopening_hours = \"Mon-Fri 08:00-18:00\"\nreply_sla = \"30m\"\n",
        1,
    );
    let text = format!(
        "{text}\n[templates.reply_waiting]\nname = \"reply_waiting\"\nlanguages = [\"en_US\"]\nbody = []\n\n\
         [console]\nlisten = \"127.0.0.1:0\"\nsession_hours = 48\nreengage_template = \"reply_waiting\"\n\n\
         [[console.canned]]\nname = \"Calling you\"\ntext = \"We are calling you now.\"\nlanguage = \"en\"\n{console}"
    );
    std::fs::write(&path, text).unwrap();
    medrelay::config::load(&path).unwrap()
}

/// Serves the console of `loaded` on its store, clock and WhatsApp transport; `true` on the
/// sender stops it.
async fn console(
    loaded: &medrelay::config::Loaded,
    store: &medrelay_pipeline::store::Store,
    clock: &Arc<ManualClock>,
    service: &medrelay_pipeline::service::Service,
) -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = medrelay::commands::run::start_console(
        loaded,
        store,
        clock.clone(),
        service.media_source.clone(),
        halt_rx,
    )
    .await
    .unwrap()
    .expect("the console is configured");
    (addr, halt_tx, task)
}

/// Adds a console user through the command line.
pub async fn add_user(config: &str, name: &str, role: &str) {
    let (code, out) = common::cli_with_config(
        config,
        &[
            "users",
            "add",
            name,
            "--role",
            role,
            "--sites",
            "newyork",
            "--password-env",
            STAFF_PASSWORD_ENV,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
}

/// A seeded run: the sample export imported on Monday 30 November, 10:00 in New York (the clinic
/// open), its messages sent, and two patients writing: free text, and an emergency phrase.
struct Seeded {
    dir: tempfile::TempDir,
    loaded: medrelay::config::Loaded,
    config: String,
    clock: Arc<ManualClock>,
    store: medrelay_pipeline::store::Store,
    service: medrelay_pipeline::service::Service,
    sim: Arc<medrelay_pipeline::whatsapp::simulator::Simulator>,
}

async fn seeded() -> Seeded {
    static ENV: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before anything reads it; only this binary reads this name.
    ENV.call_once(|| unsafe { std::env::set_var(STAFF_PASSWORD_ENV, STAFF_PASSWORD) });
    let dir = tempfile::tempdir().unwrap();
    let loaded = inbox_config(dir.path());
    let config = dir
        .path()
        .join("medrelay.toml")
        .to_str()
        .unwrap()
        .to_owned();
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-30T15:00:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    while !service.tick(50).await.unwrap().is_idle() {}
    let sim = service.simulator.clone().unwrap();
    sim.patient_texts("+12127365001", FREE_TEXT);
    sim.patient_texts("+12127365002", EMERGENCY);
    while !service.tick(50).await.unwrap().is_idle() {}
    Seeded {
        dir,
        loaded,
        config,
        clock,
        store,
        service,
        sim,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_answer_patients_in_the_console_inside_the_window_and_only_by_template_outside_it() {
    let logs = common::captured_logs();
    // Two patients wrote: free text, and an emergency phrase.
    let Seeded {
        dir,
        loaded,
        config,
        clock,
        store,
        service,
        sim,
    } = seeded().await;
    let config = config.as_str();
    let lines = store.conversations(&InboxFilter::default()).await.unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0].reason,
        ConversationReason::Emergency,
        "emergency first"
    );
    assert_eq!(lines[1].reason, ConversationReason::FreeText);
    assert!(lines.iter().all(|l| l.site.as_deref() == Some("newyork")));
    let (emergency, free_text) = (lines[0].id, lines[1].id);
    // Alice hears that a person will answer, and when; the emergency had its safety reply.
    let answers: Vec<String> = sim
        .sent()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| format!("{} {}", b["to"], b["text"]["body"]))
        .collect();
    assert!(
        answers.contains(&"\"12127365001\" \"Thank you for your message. A person from the clinic will answer here within 30 minutes.\"".to_owned()),
        "{answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|a| a.starts_with("\"12127365002\" \"If this is an emergency")),
        "{answers:?}"
    );
    assert_eq!(answers.len(), 2, "{answers:?}");
    // The SLA clock: 30 minutes of opening time.
    assert_eq!(
        lines[1].reply_due_at,
        Some("2026-11-30T15:30:00Z".parse().unwrap())
    );
    let alerts = store.recent_alerts(20).await.unwrap();
    let alert = alerts
        .iter()
        .find(|a| a.kind == "emergency_phrase")
        .expect("the emergency alert");
    assert!(
        alert
            .detail
            .contains(&format!("inbox conversation {emergency}")),
        "{alert:?}"
    );

    add_user(config, "frontdesk", "staff").await;
    add_user(config, "manager", "viewer").await;
    add_user(config, "temp", "staff").await;
    let (addr, halt_tx, task) = console(&loaded, &store, &clock, &service).await;

    // Nothing without a session; the sign-in form refuses a post without its CSRF token.
    let mut anon = Session::new(addr);
    let (status, _) = anon.get("/inbox").await;
    assert_eq!(status, 303);
    let (status, _) = anon
        .post(
            "/login",
            &[("user", "frontdesk"), ("password", STAFF_PASSWORD)],
        )
        .await;
    assert_eq!(status, 403, "a sign-in without the CSRF token is refused");

    // Five wrong passwords lock the account: then even the right one is refused.
    let mut guesser = Session::new(addr);
    for _ in 0..5 {
        let (status, page) = guesser.sign_in("temp", "wrong-password-123").await;
        assert_eq!(status, 401, "{page}");
    }
    let (status, page) = guesser.sign_in("temp", STAFF_PASSWORD).await;
    assert_eq!(status, 401);
    assert!(page.contains("locked"), "{page}");
    let locked = store.login_record("temp").await.unwrap().unwrap();
    assert!(locked.user.locked_until.is_some_and(|t| t > clock.now()));

    // A viewer: the queue's size, no patient data, no conversation.
    let mut viewer = Session::new(addr);
    let (status, _) = viewer.sign_in("manager", STAFF_PASSWORD).await;
    assert_eq!(status, 303);
    let (status, page) = viewer.get("/inbox").await;
    assert_eq!(status, 200);
    assert!(page.contains("data-count=\"open\">2<"), "{page}");
    assert_clean("the viewer's inbox", &page);
    let (status, page) = viewer.get(&format!("/inbox/{emergency}")).await;
    assert_eq!(status, 403);
    assert_clean("the viewer's refusal", &page);

    // Staff: the list (no content in it), then a conversation, whose opening is audited.
    let mut staff = Session::new(addr);
    let (status, _) = staff.sign_in("frontdesk", STAFF_PASSWORD).await;
    assert_eq!(status, 303);
    let (status, page) = staff.get("/inbox").await;
    assert_eq!(status, 200);
    let first = page
        .find(&format!("data-conversation=\"{emergency}\""))
        .unwrap();
    let second = page
        .find(&format!("data-conversation=\"{free_text}\""))
        .unwrap();
    assert!(first < second, "the emergency is listed first");
    assert!(
        !page.contains("INBOXCANARY"),
        "the list shows no message text"
    );
    let since = clock.now();
    let (status, page) = staff.get(&format!("/inbox/{free_text}")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains(FREE_TEXT) && page.contains("+12127365001"),
        "{page}"
    );
    assert!(
        page.contains("id=\"send-reply\""),
        "inside the window: a text reply"
    );
    let viewed = store.audit_since(since).await.unwrap();
    assert!(
        viewed.iter().any(|r| r.action == "phi_view"
            && r.actor == "frontdesk"
            && r.subject == format!("conversation:{free_text}")),
        "{viewed:?}"
    );

    // A body past the console's form limit is refused before it is read whole.
    let huge = "x".repeat(100 * 1024);
    let (status, _) = staff
        .post(&format!("/inbox/{free_text}/reply"), &[("text", &huge)])
        .await;
    assert_eq!(status, 413);

    // A reply without the CSRF token is refused; with it, queued and sent once.
    let (status, _) = staff
        .post(
            &format!("/inbox/{free_text}/reply"),
            &[("text", "Yes, 10:30 is fine.")],
        )
        .await;
    assert_eq!(status, 403);
    clock.set("2026-11-30T15:10:00Z".parse().unwrap());
    let csrf = csrf_of(&page);
    let (status, _) = staff
        .post(
            &format!("/inbox/{free_text}/reply"),
            &[("csrf", &csrf), ("text", "Yes, 10:30 is fine.")],
        )
        .await;
    assert_eq!(status, 303);
    while !service.tick(50).await.unwrap().is_idle() {}
    while !service.tick(50).await.unwrap().is_idle() {}
    let texts: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|b| b["type"] == "text" && b["text"]["body"] == "Yes, 10:30 is fine.")
        .collect();
    assert_eq!(texts.len(), 1, "sent exactly once");
    assert_eq!(texts[0]["to"], "12127365001");
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    assert!(page.contains("data-send-state=\"sent\""), "{page}");
    assert!(
        page.contains("data-status=\"read\""),
        "statuses reconciled: {page}"
    );

    // On the phone Alice confirms: recorded from the conversation, written back like a tap.
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    let (status, _) = staff
        .post(
            &format!("/inbox/{free_text}/act"),
            &[("csrf", &csrf_of(&page)), ("action", "confirm")],
        )
        .await;
    assert_eq!(status, 303);
    while !service.tick(50).await.unwrap().is_idle() {}
    let rows = common::return_rows(dir.path(), "openemr");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].starts_with("50001,1001,confirm,C,"), "{}", rows[0]);
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    assert!(page.contains("recorded: the patient confirms"), "{page}");

    // 15:31: the emergency has waited past its SLA: one alert, once; the answer resolves it.
    clock.set("2026-11-30T15:31:00Z".parse().unwrap());
    service.tick(50).await.unwrap();
    service.tick(50).await.unwrap();
    let sla: Vec<_> = store
        .recent_alerts(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "inbox_sla")
        .collect();
    assert_eq!(sla.len(), 1, "{sla:?}");
    assert!(
        sla[0]
            .detail
            .starts_with(&format!("conversation {emergency}:"))
    );
    assert!(sla[0].resolved_at.is_none());
    let (_, page) = staff.get(&format!("/inbox/{emergency}")).await;
    let (status, _) = staff
        .post(
            &format!("/inbox/{emergency}/reply"),
            &[("csrf", &csrf_of(&page)), ("text", ""), ("canned", "0")],
        )
        .await;
    assert_eq!(status, 303, "a prepared answer");
    while !service.tick(50).await.unwrap().is_idle() {}
    assert_eq!(
        sim.sent()
            .iter()
            .filter(|b| b["to"] == "12127365002" && b["text"]["body"] == "We are calling you now.")
            .count(),
        1
    );
    let sla = store.recent_alerts(50).await.unwrap();
    assert!(
        sla.iter()
            .filter(|a| a.kind == "inbox_sla")
            .all(|a| a.resolved_at.is_some())
    );

    // 25 hours after the patient wrote: no free text, only the template.
    clock.set("2026-12-01T16:10:00Z".parse().unwrap());
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    assert!(page.contains("id=\"send-template\""), "{page}");
    assert!(!page.contains("id=\"send-reply\""));
    let csrf = csrf_of(&page);
    let (status, body) = staff
        .post(
            &format!("/inbox/{free_text}/reply"),
            &[("csrf", &csrf), ("text", "Are you still coming?")],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("24 h"), "{body}");
    let (status, _) = staff
        .post(
            &format!("/inbox/{free_text}/reply"),
            &[("csrf", &csrf), ("template", "1")],
        )
        .await;
    assert_eq!(status, 303);
    while !service.tick(50).await.unwrap().is_idle() {}
    while !service.tick(50).await.unwrap().is_idle() {}
    let templates: Vec<_> = sim
        .sent()
        .into_iter()
        .filter(|b| b["type"] == "template" && b["template"]["name"] == "reply_waiting")
        .collect();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0]["to"], "12127365001");

    // The appointment has started: nothing more is recorded on it.
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    let (status, body) = staff
        .post(
            &format!("/inbox/{free_text}/act"),
            &[("csrf", &csrf_of(&page)), ("action", "cancel")],
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(common::return_rows(dir.path(), "openemr").len(), 1);

    // A text that slips through outside the window: WhatsApp (the simulator) fails it with 131047,
    // and the conversation shows it failed.
    let late = store
        .queue_staff_reply(free_text, "frontdesk", "text", "late text", clock.now())
        .await
        .unwrap();
    while !service.tick(50).await.unwrap().is_idle() {}
    while !service.tick(50).await.unwrap().is_idle() {}
    let d = store
        .open_conversation(free_text, "test", "test", clock.now())
        .await
        .unwrap()
        .unwrap();
    let m = d.messages.iter().find(|m| m.id == late).unwrap();
    assert_eq!(m.state, "failed", "{m:?}");
    assert!(
        m.state_detail.as_deref().unwrap().contains("131047"),
        "{m:?}"
    );

    // The KPI report: two conversations, answered after 10 and 31 minutes.
    let kpi = store
        .kpi_report(
            "2026-11-30T00:00:00Z".parse().unwrap(),
            "2026-12-10T00:00:00Z".parse().unwrap(),
            medrelay_pipeline::store::report::ReportGroup::Site,
            None,
        )
        .await
        .unwrap();
    let ny = kpi.iter().find(|r| r.group == "newyork").unwrap();
    assert_eq!(ny.inbox_conversations, 2);
    assert_eq!(ny.staff_reply_seconds_median, Some(600.0));
    assert_eq!(ny.staff_reply_seconds_p90, Some(1860.0));

    // Close it; the trail verifies; no canary in the logs or the alerts.
    let (_, page) = staff.get(&format!("/inbox/{free_text}")).await;
    let (status, _) = staff
        .post(
            &format!("/inbox/{free_text}/close"),
            &[("csrf", &csrf_of(&page))],
        )
        .await;
    assert_eq!(status, 303);
    let open = store.conversations(&InboxFilter::default()).await.unwrap();
    assert_eq!(
        open.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![emergency]
    );
    assert_eq!(store.audit_verify().await.unwrap().broken, None);
    for a in store.recent_alerts(50).await.unwrap() {
        assert_clean("an alert", &a.detail);
    }
    assert_clean("the logs", &logs.text());

    // Signing out ends the session on the server.
    let (_, page) = staff.get("/inbox").await;
    let signed_in = staff.cookies.clone();
    let (status, _) = staff.post("/logout", &[("csrf", &csrf_of(&page))]).await;
    assert_eq!(status, 303);
    staff.cookies = signed_in;
    let (status, _) = staff.get("/inbox").await;
    assert_eq!(status, 303, "the old cookie no longer signs in");

    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    store.close().await;
}

/// A WebDriver client (the W3C protocol chromedriver speaks) over reqwest.
struct WebDriver {
    http: reqwest::Client,
    base: String,
    _driver: tokio::process::Child,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl WebDriver {
    /// Starts chromedriver on a free port and a headless Debian chromium session.
    async fn start(driver: &std::path::Path, profile: &std::path::Path) -> (WebDriver, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver started");
        let wd = WebDriver {
            http: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
            _driver: child,
        };
        for _ in 0..100 {
            if let Ok(r) = wd.http.get(format!("{}/status", wd.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
                         format!("--user-data-dir={}", profile.display())]
            }
        }}});
        let v = wd.call("POST", "/session", caps).await;
        let session = v["sessionId"].as_str().expect("a session").to_owned();
        (wd, session)
    }

    async fn call(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let r = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        }
        .send()
        .await
        .expect("chromedriver answered");
        let status = r.status();
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {v}");
        v["value"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patients_image_is_fetched_from_whatsapp_only_when_staff_open_it_and_is_audited() {
    let logs = common::captured_logs();
    let Seeded {
        dir: _dir,
        loaded,
        config,
        clock,
        store,
        service,
        sim,
    } = seeded().await;
    let config = config.as_str();
    let file = medrelay_pipeline::whatsapp::MediaFile {
        mime_type: "image/jpeg".into(),
        bytes: b"\xff\xd8\xff\xe0 MEDIACANARY-bytes-of-a-photo".to_vec(),
    };
    sim.patient_sends_media(
        "+12127365003",
        "image",
        file.clone(),
        Some("MEDIACANARY caption: my rash"),
    );
    while !service.tick(50).await.unwrap().is_idle() {}
    let lines = store.conversations(&InboxFilter::default()).await.unwrap();
    let media = lines
        .iter()
        .find(|l| l.reason == ConversationReason::Media)
        .expect("the image opened a conversation");
    add_user(config, "frontdesk", "staff").await;
    add_user(config, "manager", "viewer").await;
    let (addr, halt_tx, task) = console(&loaded, &store, &clock, &service).await;
    let mut staff = Session::new(addr);
    staff.sign_in("frontdesk", STAFF_PASSWORD).await;
    let (status, page) = staff.get(&format!("/inbox/{}", media.id)).await;
    assert_eq!(status, 200);
    assert!(page.contains("MEDIACANARY caption"), "the caption is shown");
    assert!(
        !page.contains("bytes-of-a-photo"),
        "the file is not fetched for the page"
    );
    let marker = "data-media=\"";
    let at = page.find(marker).expect("a link to open the image") + marker.len();
    let message: i64 = page[at..].split('"').next().unwrap().parse().unwrap();
    let path = format!("/inbox/{}/media/{message}", media.id);
    // A viewer may not open it; a message of another conversation is not found.
    let mut viewer = Session::new(addr);
    viewer.sign_in("manager", STAFF_PASSWORD).await;
    assert_eq!(viewer.get(&path).await.0, 403);
    let other = lines.iter().find(|l| l.id != media.id).unwrap();
    assert_eq!(
        staff
            .get(&format!("/inbox/{}/media/{message}", other.id))
            .await
            .0,
        404
    );
    let since = clock.now();
    let (status, body) = staff.get(&path).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("MEDIACANARY-bytes-of-a-photo"),
        "the file itself"
    );
    let audit = store.audit_since(since).await.unwrap();
    assert!(
        audit.iter().any(|r| r.action == "phi_view"
            && r.actor == "frontdesk"
            && r.subject == format!("conversation:{}", media.id)
            && r.detail.to_string().contains("media_of_message")),
        "{audit:?}"
    );
    // Neither the file nor its caption reached a log line.
    let logged = logs.text();
    assert!(!logged.contains("MEDIACANARY"), "{logged}");
    halt_tx.send(true).unwrap();
    let _ = task.await;
}

fn chromium_binary() -> String {
    std::env::var("MEDRELAY_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// One browser session's steps.
struct Browser<'a> {
    wd: &'a WebDriver,
    session: String,
}

impl Browser<'_> {
    async fn go(&self, url: &str) {
        self.wd
            .call(
                "POST",
                &format!("/session/{}/url", self.session),
                serde_json::json!({ "url": url }),
            )
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .wd
            .call(
                "POST",
                &format!("/session/{}/element", self.session),
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.wd
            .call(
                "POST",
                &format!("/session/{}/element/{e}/value", self.session),
                serde_json::json!({ "text": text }),
            )
            .await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.wd
            .call(
                "POST",
                &format!("/session/{}/element/{e}/click", self.session),
                serde_json::json!({}),
            )
            .await;
    }

    async fn source(&self) -> String {
        self.wd
            .call(
                "GET",
                &format!("/session/{}/source", self.session),
                serde_json::Value::Null,
            )
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The page once it contains `needle` (a form post's answer may still be loading when the
    /// click returns); panics with the page after 10 s.
    async fn page_with(&self, needle: &str) -> String {
        let mut page = String::new();
        for _ in 0..100 {
            page = self.source().await;
            if page.contains(needle) {
                return page;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no `{needle}` in the page:\n{page}");
    }

    async fn current_url(&self) -> String {
        self.wd
            .call(
                "GET",
                &format!("/session/{}/url", self.session),
                serde_json::Value::Null,
            )
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A PNG of the window, kept as a CI artefact.
    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self
            .wd
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                serde_json::Value::Null,
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
        let artifacts = std::env::var_os("MEDRELAY_ARTIFACTS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| common::root().join("ci-artifacts"));
        std::fs::create_dir_all(&artifacts).unwrap();
        let path = artifacts.join(name);
        std::fs::write(&path, png).unwrap();
        eprintln!("console screenshot: {}", path.display());
    }

    async fn sign_in(&self, base: &str, user: &str) {
        self.go(&format!("{base}/login")).await;
        self.type_into("#user", user).await;
        self.type_into("#password", STAFF_PASSWORD).await;
        self.click("#sign-in").await;
    }
}

/// In Debian's chromium through chromedriver: staff sign in, open the emergency conversation of
/// a seeded run, answer it, see the simulator deliver the answer, close it; a viewer signed in
/// after them sees no patient data. Screenshots go to `ci-artifacts/console-*.png`. Without
/// chromedriver the test says SKIPPED; with `MEDRELAY_REQUIRE_BROWSER` set it fails instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_answers_and_closes_an_emergency_conversation() {
    let driver = std::env::var_os("MEDRELAY_CHROMEDRIVER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into());
    if !driver.exists() || !std::path::Path::new(&chromium_binary()).exists() {
        assert!(
            std::env::var_os("MEDRELAY_REQUIRE_BROWSER").is_none(),
            "MEDRELAY_REQUIRE_BROWSER is set but chromium or chromedriver is missing"
        );
        eprintln!("SKIPPED: the console in a browser (apt-get install chromium chromium-driver)");
        return;
    }
    let Seeded {
        dir: _dir,
        loaded,
        config,
        clock,
        store,
        service,
        sim,
    } = seeded().await;
    let config = config.as_str();
    let emergency = store.conversations(&InboxFilter::default()).await.unwrap()[0].id;
    add_user(config, "frontdesk", "staff").await;
    add_user(config, "manager", "viewer").await;
    let (addr, halt_tx, task) = console(&loaded, &store, &clock, &service).await;
    // `localhost`: browsers keep Secure cookies for it over plain HTTP (a secure context).
    let base = format!("http://localhost:{}", addr.port());

    let profile = tempfile::tempdir().unwrap();
    let (wd, session) = WebDriver::start(&driver, profile.path()).await;
    let b = Browser {
        wd: &wd,
        session: session.clone(),
    };
    b.sign_in(&base, "frontdesk").await;
    b.page_with("EMERGENCY phrase").await;
    assert!(b.current_url().await.ends_with("/inbox"));
    b.screenshot("console-inbox.png").await;

    b.click(&format!("a[href=\"/inbox/{emergency}\"]")).await;
    b.page_with(EMERGENCY).await;
    b.type_into("#reply-text", "We are calling you right now.")
        .await;
    b.click("#send-reply").await;
    b.page_with("data-send-state=\"pending\"").await;
    // The service sends it; the simulator's statuses come back.
    while !service.tick(50).await.unwrap().is_idle() {}
    while !service.tick(50).await.unwrap().is_idle() {}
    b.go(&format!("{base}/inbox/{emergency}")).await;
    b.page_with("data-status=\"read\"").await;
    assert_eq!(
        sim.sent()
            .iter()
            .filter(|m| m["text"]["body"] == "We are calling you right now.")
            .count(),
        1
    );
    b.screenshot("console-conversation.png").await;
    b.click("#close").await;
    let page = b.page_with("<h1>Inbox</h1>").await;
    assert!(!page.contains(&format!("data-conversation=\"{emergency}\"")));
    b.click("#logout").await;
    b.page_with("<h1>Sign in</h1>").await;

    // A viewer: counts, and no patient data anywhere on the page.
    b.sign_in(&base, "manager").await;
    let page = b.page_with("data-count=\"open\">1<").await;
    assert_clean("the viewer's page in the browser", &page);
    b.screenshot("console-viewer.png").await;

    wd.call(
        "DELETE",
        &format!("/session/{session}"),
        serde_json::Value::Null,
    )
    .await;
    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    store.close().await;
}

/// A local OpenID Connect provider, strict the way a real one is: the code is single-use and
/// bound to the redirect URI and the PKCE challenge, the client authenticates, and the ID token
/// (RS256, `tests/fixtures/oidc/idp_rs256.pem`) carries the nonce it was given.
mod idp {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Form, Query, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    pub const CLIENT_ID: &str = "medrelay-console";
    pub const CLIENT_SECRET: &str = "idp-client-secret-for-tests";

    #[derive(Default)]
    pub struct Idp {
        pub issuer: String,
        /// Who signs in at the provider next.
        pub user: String,
        /// Misbehaviours: sign with another key, put another nonce in the token.
        pub rogue_key: bool,
        pub wrong_nonce: bool,
        /// The clock the tokens are issued on (the console's manual clock).
        pub now: i64,
        codes: HashMap<String, (String, String, String)>,
        pub refused: Vec<String>,
    }

    pub type Shared = Arc<Mutex<Idp>>;

    fn key(path: &str) -> EncodingKey {
        let pem = std::fs::read(super::common::root().join(path)).unwrap();
        EncodingKey::from_rsa_pem(&pem).unwrap()
    }

    async fn discovery(State(idp): State<Shared>) -> Json<Value> {
        let issuer = idp.lock().unwrap().issuer.clone();
        Json(json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }))
    }

    async fn jwks() -> Json<Value> {
        let mut jwk =
            Jwk::from_encoding_key(&key("tests/fixtures/oidc/idp_rs256.pem"), Algorithm::RS256)
                .unwrap();
        jwk.common.key_id = Some("idp-1".into());
        Json(json!({"keys": [jwk]}))
    }

    async fn authorize(
        State(idp): State<Shared>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        let mut idp = idp.lock().unwrap();
        let ok = q.get("response_type").map(String::as_str) == Some("code")
            && q.get("client_id").map(String::as_str) == Some(CLIENT_ID)
            && q.get("code_challenge_method").map(String::as_str) == Some("S256")
            && q.get("scope")
                .is_some_and(|s| s.split(' ').any(|x| x == "openid"));
        if !ok {
            idp.refused.push(format!("authorize: {q:?}"));
            return StatusCode::BAD_REQUEST.into_response();
        }
        let code = format!("code-{}", idp.codes.len() + 1);
        let user = idp.user.clone();
        idp.codes.insert(
            code.clone(),
            (
                q["redirect_uri"].clone(),
                q["code_challenge"].clone(),
                format!("{}|{user}", q["nonce"]),
            ),
        );
        let to = format!("{}?code={code}&state={}", q["redirect_uri"], q["state"]);
        (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
    }

    async fn token(
        State(idp): State<Shared>,
        headers: HeaderMap,
        Form(f): Form<HashMap<String, String>>,
    ) -> Response {
        let mut idp = idp.lock().unwrap();
        let basic = format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        );
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
            idp.refused.push("token: client authentication".into());
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_client"})),
            )
                .into_response();
        }
        let Some((redirect, challenge, nonce_user)) =
            f.get("code").and_then(|c| idp.codes.remove(c))
        else {
            idp.refused.push("token: unknown or used code".into());
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        };
        let verifier = f.get("code_verifier").cloned().unwrap_or_default();
        if f.get("redirect_uri") != Some(&redirect)
            || URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != challenge
            || f.get("grant_type").map(String::as_str) != Some("authorization_code")
        {
            idp.refused.push("token: redirect_uri or PKCE".into());
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant"})),
            )
                .into_response();
        }
        let (nonce, user) = nonce_user.split_once('|').unwrap();
        let claims = json!({
            "iss": idp.issuer, "aud": CLIENT_ID, "sub": format!("sub-{user}"),
            "preferred_username": user,
            "nonce": if idp.wrong_nonce { "another-nonce" } else { nonce },
            "iat": idp.now, "exp": idp.now + 300,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some("idp-1".into());
        let signing = if idp.rogue_key {
            "tests/fixtures/smart/rs384.pem"
        } else {
            "tests/fixtures/oidc/idp_rs256.pem"
        };
        let id_token = jsonwebtoken::encode(&header, &claims, &key(signing)).unwrap();
        Json(json!({"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": id_token})).into_response()
    }

    /// Serves the provider; returns its issuer URL.
    pub async fn start(idp: Shared) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        idp.lock().unwrap().issuer = issuer.clone();
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .with_state(idp);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        issuer
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_sign_in_with_the_hospitals_identity_provider_as_their_local_account() {
    static ENV: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before anything reads them; only this binary reads these names.
    ENV.call_once(|| unsafe {
        std::env::set_var(STAFF_PASSWORD_ENV, STAFF_PASSWORD);
        std::env::set_var("MEDRELAY_TEST_OIDC_SECRET", idp::CLIENT_SECRET);
    });
    let clock = Arc::new(ManualClock::new("2026-11-30T15:00:00Z".parse().unwrap()));
    let provider = idp::Shared::default();
    provider.lock().unwrap().now = clock.now().as_second();
    let issuer = idp::start(provider.clone()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    inbox_config_with(
        dir.path(),
        &format!(
            "\n[console.oidc]\nissuer = \"{issuer}\"\nclient_id = \"{}\"\nclient_secret_env = \"MEDRELAY_TEST_OIDC_SECRET\"\n\
             redirect_url = \"http://127.0.0.1:{port}/oidc/callback\"\ndisplay_name = \"Hospital SSO\"\n",
            idp::CLIENT_ID
        ),
    );
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "listen = \"127.0.0.1:0\"\nsession_hours",
        &format!("listen = \"127.0.0.1:{port}\"\nsession_hours"),
    );
    std::fs::write(&path, text).unwrap();
    let loaded = medrelay::config::load(&path).unwrap();
    let config = path.to_str().unwrap();
    add_user(config, "frontdesk", "staff").await;
    add_user(config, "leaver", "staff").await;
    let (code, out) = common::cli_with_config(
        config,
        &[
            "users",
            "add",
            "sso-anna",
            "--role",
            "staff",
            "--sites",
            "newyork",
            "--sso-only",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = common::cli_with_config(config, &["users", "disable", "leaver"]).await;
    assert_eq!(code, 0, "{out}");
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let (addr, halt_tx, task) = console(&loaded, &store, &clock, &service).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The browser's trip: console -> provider -> console; returns the callback's status and page.
    async fn trip(s: &mut Session, browser: &reqwest::Client, tamper_state: bool) -> (u16, String) {
        let r = s
            .http
            .get(format!("{}/oidc/start", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303);
        s.keep(&r);
        let to_provider = r.headers()["location"].to_str().unwrap().to_owned();
        assert!(
            to_provider.contains("code_challenge_method=S256"),
            "{to_provider}"
        );
        let r = browser.get(&to_provider).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "the provider takes the request");
        let back = r.headers()["location"].to_str().unwrap().to_owned();
        let mut path = back.split_once(&s.base).unwrap().1.to_owned();
        if tamper_state {
            path = path.replace("state=", "state=x");
        }
        s.get(&path).await
    }

    // Password users see the second way in; an SSO-only account has no password to guess.
    let mut anon = Session::new(addr);
    let (_, page) = anon.get("/login").await;
    assert!(
        page.contains("id=\"sso\"") && page.contains("Sign in with Hospital SSO"),
        "{page}"
    );
    assert_eq!(anon.sign_in("sso-anna", "!sso-only").await.0, 401);
    assert_eq!(anon.sign_in("sso-anna", "any-password-at-all").await.0, 401);

    // Anna signs in at the provider and is the local staff account sso-anna.
    provider.lock().unwrap().user = "sso-anna".into();
    let since = clock.now();
    let mut anna = Session::new(addr);
    let (status, page) = trip(&mut anna, &browser, false).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Continue to the inbox"), "{page}");
    assert!(anna.cookies.contains_key("medrelay_session"));
    assert!(
        !anna.cookies.contains_key("medrelay_oidc"),
        "the pending sign-in is over"
    );
    let (status, page) = anna.get("/inbox").await;
    assert_eq!(status, 200, "{page}");
    let audit = store.audit_since(since).await.unwrap();
    assert!(
        audit.iter().any(|r| r.action == "console_sign_in"
            && r.actor == "sso-anna"
            && r.detail["method"] == "oidc"),
        "{audit:?}"
    );

    // Refused: a state that is not this browser's; a person without an (enabled) local account;
    // a token signed by another key; a token with another nonce. None gets a session.
    let refused = |what: &str, status: u16, page: &str, s: &Session| {
        assert!(matches!(status, 401 | 403), "{what}: {status} {page}");
        assert!(!s.cookies.contains_key("medrelay_session"), "{what}");
    };
    let mut s = Session::new(addr);
    let (status, page) = trip(&mut s, &browser, true).await;
    refused("tampered state", status, &page, &s);
    for user in ["mallory", "leaver"] {
        provider.lock().unwrap().user = user.into();
        let mut s = Session::new(addr);
        let (status, page) = trip(&mut s, &browser, false).await;
        refused(user, status, &page, &s);
        assert!(page.contains("no enabled account"), "{page}");
    }
    provider.lock().unwrap().user = "frontdesk".into();
    provider.lock().unwrap().rogue_key = true;
    let mut s = Session::new(addr);
    let (status, page) = trip(&mut s, &browser, false).await;
    refused("another key", status, &page, &s);
    provider.lock().unwrap().rogue_key = false;
    provider.lock().unwrap().wrong_nonce = true;
    let mut s = Session::new(addr);
    let (status, page) = trip(&mut s, &browser, false).await;
    refused("another nonce", status, &page, &s);
    provider.lock().unwrap().wrong_nonce = false;
    // With everything right, frontdesk (a password account too) gets in the same way.
    let mut s = Session::new(addr);
    assert_eq!(trip(&mut s, &browser, false).await.0, 200);
    assert_eq!(s.get("/inbox").await.0, 200);
    halt_tx.send(true).unwrap();
    let _ = task.await;
    store.close().await;
}
