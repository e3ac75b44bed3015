//! The WhatsApp layer over real HTTP on 127.0.0.1: the Cloud API client against the simulator server,
//! medrelay's webhook endpoint, and the loop between them. No timing assertions: waits poll for a
//! condition with a generous deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use medrelay_mapping::model::{
    Appointment, AppointmentEvent, AppointmentKey, AppointmentStatus, ContactPhone, EhrConsent,
    Patient, PhoneUse, SourceVersion,
};
use medrelay_mapping::phi::Phi;
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::config::{Compiled, PipelineConfig};
use medrelay_pipeline::http::simulator::{SimServer, SimServerConfig};
use medrelay_pipeline::http::webhook::{WebhookState, serve, spawn_processing, webhook_router};
use medrelay_pipeline::inbound::Inbound;
use medrelay_pipeline::keys::Keys;
use medrelay_pipeline::send::Sender;
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::Store;
use medrelay_pipeline::whatsapp::WhatsAppTransport;
use medrelay_pipeline::whatsapp::cloud::{
    ApiToken, CloudApiClient, CloudApiConfig, check_templates,
};
use medrelay_pipeline::whatsapp::pacing::{Pacer, PacingLimits};
use medrelay_pipeline::whatsapp::simulator::{
    PatientAction, SimTemplate, Simulator, SimulatorConfig,
};
use medrelay_pipeline::whatsapp::webhook::{
    BusinessNumber, InboundContent, InboundMessage, StatusUpdate, message_webhook, parse, sign,
    status_webhook,
};
use medrelay_pipeline::whatsapp::{BodyParameter, MediaFile, SendError, TemplateMessage};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const APP_SECRET: &[u8] = b"app-secret-for-tests";
const VERIFY_TOKEN: &str = "verify-me";
const TOKEN: &str = "EAAG-test-token";

fn t0() -> Timestamp {
    "2026-03-10T12:00:00Z".parse().unwrap()
}

fn business() -> BusinessNumber {
    BusinessNumber {
        waba_id: "100200300".into(),
        phone_number_id: "4455667788".into(),
        display_phone_number: "15550001111".into(),
    }
}

fn registry() -> BTreeMap<String, SimTemplate> {
    BTreeMap::from([
        (
            "appt_reminder".to_string(),
            SimTemplate {
                languages: vec!["pt_BR".into(), "en_US".into()],
                body_parameters: 2,
                header_parameters: 0,
                buttons: vec!["confirm".into(), "cancel".into()],
                ttl_seconds: None,
                ..Default::default()
            },
        ),
        (
            "appt_named".to_string(),
            SimTemplate {
                languages: vec!["pt_BR".into()],
                body_parameters: 2,
                header_parameters: 1,
                parameter_names: Some(vec!["first_name".into(), "date".into()]),
                header_parameter_name: Some("clinic".into()),
                ..Default::default()
            },
        ),
    ])
}

fn compiled() -> Arc<Compiled> {
    let c: PipelineConfig = toml::from_str(
        r#"
        [sites.main]
        time_zone = "America/Sao_Paulo"
        default_region = "BR"
        fallback_languages = ["pt_BR"]
        [[plan.steps]]
        name = "reminder_48h"
        kind = "reminder"
        offset = "48h"
        template = "reminder"
        [templates.reminder]
        name = "appt_reminder"
        languages = ["pt_BR", "en_US"]
        body = ["given_name", "local_date"]
        buttons = ["confirm", "cancel"]
        "#,
    )
    .unwrap();
    Arc::new(c.compile().unwrap())
}

fn simulator(clock: Arc<dyn Clock>) -> Arc<Simulator> {
    Arc::new(Simulator::new(
        SimulatorConfig::default(),
        registry(),
        business(),
        APP_SECRET,
        clock,
    ))
}

async fn spawn_router(router: axum::Router) -> (String, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    tokio::spawn(async move {
        serve(listener, router, async move { s.notified().await })
            .await
            .unwrap();
    });
    (format!("http://{addr}"), stop)
}

async fn sim_server(config: SimServerConfig) -> (SimServer, String) {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(t0()));
    let server = SimServer::new(simulator(clock), config);
    let (url, _stop) = spawn_router(server.router()).await;
    (server, url)
}

fn client(base_url: &str, token: &str) -> CloudApiClient {
    let mut c = CloudApiConfig::new(business().phone_number_id, business().waba_id);
    c.base_url = base_url.to_string();
    c.timeout_secs = 5;
    c.connect_timeout_secs = 2;
    CloudApiClient::new(c, ApiToken::new(token)).unwrap()
}

fn message(to: &str, template: &str, params: usize) -> Value {
    TemplateMessage {
        to: to.into(),
        template: template.into(),
        language: "pt_BR".into(),
        body: (0..params)
            .map(|i| BodyParameter {
                name: None,
                text: format!("p{i}"),
            })
            .collect(),
        header: None,
        quick_replies: vec!["a".into(), "b".into()],
        callback: "job:1".into(),
    }
    .to_json()
}

