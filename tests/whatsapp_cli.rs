//! The CLI in cloud mode over real HTTP on 127.0.0.1: `check --online`, `templates check` and
//! `run` against the Cloud API simulator server (`SimServer`, in-process on an ephemeral port),
//! through the real `CloudApiClient`, the pacer and, for the long-running service, the webhook
//! endpoint it serves. No timing assertions: waits poll with a generous deadline.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use clap::Parser;
use jiff::{SignedDuration, Timestamp, ToSpan};
use medrelay::commands::run::{RunArgs, run_until};
use medrelay_pipeline::clock::{Clock, SystemClock};
use medrelay_pipeline::http::simulator::{SimServer, SimServerConfig};
use medrelay_pipeline::http::webhook::serve;
use medrelay_pipeline::whatsapp::cloud::ApiToken;
use tokio::net::TcpListener;
use tokio::sync::Notify;

const TOKEN_ENV: &str = "MEDRELAY_TEST_CLI_WHATSAPP_TOKEN";
const TOKEN: &str = "EAAG-cli-test-token";
const APP_SECRET_ENV: &str = "MEDRELAY_TEST_CLI_APP_SECRET";
const APP_SECRET: &str = "cli-test-app-secret";
const VERIFY_ENV: &str = "MEDRELAY_TEST_CLI_VERIFY_TOKEN";
const UNSET_ENV: &str = "MEDRELAY_TEST_CLI_NEVER_SET";

/// The variables are set once, before any test starts threads of its own; they are read only by
/// these tests (unique names).
fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: set once per process, first thing in every test, under `Once`.
        unsafe {
            std::env::set_var(TOKEN_ENV, TOKEN);
            std::env::set_var(APP_SECRET_ENV, APP_SECRET);
            std::env::set_var(VERIFY_ENV, "cli-verify");
        }
    });
}

/// Runs the CLI in-process: exit code, stdout, and the error message (what `main` prints).
async fn cli(config: &Path, args: &[&str]) -> (u8, String, String) {
    let config = config.to_str().unwrap();
    let mut full = vec!["medrelay", "--config", config];
    full.extend(args);
    let mut out = Vec::new();
    let (code, err) = match medrelay::run(medrelay::Cli::parse_from(full), &mut out).await {
        Ok(c) => (c, String::new()),
        Err(e) => (medrelay::exit_code_of(&e), format!("{e:#}")),
    };
    (code, String::from_utf8(out).unwrap(), err)
}

/// Serves `server` on an ephemeral port; the URL, and a handle that stops it.
async fn spawn_sim(server: &SimServer) -> (String, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let router = server.router();
    tokio::spawn(async move {
        serve(listener, router, async move { s.notified().await })
            .await
            .unwrap();
    });
    (url, stop)
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    server: SimServer,
    sim_url: String,
    _stop: Arc<Notify>,
}

/// The sample configuration (simulated reply mix off, no quiet hours so the run is the same at any
/// hour), a simulator server built from its templates, then the same file switched to cloud mode
/// against that server.
async fn setup(token_env: &str, extra_whatsapp: &str) -> Setup {
    environment();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let loaded = common::demo_config(&dir, &[]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = medrelay::wiring::simulator_server(
        &loaded,
        SimServerConfig {
            token: Some(ApiToken::new(TOKEN)),
            ..SimServerConfig::default()
        },
        APP_SECRET.as_bytes(),
        clock,
    );
    let (sim_url, stop) = spawn_sim(&server).await;
    let config = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let cloud = format!(
        "[whatsapp.cloud]\nbase_url = \"{sim_url}\"\ntoken_env = \"{token_env}\"\ntimeout_secs = 5\nconnect_timeout_secs = 2\n\n\
         [whatsapp.webhook]\napp_secret_env = \"{APP_SECRET_ENV}\"\nverify_token_env = \"{VERIFY_ENV}\"\n{extra_whatsapp}\n\n\
         [whatsapp.simulator]"
    );
    let text = text
        .replace("mode = \"simulator\"", "mode = \"cloud\"")
        .replacen("[whatsapp.simulator]", &cloud, 1)
        .replace("quiet_hours = \"21:00-08:00\"\n", "");
    std::fs::write(&config, text).unwrap();
    Setup {
        _dir: tmp,
        dir,
        config,
        server,
        sim_url,
        _stop: stop,
    }
}

/// The fixture export with appointments 3 and 4 days from now (New York dates), in the inbox.
fn drop_export(dir: &Path) {
    let today = Timestamp::now().in_tz("America/New_York").unwrap().date();
    let day = |n: i64| {
        today
            .checked_add(n.days())
            .unwrap()
            .strftime("%m/%d/%Y")
            .to_string()
    };
    let text =
        std::fs::read_to_string(common::root().join("tests/fixtures/whatsapp_cli_export.csv"))
            .unwrap()
            .replace("{{DAY1}}", &day(3))
            .replace("{{DAY2}}", &day(4));
    let inbox = dir.join("inbox/openemr");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("export.csv"), text).unwrap();
}

