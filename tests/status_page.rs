//! The status page (issue 16): after a seeded run (the sample CSV export, the simulator, a tap,
//! a number that is not on WhatsApp) it shows the numbers the store holds, needs its password
//! (and locks out the address that sends repeated wrong ones), sends its security headers, and carries no patient
//! data. Then Debian's chromium loads it and shows the same numbers; its screenshot is kept as a
//! CI artefact (`ci-artifacts/status-page.png`, or `$MEDRELAY_ARTIFACTS`).
//!
//! Without chromium on the machine the browser part says SKIPPED; with `MEDRELAY_REQUIRE_BROWSER`
//! set (`.ci/run` sets it, after installing chromium) a missing browser fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::store::report::ReportGroup;
use medrelay_pipeline::whatsapp::simulator::PatientAction;

const PASSWORD_ENV: &str = "MEDRELAY_TEST_STATUS_PASSWORD";
const PASSWORD: &str = "status-page-test-pw-42";

/// `data-<attr>="<key>">VALUE<` in the page: the value shown for a key.
fn shown(page: &str, attr: &str, key: &str) -> String {
    let marker = format!("data-{attr}=\"{key}\">");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the page:\n{page}"))
        + marker.len();
    page[at..].split('<').next().unwrap().to_owned()
}

fn chromium() -> Option<PathBuf> {
    std::env::var_os("MEDRELAY_CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/usr/bin/chromium")))
        .filter(|p| p.exists())
}