/// Polls `check` until it holds or 20 s pass (then fails): no timing assertion, just a deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..400 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn the_client_maps_every_error_class_from_the_simulator_server() {
    let (server, url) = sim_server(SimServerConfig {
        token: Some(ApiToken::new(TOKEN)),
        ..SimServerConfig::default()
    })
    .await;
    let c = client(&url, TOKEN);

    let ok = c
        .send(&message("5511900000001", "appt_reminder", 2))
        .await
        .unwrap();
    assert!(ok.wamid.starts_with("wamid."), "{ok:?}");

    // Same recipient again within the pair interval: delay that recipient only.
    assert_eq!(
        c.send(&message("5511900000001", "appt_reminder", 2)).await,
        Err(SendError::RecipientBusy { code: 131056 })
    );
    // Template errors halt the template.
    assert!(matches!(
        c.send(&message("5511900000002", "no_such_template", 2))
            .await,
        Err(SendError::HaltTemplate { code: 132001, .. })
    ));
    assert!(matches!(
        c.send(&message("5511900000003", "appt_reminder", 3)).await,
        Err(SendError::HaltTemplate { code: 132000, .. })
    ));
    // A header parameter the template's header does not have is a wrong parameter count too.
    let mut with_header = message("5511900000031", "appt_reminder", 2);
    with_header["template"]["components"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            serde_json::json!({"type": "header", "parameters": [{"type": "text", "text": "x"}]}),
        );
    assert!(matches!(
        c.send(&with_header).await,
        Err(SendError::HaltTemplate { code: 132000, .. })
    ));
    // Account problems halt everything.
    for (n, code) in [(4, 368), (5, 131048), (6, 190)] {
        let to = format!("551190000000{n}");
        server.simulator().fail_with(&to, code);
        let got = c.send(&message(&to, "appt_reminder", 2)).await;
        assert!(
            matches!(&got, Err(SendError::HaltAll { code: c, .. }) if *c == code),
            "{code}: {got:?}"
        );
    }
    // An injected throughput error is a retry.
    server.simulator().fail_with("5511900000007", 130429);
    assert_eq!(
        c.send(&message("5511900000007", "appt_reminder", 2)).await,
        Err(SendError::Retry {
            code: Some(130429),
            detail: "throughput limit reached".into()
        })
    );
    // A wrong token is code 190 (HTTP 401): halt.
    let bad = client(&url, "wrong");
    assert!(matches!(
        bad.send(&message("5511900000008", "appt_reminder", 2))
            .await,
        Err(SendError::HaltAll { code: 190, .. })
    ));
    // 131026 is accepted, then reported on a failed status webhook.
    server.simulator().fail_with("5511900000009", 131026);
    let accepted = c
        .send(&message("5511900000009", "appt_reminder", 2))
        .await
        .unwrap();
    let failed: Vec<_> = server
        .simulator()
        .take_webhooks()
        .into_iter()
        .flat_map(|w| parse(&w.body).unwrap().statuses)
        .filter(|s| s.wamid == accepted.wamid)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].status.as_str(), failed[0].error_code),
        ("failed", Some(131026))
    );

    // Nothing listening: a connection error is a retry, and says nothing about the recipient.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    match client(&dead, TOKEN)
        .send(&message("5511900000010", "appt_reminder", 2))
        .await
    {
        Err(SendError::Retry { code: None, detail }) => {
            assert!(
                !detail.contains("5511900000010") && !detail.contains(TOKEN),
                "{detail}"
            )
        }
        other => panic!("{other:?}"),
    }
    let stats = server.stats();
    assert_eq!(stats.pair_rejections, 1);
}

#[tokio::test]
async fn more_than_the_throughput_limit_in_one_second_is_130429() {
    let (server, url) = sim_server(SimServerConfig {
        per_second: 1,
        ..SimServerConfig::default()
    })
    .await;
    let c = client(&url, TOKEN);
    c.send(&message("5511900000021", "appt_reminder", 2))
        .await
        .unwrap();
    let second = c.send(&message("5511900000022", "appt_reminder", 2)).await;
    assert!(
        matches!(
            second,
            Err(SendError::Retry {
                code: Some(130429),
                ..
            })
        ),
        "{second:?}"
    );
    assert_eq!(server.stats().throughput_rejections, 1);
}

#[tokio::test]
async fn the_template_registry_is_paged_and_matches_the_configuration() {
    let (_server, url) = sim_server(SimServerConfig {
        page_size: 1,
        ..SimServerConfig::default()
    })
    .await;
    let remote = client(&url, TOKEN).fetch_templates().await.unwrap();
    assert_eq!(remote.len(), 3, "one page per language, all followed");
    let reminder = remote.iter().find(|r| r.name == "appt_reminder").unwrap();
    assert_eq!(reminder.body_placeholders(), vec!["1", "2"]);
    assert_eq!(check_templates(&compiled().templates, &remote), vec![]);
}