#[tokio::test]
async fn check_online_and_templates_check_against_the_simulator() {
    let s = setup(TOKEN_ENV, "").await;
    let (code, out, err) = cli(&s.config, &["check", "--online"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("whatsapp:   cloud (http://127.0.0.1:"),
        "{out}"
    );
    assert!(out.contains("templates: ok"), "{out}");
    assert!(
        out.contains("warning: whatsapp.webhook.listen is not set"),
        "{out}"
    );
    let (code, out, err) = cli(&s.config, &["templates", "check"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&s.config, &["--json", "templates", "check"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["fetched"].as_u64()),
        (Some(true), Some(12))
    );

    // The configuration names a template the account does not have: exit 5, each language named.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "name = \"appointment_reminder\"",
        "name = \"appointment_reminder_v2\"",
    );
    std::fs::write(&s.config, text).unwrap();
    for args in [&["templates", "check"][..], &["check", "--online"][..]] {
        let (code, out, err) = cli(&s.config, args).await;
        assert_eq!(code, medrelay::exit::TEMPLATES, "{args:?}: {out}{err}");
        assert!(out.contains("templates: 2 problem(s)"), "{out}");
        for lang in ["en_US", "pt_BR"] {
            assert!(
                out.contains(&format!(
                    "templates.appointment_reminder (appointment_reminder_v2 / {lang}): not in the WhatsApp Business Account"
                )),
                "{out}"
            );
        }
    }
}

#[tokio::test]
async fn a_missing_token_or_a_bad_cloud_section_is_a_configuration_problem() {
    let s = setup(UNSET_ENV, "listen = \"127.0.0.1:0\"").await;
    // Offline: the token's variable is named, never a value; exit 2.
    let (code, _, err) = cli(&s.config, &["check"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{err}");
    assert!(
        err.contains(&format!(
            "environment variable {UNSET_ENV} (whatsapp.cloud.token_env)"
        )),
        "{err}"
    );
    let (code, _, err) = cli(&s.config, &["templates", "check"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{err}");
    assert!(err.contains(UNSET_ENV), "{err}");

    // Shape errors are all reported, without the network; a token in the file is refused.
    let text = std::fs::read_to_string(&s.config).unwrap().replace(
        "\ntimeout_secs = 5\n",
        "\ntimeout_secs = 5\nper_second = 0\ngraph_version = \"23\"\n",
    );
    std::fs::write(&s.config, &text).unwrap();
    let (code, _, err) = cli(&s.config, &["check"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{err}");
    assert!(err.contains("whatsapp.cloud.per_second 0"), "{err}");
    assert!(err.contains("graph_version `23`"), "{err}");
    std::fs::write(
        &s.config,
        text.replace("per_second = 0\n", "token = \"EAAGsecret\"\n"),
    )
    .unwrap();
    let (code, _, err) = cli(&s.config, &["check"]).await;
    assert_eq!(code, medrelay::exit::USAGE, "{err}");
    assert!(err.contains("unknown field `token`"), "{err}");
    assert!(!err.contains("EAAGsecret"), "{err}");
}

fn template_bodies(server: &SimServer) -> Vec<serde_json::Value> {
    server.simulator().sent()
}

#[tokio::test]
async fn run_once_sends_through_the_cloud_api_client() {
    let s = setup(TOKEN_ENV, "").await;
    drop_export(&s.dir);
    let (code, out, err) = cli(&s.config, &["run", "--once"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(s.dir.join("inbox/openemr/done/export.csv").exists());

    let sent = template_bodies(&s.server);
    let mut to: Vec<&str> = sent.iter().map(|b| b["to"].as_str().unwrap()).collect();
    to.sort();
    assert_eq!(
        to,
        ["12127365001", "12127365002"],
        "the opt-out got nothing"
    );
    for b in &sent {
        assert_eq!(b["messaging_product"], "whatsapp");
        assert_eq!(b["type"], "template");
        assert_eq!(b["template"]["name"], "appointment_booked");
        assert_eq!(b["template"]["language"]["code"], "en_US");
        assert_eq!(
            b["template"]["components"][0]["parameters"]
                .as_array()
                .unwrap()
                .len(),
            4
        );
        assert!(
            b["biz_opaque_callback_data"]
                .as_str()
                .unwrap()
                .starts_with("job:")
        );
    }
    let (_, status, _) = cli(&s.config, &["--json", "status"]).await;
    let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(v["messages_by_status"]["accepted"], 2, "{v}");
    assert_eq!(s.server.stats().accepted, 2);
    assert!(s.sim_url.starts_with("http://127.0.0.1:"));
}

/// A free port for the webhook endpoint (bound and released: the run binds it again).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `medrelay run` (not `--once`) serves the webhook endpoint; the simulator's signed statuses reach
/// it and the service applies them; a shutdown stops both cleanly.
#[tokio::test]
async fn run_serves_the_webhook_endpoint_and_applies_statuses() {
    let port = free_port();
    let s = setup(TOKEN_ENV, &format!("listen = \"127.0.0.1:{port}\"")).await;
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("poll_interval = \"5s\"", "poll_interval = \"1s\"");
    std::fs::write(&s.config, text).unwrap();
    let pusher_stop = Arc::new(Notify::new());
    let _pusher = s.server.spawn_webhook_pusher(
        format!("http://127.0.0.1:{port}/webhook"),
        pusher_stop.clone(),
    );
    drop_export(&s.dir);
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let mut buf = Vec::new();
    let mut o = medrelay::Output {
        out: &mut buf,
        json: false,
    };
    // `Output` is not `Send`: the service and the checks run side by side in this task.
    let service = run_until(
        &s.config,
        std::sync::Arc::new(medrelay_pipeline::clock::SystemClock),
        RunArgs { once: false },
        &mut o,
        async move {
            let _ = shutdown_rx.await;
        },
    );
    let checks = async {
        // Meta's subscription check against the served endpoint.
        assert_eq!(raw_get_webhook(port).await, "42");
        let deadline = Timestamp::now() + SignedDuration::from_secs(30);
        loop {
            let (_, status, _) = cli(&s.config, &["--json", "status"]).await;
            let v: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
            if v["messages_by_status"]["read"] == 2 {
                break;
            }
            assert!(Timestamp::now() < deadline, "statuses never applied: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        shutdown_tx.send(()).unwrap();
    };
    let (code, ()) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(service, checks)
    })
    .await
    .expect("the service stops on shutdown");
    assert_eq!(code.unwrap(), 0);
    pusher_stop.notify_one();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the endpoint is closed after shutdown"
    );
}

/// `GET /webhook` verification through a raw HTTP/1.1 request (no HTTP client in this crate's deps),
/// retried until the endpoint is up; returns the body.
async fn raw_get_webhook(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let req = "GET /webhook?hub.mode=subscribe&hub.verify_token=cli-verify&hub.challenge=42 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            s.write_all(req.as_bytes()).await.unwrap();
            let mut resp = String::new();
            s.read_to_string(&mut resp).await.unwrap();
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            return resp.rsplit("\r\n\r\n").next().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the webhook endpoint never came up");
}