/// Runs headless chromium (the flags this machine needs: no sandbox as root, no background
/// networking on a closed network) with `args` and the URL; returns stdout.
async fn headless(browser: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished within 120 s")
    .expect("chromium started");
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status page of `loaded` over the seeded store, as `run` starts it: its address, its stop
/// switch and its task.
async fn serve_page(
    loaded: &medrelay::config::Loaded,
    store: &medrelay_pipeline::store::Store,
    service: &medrelay_pipeline::service::Service,
    clock: &Arc<ManualClock>,
) -> (
    std::net::SocketAddr,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let health = medrelay_pipeline::http::health::HealthState {
        store: store.clone(),
        halt: Some(service.sender.halt_probe()),
        listeners: Arc::default(),
        metrics_token: None,
        clock: clock.clone(),
        instruments: Some(service.instruments.clone()),
    };
    let (halt_tx, halt_rx) = tokio::sync::watch::channel(false);
    let (addr, task) = medrelay::commands::run::start_status_page(loaded, health, halt_rx)
        .await
        .unwrap()
        .expect("the status page is configured");
    (addr, halt_tx, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_seeded_run_behind_its_password_without_phi() {
    static ENV: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before anything reads it; only this test reads this name.
    ENV.call_once(|| unsafe { std::env::set_var(PASSWORD_ENV, PASSWORD) });
    let dir = tempfile::tempdir().unwrap();
    // One sample patient's number is not on WhatsApp: a Cloud API error (131026) for the page.
    common::demo_config(dir.path(), &["+1 212 736 5012"]);
    let path = dir.path().join("medrelay.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[status_page]\nlisten = \"127.0.0.1:0\"\npassword_env = \"{PASSWORD_ENV}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
    let loaded = medrelay::config::load(&path).unwrap();
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    let sim = service.simulator.clone().unwrap();
    sim.script("+12127365001", [PatientAction::Tap("confirm".into())]);
    sim.script("+12127365002", [PatientAction::Tap("cancel".into())]);
    // Confirmations now, the 48 h reminders (with buttons) over the next days.
    for at in [
        "2026-11-29T13:30:00Z",
        "2026-11-29T14:05:00Z",
        "2026-11-30T15:20:00Z",
        "2026-12-01T14:05:00Z",
    ] {
        clock.set(at.parse().unwrap());
        while !service.tick(50).await.unwrap().is_idle() {}
    }
    // The page is read after the visits: the KPI period (last 30 days) holds them.
    clock.set("2026-12-20T12:00:00Z".parse().unwrap());

    let (addr, halt_tx, task) = serve_page(&loaded, &store, &service, &clock).await;
    let url = format!("http://{addr}/");
    let http = reqwest::Client::new();

    // No credentials, then wrong ones: 401 with the Basic challenge; nothing of the page.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    let r = http
        .get(&url)
        .basic_auth("it", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains("KPI"));

    // The right ones: the page, with its security headers.
    let r = http
        .get(&url)
        .basic_auth("it", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["cache-control"], "no-store");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert_eq!(h["x-frame-options"], "DENY");
    let page = r.text().await.unwrap();

    // The numbers are the store's: the KPI report of the last 30 days and the queues.
    let now = clock.now();
    let kpi = store
        .kpi_report(
            now - jiff::SignedDuration::from_hours(24 * 30),
            now,
            ReportGroup::All,
            None,
        )
        .await
        .unwrap()
        .remove(0);
    assert!(kpi.appointments >= 10 && kpi.messages_sent >= 5, "{kpi:?}");
    assert_eq!(kpi.confirmed, 1);
    assert_eq!(kpi.cancelled_via_whatsapp, 1);
    assert_eq!(
        shown(&page, "kpi", "appointments"),
        kpi.appointments.to_string()
    );
    assert_eq!(shown(&page, "kpi", "messaged"), kpi.messaged.to_string());
    assert_eq!(
        shown(&page, "kpi", "messages"),
        format!(
            "{} / {} / {} / {}",
            kpi.messages_sent, kpi.messages_delivered, kpi.messages_read, kpi.messages_failed
        )
    );
    assert_eq!(
        shown(&page, "kpi", "confirmed"),
        format!("1 ({:.1} %)", kpi.confirmation_rate.unwrap() * 100.0)
    );
    assert_eq!(shown(&page, "kpi", "cancelled"), "1");
    let s = store.status_summary(now).await.unwrap();
    for (state, n) in &s.jobs_by_state {
        assert_eq!(shown(&page, "jobs", state), n.to_string(), "jobs {state}");
    }
    // The blocklisted number's message failed with 131026, listed with its meaning.
    assert_eq!(shown(&page, "error", "131026"), "1");
    assert!(page.contains("message undeliverable to this number"));
    // Feeds: both sample connectors, the CSV one with its last input.
    assert!(page.contains("data-feed=\"openemr\""), "{page}");
    assert!(page.contains("data-feed=\"clinica-hl7\""), "{page}");
    assert_eq!(shown(&page, "ready", "true"), "ready");
    // Charts are inline SVG.
    assert!(page.contains("<svg") && page.contains("Messages by status"));
    // No patient data: names, phone digits, record numbers, the visit comments.
    for canary in [
        "Alice",
        "Example",
        "Bob",
        "Sample",
        "736-5001",
        "7365001",
        "12127365",
        "1001",
        "FAKE DATA",
        "annual physical",
    ] {
        assert!(!page.contains(canary), "{canary} on the status page");
    }

    // A password guesser (another loopback address) is locked out for a minute after ten wrong
    // tries, the right password included; staff at their own address are not.
    let guesser = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    for _ in 0..10 {
        guesser
            .get(&url)
            .basic_auth("it", Some("guess"))
            .send()
            .await
            .unwrap();
    }
    let r = guesser
        .get(&url)
        .basic_auth("it", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = http
        .get(&url)
        .basic_auth("it", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the lock-out is the guesser's alone");

    // The browser part, on a fresh listener (the lock-out holds for this one).
    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("MEDRELAY_REQUIRE_BROWSER").is_none(),
            "MEDRELAY_REQUIRE_BROWSER is set but no chromium was found"
        );
        eprintln!(
            "SKIPPED: the status page in a browser (no /usr/bin/chromium; apt-get install chromium)"
        );
        store.close().await;
        return;
    };
    let (addr, halt_tx, task) = serve_page(&loaded, &store, &service, &clock).await;
    let url = format!("http://it:{PASSWORD}@{addr}/");
    let profile = tempfile::tempdir().unwrap();
    let dom = headless(&browser, profile.path(), &["--dump-dom".into()], &url).await;
    assert_eq!(
        shown(&dom, "kpi", "appointments"),
        kpi.appointments.to_string(),
        "{dom}"
    );
    assert_eq!(shown(&dom, "kpi", "cancelled"), "1");
    assert_eq!(shown(&dom, "error", "131026"), "1");
    let artifacts = std::env::var_os("MEDRELAY_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("ci-artifacts"));
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    headless(
        &browser,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2600".into(),
        ],
        &url,
    )
    .await;
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
    halt_tx.send_replace(true);
    task.await.unwrap().unwrap();
    store.close().await;
}