#[tokio::test]
async fn the_client_reads_the_messaging_limit_from_the_phone_number_object() {
    let (_server, url) = sim_server(SimServerConfig {
        messaging_limit_tier: "TIER_2K".into(),
        token: Some(ApiToken::new(TOKEN)),
        ..SimServerConfig::default()
    })
    .await;
    assert_eq!(
        client(&url, TOKEN).fetch_messaging_limit().await.unwrap(),
        Some(Some(2000))
    );
    // The raw object: both fields asked for; an unknown field is Meta's error 100.
    let http = reqwest::Client::new();
    let r: Value = http
        .get(format!(
            "{url}/v23.0/{}?fields=messaging_limit_tier,quality_rating",
            business().phone_number_id
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["messaging_limit_tier"], "TIER_2K");
    assert_eq!(r["quality_rating"], "GREEN");
    let r = http
        .get(format!(
            "{url}/v23.0/{}?fields=nope",
            business().phone_number_id
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], 100);
    // A wrong token: 190, as for every other call.
    let e = client(&url, "wrong")
        .fetch_messaging_limit()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("190"), "{e}");
}

#[tokio::test]
async fn a_patients_media_is_fetched_over_http_with_the_token_and_checked_against_its_sha256() {
    let (server, url) = sim_server(SimServerConfig {
        token: Some(ApiToken::new(TOKEN)),
        ..SimServerConfig::default()
    })
    .await;
    let file = MediaFile {
        mime_type: "image/jpeg".into(),
        bytes: b"\xff\xd8\xff\xe0 CANARY-MEDIA-BYTES".to_vec(),
    };
    let id = server.simulator().patient_sends_media(
        "+5511987650000",
        "image",
        file.clone(),
        Some("my rash"),
    );
    // The webhook names the media by id only.
    let hooks = server.simulator().take_webhooks();
    let parsed = parse(&hooks[0].body).unwrap();
    assert!(matches!(
        &parsed.messages[0].content,
        InboundContent::Media { kind, media_id: Some(m), caption: Some(c) }
            if kind == "image" && *m == id && c == "my rash"
    ));
    let fetched = client(&url, TOKEN).fetch_media(&id).await.unwrap();
    assert_eq!(fetched, file);
    // The media object is the Cloud API's: url, mime_type, sha256, file_size.
    let meta: Value = reqwest::Client::new()
        .get(format!("{url}/v23.0/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["mime_type"], "image/jpeg");
    assert_eq!(meta["file_size"], file.bytes.len());
    assert_eq!(meta["sha256"].as_str().unwrap().len(), 64);
    // The file URL wants the token too.
    let bare = reqwest::get(meta["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(bare.status(), 401);
    // A wrong token is 190; an unknown media id is an error, not a file; a media id that is
    // not a plain id never reaches a URL.
    let e = client(&url, "wrong").fetch_media(&id).await.unwrap_err();
    assert!(e.to_string().contains("190"), "{e}");
    assert!(client(&url, TOKEN).fetch_media("123").await.is_err());
    let e = client(&url, TOKEN)
        .fetch_media("../v23.0/123/messages")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a media id"), "{e}");
}

#[test]
fn messaging_limit_tiers_parse() {
    use medrelay_pipeline::whatsapp::cloud::parse_messaging_limit as p;
    assert_eq!(p("TIER_250"), Some(Some(250)));
    assert_eq!(p("tier_2k"), Some(Some(2000)));
    assert_eq!(p("TIER_10K"), Some(Some(10_000)));
    assert_eq!(p("TIER_100K"), Some(Some(100_000)));
    assert_eq!(p("TIER_UNLIMITED"), Some(None));
    assert_eq!(p("1000"), Some(Some(1000)));
    assert_eq!(p("TIER_X"), None);
    assert_eq!(p("lots"), None);
}

struct Db {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<ManualClock>,
}

async fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = medrelay_pipeline::store::testing::open(
        &dir.path().join("m.db"),
        Keys::from_secret(b"secret"),
    )
    .await
    .unwrap();
    Db {
        _dir: dir,
        store,
        clock: Arc::new(ManualClock::new(t0())),
    }
}

fn appointment(id: &str, phone: &str, start: Timestamp) -> AppointmentEvent {
    AppointmentEvent {
        appointment: Appointment {
            key: AppointmentKey {
                source: "test".into(),
                id: id.into(),
            },
            placer_id: None,
            status: AppointmentStatus::Booked,
            start,
            end: None,
            time_unknown: false,
            site: "main".into(),
            time_zone: "America/Sao_Paulo".into(),
            location: Some("Clinic".into()),
            practitioner: None,
            service_type: None,
            reason: None,
            patient: Patient {
                id: Some(Phi::new(format!("mrn-{id}"))),
                given_name: Some(Phi::new("Ana".into())),
                family_name: None,
                phones: vec![ContactPhone {
                    e164: Some(Phi::new(phone.into())),
                    unusable: None,
                    use_: PhoneUse::Mobile,
                    rank: 0,
                }],
                preferred_language: Some("pt-BR".into()),
                protected: None,
            },
            ehr_consent: Some(EhrConsent::OptIn),
        },
        version: SourceVersion { at: t0(), seq: 1 },
        raw_ref: format!("test:{id}"),
        message_id: None,
    }
}

async fn ingest(service: &Service, events: &[AppointmentEvent]) {
    service
        .ingest
        .accept(None, "test", t0(), events, &[], false)
        .await
        .unwrap();
}

async fn post_webhook(url: &str, body: &[u8], signature: Option<&str>) -> u16 {
    let http = reqwest::Client::new();
    let mut req = http.post(format!("{url}/webhook")).body(body.to_vec());
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_webhook_endpoint_verifies_signs_limits_and_stores() {
    let d = db().await;
    let sim = simulator(d.clock.clone());
    let inbound = Arc::new(Inbound::new(
        d.store.clone(),
        compiled(),
        sim,
        d.clock.clone(),
    ));
    let state = WebhookState::new(inbound.clone(), APP_SECRET, VERIFY_TOKEN);
    let (url, _stop) = spawn_router(webhook_router(state)).await;
    let http = reqwest::Client::new();

    // Subscription verification.
    let get = |mode: &'static str, token: &'static str| {
        let http = http.clone();
        let url = url.clone();
        async move {
            let r = http
                .get(format!(
                    "{url}/webhook?hub.mode={mode}&hub.verify_token={token}&hub.challenge=1158201444"
                ))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        get("subscribe", VERIFY_TOKEN).await,
        (200, "1158201444".into())
    );
    assert_eq!(get("subscribe", "wrong").await.0, 403);
    assert_eq!(get("unsubscribe", VERIFY_TOKEN).await.0, 403);

    // Signatures: missing or wrong is 401 and nothing is stored.
    let body = std::fs::read(fixture("quick_reply_single.json")).unwrap();
    assert_eq!(post_webhook(&url, &body, None).await, 401);
    assert_eq!(
        post_webhook(&url, &body, Some(&sign(b"other secret", &body))).await,
        401
    );
    assert_eq!(post_webhook(&url, &body, Some("sha256=00")).await, 401);
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(
        post_webhook(&url, &tampered, Some(&sign(APP_SECRET, &body))).await,
        401
    );
    assert!(d.store.unprocessed_webhooks().await.unwrap().is_empty());

    // Too large: 413.
    let big = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(
        post_webhook(&url, &big, Some(&sign(APP_SECRET, &big))).await,
        413
    );

    // Signed, with fields we do not know (pywa's newer payloads): 200, stored, readable.
    assert_eq!(
        post_webhook(&url, &body, Some(&sign(APP_SECRET, &body))).await,
        200
    );
    let odd = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"calls","value":{"x":[1]}}]}],"new":true}"#;
    assert_eq!(
        post_webhook(&url, odd, Some(&sign(APP_SECRET, odd))).await,
        200
    );
    // Even a signed body that is not JSON is stored (and kept for review), never a 500.
    assert_eq!(
        post_webhook(&url, b"not json", Some(&sign(APP_SECRET, b"not json"))).await,
        200
    );
    assert_eq!(d.store.unprocessed_webhooks().await.unwrap().len(), 3);
    let r = inbound.process_pending().await.unwrap();
    assert_eq!((r.webhooks, r.unreadable), (3, 1));
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/whatsapp")
        .join(name)
}

#[test]
fn every_pywa_fixture_parses() {
    let mut payloads = 0;
    for name in [
        "callback_button.json",
        "callback_selection.json",
        "message.json",
        "message_status.json",
        "quick_reply_single.json",
    ] {
        let v: Value = serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap();
        let named: Vec<Value> = if v.get("object").is_some() {
            vec![v]
        } else {
            v.as_object().unwrap().values().cloned().collect()
        };
        for p in named {
            let parsed = parse(p.to_string().as_bytes());
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
            let w = parsed.unwrap();
            assert!(
                !w.statuses.is_empty()
                    || !w.messages.is_empty()
                    || p["entry"][0]["changes"][0]["value"]["messages"].is_null(),
                "{name}"
            );
            payloads += 1;
        }
    }
    assert!(payloads >= 35, "{payloads}");
    // Spot checks of real shapes.
    let statuses: Value =
        serde_json::from_slice(&std::fs::read(fixture("message_status.json")).unwrap()).unwrap();
    let failed = parse(statuses["failed"].to_string().as_bytes()).unwrap();
    assert_eq!(failed.statuses[0].status, "failed");
    assert_eq!(failed.statuses[0].error_code, Some(130472));
    // The `pricing` object (billable, category; an older payload without `type`).
    let sent = parse(statuses["sent"].to_string().as_bytes()).unwrap();
    let pricing = sent.statuses[0].pricing.clone().unwrap();
    assert_eq!(
        (
            pricing.billable,
            pricing.category.as_str(),
            pricing.kind.as_str()
        ),
        (true, "service", "")
    );
    let buttons: Value =
        serde_json::from_slice(&std::fs::read(fixture("callback_button.json")).unwrap()).unwrap();
    let tap = parse(buttons["quick_reply"].to_string().as_bytes()).unwrap();
    assert!(tap.messages[0].context_id.is_some());
    // An interactive list row (the survey's 0-10 list): its id, as a list reply, with its title.
    let selection: Value =
        serde_json::from_slice(&std::fs::read(fixture("callback_selection.json")).unwrap())
            .unwrap();
    let pick = parse(selection["callback"].to_string().as_bytes()).unwrap();
    assert_eq!(
        pick.messages[0].content,
        InboundContent::Interactive {
            id: "callback_data".into(),
            list: true,
            title: Some("title".into()),
        }
    );
}

/// Everything wired over HTTP: Service -> CloudApiClient -> simulator server -> signed webhooks ->
/// medrelay's /webhook -> store -> processing.
#[tokio::test]
async fn the_whole_loop_runs_over_http() {
    let d = db().await;
    let sim_clock: Arc<dyn Clock> = d.clock.clone();
    let sim = simulator(sim_clock);
    let config = compiled();
    let server = SimServer::new(sim.clone(), SimServerConfig::default());
    let (sim_url, _s1) = spawn_router(server.router()).await;
    let transport: Arc<dyn WhatsAppTransport> = Arc::new(client(&sim_url, TOKEN));
    let service = Service::new(
        d.store.clone(),
        config.clone(),
        transport.clone(),
        None,
        vec![],
        d.clock.clone(),
    );
    let inbound = Arc::new(Inbound::new(
        d.store.clone(),
        config,
        transport,
        d.clock.clone(),
    ));
    let state = WebhookState::new(inbound.clone(), APP_SECRET, VERIFY_TOKEN);
    let stored = state.stored.clone();
    let (hook_url, _s2) = spawn_router(webhook_router(state)).await;
    let stop = Arc::new(Notify::new());
    let _processor = spawn_processing(inbound, stored, Duration::from_millis(100), stop.clone());
    let _pusher = server.spawn_webhook_pusher(format!("{hook_url}/webhook"), stop.clone());

    let start = t0() + jiff::SignedDuration::from_mins(48 * 60 - 5);
    sim.script("+5511987650001", [PatientAction::Tap("confirm".into())]);
    sim.fail_with("+5511987650002", 131026);
    ingest(
        &service,
        &[
            appointment("A1", "+5511987650001", start),
            appointment("A2", "+5511987650002", start),
        ],
    )
    .await;
    let tick = service.tick(10).await.unwrap();
    assert_eq!(tick.send.sent, 2, "{tick:?}");

    let store = d.store.clone();
    eventually("read + failed statuses and the tap are applied", || {
        let store = store.clone();
        async move {
            let s = store.status_summary(t0()).await.unwrap();
            s.messages_by_status.get("read") == Some(&1)
                && s.messages_by_status.get("failed") == Some(&1)
                && s.replies_by_outcome.get("accepted:confirm") == Some(&1)
        }
    })
    .await;
    let a2 = d.store.find_appointment("A2").await.unwrap().unwrap();
    let steps = d.store.steps_of(a2).await.unwrap();
    assert_eq!(steps[0].message_status.as_deref(), Some("failed"));
    assert!(server.stats().webhooks_delivered >= 5);
    stop.notify_waiters();
}

/// The in-process simulator as transport, a service and medrelay's webhook endpoint on loopback
/// (webhooks are posted to it by hand).
struct Endpoint {
    sim: Arc<Simulator>,
    config: Arc<Compiled>,
    service: Service,
    inbound: Arc<Inbound>,
    url: String,
    _stop: Arc<Notify>,
}

async fn endpoint(d: &Db) -> Endpoint {
    let sim = simulator(d.clock.clone());
    let config = compiled();
    let service = Service::new(
        d.store.clone(),
        config.clone(),
        sim.clone(),
        None,
        vec![],
        d.clock.clone(),
    );
    let inbound = Arc::new(Inbound::new(
        d.store.clone(),
        config.clone(),
        sim.clone(),
        d.clock.clone(),
    ));
    let (url, _stop) = spawn_router(webhook_router(WebhookState::new(
        inbound.clone(),
        APP_SECRET,
        VERIFY_TOKEN,
    )))
    .await;
    Endpoint {
        sim,
        config,
        service,
        inbound,
        url,
        _stop,
    }
}

/// Duplicates and out-of-order statuses, delivered by hand through the endpoint.
#[tokio::test]
async fn duplicate_and_out_of_order_webhooks_merge_monotonically() {
    let d = db().await;
    let Endpoint {
        sim,
        service,
        inbound,
        url,
        _stop,
        ..
    } = endpoint(&d).await;
    sim.script("+5511987650003", [PatientAction::Tap("confirm".into())]);
    ingest(
        &service,
        &[appointment(
            "B1",
            "+5511987650003",
            t0() + jiff::SignedDuration::from_mins(48 * 60 - 5),
        )],
    )
    .await;
    // Send only (no tick: the webhooks stay with the simulator).
    let sender = Sender::new(d.store.clone(), compiled(), sim.clone(), d.clock.clone());
    service.scheduler.plan_pending().await.unwrap();
    assert_eq!(sender.send_due(10).await.unwrap().sent, 1);
    let hooks = sim.take_webhooks();
    assert_eq!(hooks.len(), 4, "sent, delivered, read, tap");
    let wamid = parse(&hooks[0].body).unwrap().statuses[0].wamid.clone();

    // Read first, then delivered and sent, then everything again.
    for i in [2, 1, 0, 3, 3, 2, 1, 0] {
        assert_eq!(
            post_webhook(&url, &hooks[i].body, Some(&hooks[i].signature)).await,
            200
        );
    }
    let r = inbound.process_pending().await.unwrap();
    assert_eq!(r.statuses_applied, 1, "only `read` moved the status: {r:?}");
    assert_eq!((r.replies, r.duplicates), (1, 1));
    let s = d.store.status_summary(t0()).await.unwrap();
    assert_eq!(s.messages_by_status.get("read"), Some(&1));
    assert_eq!(s.replies_by_outcome.get("accepted:confirm"), Some(&1));

    // A late `failed` after `read` is the one status that still ranks higher; a late `delivered`
    // re-delivered with a new signature changes nothing.
    let late = status_webhook(
        &business(),
        &StatusUpdate {
            wamid: wamid.clone(),
            status: "delivered".into(),
            timestamp: t0().as_second() + 100,
            recipient_id: "5511987650003".into(),
            error_code: None,
            callback: None,
            pricing: None,
        },
    )
    .to_string()
    .into_bytes();
    assert_eq!(
        post_webhook(&url, &late, Some(&sign(APP_SECRET, &late))).await,
        200
    );
    assert_eq!(inbound.process_pending().await.unwrap().statuses_applied, 0);
    let s = d.store.status_summary(t0()).await.unwrap();
    assert_eq!(s.messages_by_status.get("read"), Some(&1));
}

/// A paced sender defers a recipient that is not ready and still sends to the others.
#[tokio::test]
async fn a_paced_sender_defers_a_busy_recipient_without_blocking_others() {
    let d = db().await;
    let sim = simulator(d.clock.clone());
    let config = compiled();
    let pacer = Arc::new(Pacer::new(PacingLimits {
        per_second: 1000,
        pair_interval: Duration::from_secs(6),
    }));
    let service = Service::new_with_pacer(
        d.store.clone(),
        config,
        sim.clone(),
        None,
        vec![],
        d.clock.clone(),
        pacer,
    );
    let start = t0() + jiff::SignedDuration::from_mins(48 * 60 - 5);
    ingest(
        &service,
        &[
            appointment("C1", "+5511987650004", start),
            appointment(
                "C2",
                "+5511987650004",
                start + jiff::SignedDuration::from_mins(1),
            ),
            appointment("C3", "+5511987650005", start),
        ],
    )
    .await;
    service.scheduler.plan_pending().await.unwrap();
    let r = service.sender.send_due(10).await.unwrap();
    assert_eq!(
        (r.claimed, r.sent, r.paced, r.retried),
        (3, 2, 1, 0),
        "{r:?}"
    );
    // The deferred job is pending for a few seconds from now, not failed.
    let mut deferred = None;
    for id in ["C1", "C2"] {
        let a = d.store.find_appointment(id).await.unwrap().unwrap();
        for s in d.store.steps_of(a).await.unwrap() {
            if s.state == "pending" {
                deferred = Some(s);
            }
        }
    }
    let deferred = deferred.expect("one job deferred");
    // Regression: a deferral used to count as an attempt and stretch later backoffs.
    assert_eq!(deferred.attempts, 0, "a pacing deferral is not an attempt");
    assert!(deferred.reason.unwrap().starts_with("paced:"));
    assert_eq!(sim.sent().len(), 2);
}

/// Posts one patient message to the endpoint, signed as Meta signs it, and processes it.
async fn patient_says(url: &str, inbound: &Inbound, message: InboundMessage) {
    let body = message_webhook(&business(), &message)
        .to_string()
        .into_bytes();
    assert_eq!(
        post_webhook(url, &body, Some(&sign(APP_SECRET, &body))).await,
        200
    );
    inbound.process_pending().await.unwrap();
}

/// What the service answered the patient with (free-form texts), in order.
fn answers(sim: &Simulator) -> Vec<String> {
    sim.sent()
        .iter()
        .filter(|b| b["type"] == "text")
        .map(|b| b["text"]["body"].as_str().unwrap().to_string())
        .collect()
}

/// Over the real endpoint: a tap on a message about a slot that has moved gets the polite "this
/// appointment changed" answer and is not written back; STOP revokes consent at once (the pending
/// reminder is withdrawn) and START restores it; an emergency phrase gets the safety answer and an
/// alert for staff.
#[tokio::test]
async fn stale_taps_stop_then_start_and_emergency_phrases_over_the_webhook_endpoint() {
    let d = db().await;
    let Endpoint {
        sim,
        config,
        service,
        inbound,
        url,
        _stop,
    } = endpoint(&d).await;
    let phone = "+5511987650005";
    let start = t0() + jiff::SignedDuration::from_mins(48 * 60 - 5);
    ingest(&service, &[appointment("S1", phone, start)]).await;
    let sender = Sender::new(
        d.store.clone(),
        config.clone(),
        sim.clone(),
        d.clock.clone(),
    );
    service.scheduler.plan_pending().await.unwrap();
    assert_eq!(sender.send_due(10).await.unwrap().sent, 1);
    let reminder = sim.sent().pop().unwrap();
    let wamid = parse(&sim.take_webhooks()[0].body).unwrap().statuses[0]
        .wamid
        .clone();
    let confirm = reminder["template"]["components"][1]["parameters"][0]["payload"]
        .as_str()
        .unwrap()
        .to_string();

    // The EHR moves the appointment a day later; then the patient taps Confirm on the old message.
    let mut moved = appointment("S1", phone, start + jiff::SignedDuration::from_hours(24));
    moved.version.seq = 2;
    ingest(&service, &[moved]).await;
    let tap = |id: &str, payload: &str| InboundMessage {
        id: id.into(),
        from: phone.trim_start_matches('+').into(),
        timestamp: t0().as_second(),
        context_id: Some(wamid.clone()),
        content: InboundContent::Button {
            payload: payload.into(),
        },
    };
    patient_says(&url, &inbound, tap("wamid.tap-old", &confirm)).await;
    let s = d.store.status_summary(t0()).await.unwrap();
    assert_eq!(s.replies_by_outcome.get("stale:confirm"), Some(&1), "{s:?}");
    assert_eq!(s.replies_by_outcome.get("accepted:confirm"), None);
    assert_eq!(
        answers(&sim),
        std::slice::from_ref(&config.reply_texts.stale)
    );

    // STOP: consent is revoked at once and the reminder planned for the new slot is withdrawn.
    service.scheduler.plan_pending().await.unwrap();
    let text = |id: &str, body: &str| InboundMessage {
        id: id.into(),
        from: phone.trim_start_matches('+').into(),
        timestamp: t0().as_second(),
        context_id: None,
        content: InboundContent::Text { body: body.into() },
    };
    patient_says(&url, &inbound, text("wamid.stop", "stop")).await;
    let contact = d.store.keys().contact_hash(phone);
    let ledger = d.store.consent_ledger(&contact).await.unwrap();
    assert!(!ledger.is_empty(), "the STOP is in the consent ledger");
    d.clock.advance(jiff::SignedDuration::from_hours(24));
    let after_stop = sender.send_due(10).await.unwrap();
    assert_eq!(after_stop.sent, 0, "{after_stop:?}");
    assert_eq!(answers(&sim).last(), Some(&config.reply_texts.stopped));

    // START restores it: the answer says so, and the ledger's newest entry is the patient's grant.
    patient_says(&url, &inbound, text("wamid.start", "START")).await;
    assert_eq!(answers(&sim).last(), Some(&config.reply_texts.started));
    let ledger = d.store.consent_ledger(&contact).await.unwrap();
    assert_eq!(
        ledger.len(),
        4,
        "two purposes revoked, then granted: {ledger:?}"
    );

    // An emergency phrase: the safety answer, an alert for staff, no bot conversation.
    patient_says(&url, &inbound, text("wamid.help", "I have chest pain")).await;
    assert_eq!(answers(&sim).last(), Some(&config.reply_texts.emergency));
    let s = d.store.status_summary(d.clock.now()).await.unwrap();
    assert_eq!(
        s.replies_by_outcome.get("safety_reply:emergency"),
        Some(&1),
        "{s:?}"
    );
    assert!(
        s.open_alerts
            .iter()
            .any(|(_, kind, _)| kind == "emergency_phrase"),
        "{s:?}"
    );
    // Re-delivered, the same message changes nothing and is not answered twice.
    let before = answers(&sim).len();
    patient_says(&url, &inbound, text("wamid.help", "I have chest pain")).await;
    assert_eq!(answers(&sim).len(), before);
}

/// A NAMED template as Meta treats it: parameters must carry their `parameter_name` (#100 otherwise),
/// the names must be the template's (132000), and the registry says NAMED with `{{name}}` placeholders,
/// so `templates check` of a NAMED configuration against the simulator passes.
#[tokio::test]
async fn named_templates_need_their_parameter_names() {
    let (_server, url) = sim_server(SimServerConfig::default()).await;
    let c = client(&url, TOKEN);
    // A new recipient each time: the pair limit is not what is tested here.
    let next = std::sync::atomic::AtomicU32::new(40);
    let named = |names: [&str; 3]| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TemplateMessage {
            to: format!("55119000000{n}"),
            template: "appt_named".into(),
            language: "pt_BR".into(),
            body: names[1..]
                .iter()
                .map(|n| BodyParameter {
                    name: (!n.is_empty()).then(|| n.to_string()),
                    text: "x".into(),
                })
                .collect(),
            header: Some(BodyParameter {
                name: (!names[0].is_empty()).then(|| names[0].to_string()),
                text: "Clinic".into(),
            }),
            quick_replies: vec![],
            callback: "job:41".into(),
        }
        .to_json()
    };
    assert!(matches!(
        c.send(&named(["clinic", "", ""])).await,
        Err(SendError::HaltTemplate { code: 100, .. })
    ));
    assert!(matches!(
        c.send(&named(["clinic", "first_name", "time"])).await,
        Err(SendError::HaltTemplate { code: 132000, .. })
    ));
    assert!(matches!(
        c.send(&named(["site", "first_name", "date"])).await,
        Err(SendError::HaltTemplate { code: 132000, .. })
    ));
    c.send(&named(["clinic", "date", "first_name"]))
        .await
        .unwrap();

    let remote = c.fetch_templates().await.unwrap();
    let r = remote.iter().find(|r| r.name == "appt_named").unwrap();
    assert_eq!(r.parameter_format.as_deref(), Some("NAMED"));
    assert_eq!(r.body_placeholders(), ["first_name", "date"]);
    assert_eq!(r.header_placeholders(), ["clinic"]);
    let configured: PipelineConfig = toml::from_str(
        r#"
        [sites.main]
        time_zone = "America/Sao_Paulo"
        default_region = "BR"
        [[plan.steps]]
        name = "reminder_48h"
        kind = "reminder"
        offset = "48h"
        template = "named"
        [templates.named]
        name = "appt_named"
        languages = ["pt_BR"]
        header = "location"
        header_parameter_name = "clinic"
        body = ["given_name", "local_date"]
        parameter_names = ["first_name", "date"]
        "#,
    )
    .unwrap();
    assert_eq!(
        check_templates(&configured.compile().unwrap().templates, &remote),
        vec![]
    );
}

/// The statuses' `pricing` for one accepted send: (billable, category, type), or the failure code.
fn priced(sim: &Simulator, body: &Value) -> Result<(bool, String, String), Option<i64>> {
    sim.handle_send(body).unwrap();
    let webhooks = sim.take_webhooks();
    let first = parse(&webhooks[0].body).unwrap();
    let s = &first.statuses[0];
    if s.status == "failed" {
        return Err(s.error_code);
    }
    let p = s.pricing.clone().unwrap();
    Ok((p.billable, p.category, p.kind))
}

#[test]
fn the_simulator_prices_by_category_and_window_and_refuses_a_service_text_outside_the_window() {
    let clock = Arc::new(ManualClock::new(t0()));
    let sim = simulator(clock.clone());
    let template = serde_json::json!({
        "messaging_product": "whatsapp", "to": "5511987650009", "type": "template",
        "template": {"name": "appt_reminder", "language": {"code": "pt_BR"},
          "components": [{"type": "body", "parameters": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}
    });
    let text = serde_json::json!({
        "messaging_product": "whatsapp", "to": "5511987650009", "type": "text",
        "text": {"body": "Thank you"}
    });
    // No window yet: the template is a billable utility message, a text cannot be sent.
    assert_eq!(
        priced(&sim, &template),
        Ok((true, "utility".into(), "regular".into()))
    );
    assert_eq!(priced(&sim, &text), Err(Some(131047)));
    // The patient writes: for 24 h a utility template is free and a text is a free service message.
    sim.patient_texts("+5511987650009", "Can I come later?");
    sim.take_webhooks();
    clock.advance(jiff::SignedDuration::from_hours(23));
    assert_eq!(
        priced(&sim, &template),
        Ok((false, "utility".into(), "free_customer_service".into()))
    );
    assert_eq!(
        priced(&sim, &text),
        Ok((false, "service".into(), "free_customer_service".into()))
    );
    clock.advance(jiff::SignedDuration::from_hours(2));
    assert_eq!(priced(&sim, &text), Err(Some(131047)));
    assert_eq!(
        priced(&sim, &template),
        Ok((true, "utility".into(), "regular".into()))
    );
}
