//! Several instances on one PostgreSQL database (issue 12): three `medrelay run` processes share
//! a 10,000-appointment backlog, sending through the Cloud API simulator server (the component
//! `medrelay simulate` serves, here in the test's process so that every request it accepted can
//! be counted). The instance holding the outbound lease is killed with SIGKILL mid-run. At the
//! end every booking confirmation was accepted exactly once (the crash-window rule is the only
//! allowance, and it is reported), no second carried more than the configured rate, another
//! instance took over, and the audit trail verifies.
//!
//! Needs `MEDRELAY_TEST_POSTGRES` (a server; each run uses a new schema); skipped, saying so,
//! without it. `.ci/run` sets it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medrelay_pipeline::clock::{Clock, SystemClock};
use medrelay_pipeline::http::simulator::{SimServer, SimServerConfig};
use medrelay_pipeline::http::webhook::serve;
use medrelay_pipeline::store::{StoreLocation, testing};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_medrelay");
const APPOINTMENTS: usize = 10_000;
const RATE: u32 = 200;
const APP_SECRET_ENV: &str = "MEDRELAY_MI_APP_SECRET";
const APP_SECRET: &str = "multi-instance-app-secret";
const DB_ENV: &str = "MEDRELAY_MI_DATABASE_URL";
const TOKEN_ENV: &str = "MEDRELAY_MI_TOKEN";
const TOKEN: &str = "multi-instance-token";
const VERIFY_ENV: &str = "MEDRELAY_MI_VERIFY";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn edit(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "samples/medrelay.toml no longer has {from:?}"
    );
    text.replacen(from, to, 1)
}

/// One instance's configuration in the shared folder (same inbox, key and database; its own
/// webhook port).
fn write_config(dir: &Path, name: &str, sim_url: &str, webhook_port: u16) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("samples/medrelay.toml")).unwrap();
    let text = edit(
        text,
        "path = \"medrelay.db\"",
        &format!("url_env = \"{DB_ENV}\""),
    );
    let text = edit(text, "poll_interval = \"5s\"", "poll_interval = \"1s\"");
    let text = edit(text, "sending_grace = \"10m\"", "sending_grace = \"5s\"");
    let text = edit(text, "mode = \"simulator\"", "mode = \"cloud\"");
    let text = edit(text, "blocklist = [\"+1 212 736 5012\"]", "blocklist = []");
    let text = edit(
        text,
        "reply_mix = { confirm = 60, cancel = 15, reschedule = 0 }",
        "reply_mix = { confirm = 0, cancel = 0, reschedule = 0 }",
    );
    let text = text.replace("quiet_hours = \"21:00-08:00\"\n", "");
    let text = edit(
        text,
        "[whatsapp.simulator]\n",
        &format!(
            "[whatsapp.cloud]\nbase_url = \"{sim_url}\"\ntoken_env = \"{TOKEN_ENV}\"\nper_second = {RATE}\npair_interval_secs = 0\n\
             timeout_secs = 5\nconnect_timeout_secs = 2\n\n\
             [whatsapp.webhook]\napp_secret_env = \"{APP_SECRET_ENV}\"\nverify_token_env = \"{VERIFY_ENV}\"\nlisten = \"127.0.0.1:{webhook_port}\"\n\n\
             [whatsapp.simulator]\n"
        ),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The backlog: an OpenEMR export of `APPOINTMENTS` booked visits three days out, each with its
/// own (fictitious, 212-736-xxxx) number, all opted in: each is due a booking confirmation now.
fn write_export(dir: &Path) {
    let day = jiff::Timestamp::now()
        .in_tz("America/New_York")
        .unwrap()
        .date()
        .checked_add(jiff::ToSpan::days(3))
        .unwrap()
        .strftime("%m/%d/%Y")
        .to_string();
    let mut csv = String::from(
        "pat_id,first_name,last_name,middle_name,birth_date,startdate,enddate,location,comment,Apt Type,Resource Last Name,Resource First Name,NPI,Phone,WC Apt ID,Status,Opt In\n",
    );
    for i in 0..APPOINTMENTS {
        let minute = i % 480;
        let (h, m) = (8 + minute / 60, minute % 60);
        let (ampm, h12) = if h >= 12 {
            ("PM", if h > 12 { h - 12 } else { 12 })
        } else {
            ("AM", h)
        };
        csv.push_str(&format!(
            "{pid},Pat{i},Example,,01/01/1980,{day} {h12:02}:{m:02} {ampm},{day} {h12:02}:{m:02} {ampm},Midtown Demo Clinic,FAKE DATA,Office Visit,Placeholder,Jane,1234567893,(212) 736-{i:04},{apt},-,Y\n",
            pid = 500_000 + i,
            apt = 900_000 + i,
        ));
    }
    let inbox = dir.join("inbox/openemr");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("backlog.csv"), csv).unwrap();
}

fn start(config: &Path, log: &Path, url: &str) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .arg("run")
        .env(DB_ENV, url)
        .env(APP_SECRET_ENV, APP_SECRET)
        .env(TOKEN_ENV, TOKEN)
        .env(VERIFY_ENV, "verify")
        .env("MEDRELAY_LOG", "info")
        .env_remove("MEDRELAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn log_has(log: &Path, what: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(what))
}

fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Job id of every accepted send, in order (the callback data medrelay attaches).
fn accepted_jobs(server: &SimServer) -> Vec<String> {
    server
        .simulator()
        .sent()
        .iter()
        .filter_map(|m| m["biz_opaque_callback_data"].as_str().map(str::to_owned))
        .collect()
}

#[ignore = "PostgreSQL: set MEDRELAY_TEST_POSTGRES and run with --include-ignored (.ci/run does)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_send_a_backlog_once_within_the_rate_through_a_kill_9() {
    assert!(
        testing::postgres_requested(),
        "this test needs {} (a PostgreSQL server)",
        testing::TEST_POSTGRES_ENV
    );
    let StoreLocation::Postgres(url) = testing::location(Path::new("unused.db")).await.unwrap()
    else {
        unreachable!()
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(
        repo().join("samples/profiles.toml"),
        dir.join("profiles.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("medrelay.key"), "k".repeat(48)).unwrap();

    // The simulator, built from the sample's templates, limited to the configured rate, with an
    // unlimited messaging tier (a portfolio that has grown out of TIER_250).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let ports = [free_port(), free_port(), free_port()];
    let configs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .zip(ports)
        .map(|(n, p)| write_config(dir, n, &sim_url, p))
        .collect();
    let loaded = medrelay::config::load(&configs[0]).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = medrelay::wiring::simulator_server(
        &loaded,
        SimServerConfig {
            per_second: RATE,
            pair_interval_secs: 0,
            messaging_limit_tier: "TIER_UNLIMITED".into(),
            token: Some(medrelay_pipeline::whatsapp::cloud::ApiToken::new(TOKEN)),
            ..SimServerConfig::default()
        },
        APP_SECRET.as_bytes(),
        clock,
    );
    let stop = Arc::new(Notify::new());
    let router = server.router();
    let s = stop.clone();
    tokio::spawn(async move {
        serve(listener, router, async move { s.notified().await })
            .await
            .unwrap();
    });
    // Status webhooks go to instance A (which is not the one killed).
    let _pusher = server.spawn_webhook_pusher(
        format!("http://127.0.0.1:{}/webhook", ports[0]),
        stop.clone(),
    );
    write_export(dir);

    let logs: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.join(format!("{n}.log")))
        .collect();
    // B starts first and takes the outbound lease; then A and C.
    let mut b = start(&configs[1], &logs[1], &url);
    let t0 = Instant::now();
    while !log_has(&logs[1], "took the outbound lease") {
        assert!(
            b.try_wait().unwrap().is_none(),
            "B exited:\n{}",
            tail(&logs[1])
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "B never took the lease:\n{}",
            tail(&logs[1])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut a = start(&configs[0], &logs[0], &url);
    let mut c = start(&configs[2], &logs[2], &url);

    // Mid-run: the lease holder dies without a word.
    let t0 = Instant::now();
    while accepted_jobs(&server).len() < APPOINTMENTS * 3 / 10 {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "sending never got going ({} accepted):\n{}",
            accepted_jobs(&server).len(),
            tail(&logs[1])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.kill().unwrap();
    b.wait().unwrap();
    let at_kill = accepted_jobs(&server).len();
    let killed_at = Instant::now();

    // Another instance takes the lease and sends the rest.
    let mut takeover = None;
    let t0 = Instant::now();
    loop {
        let n = accepted_jobs(&server).len();
        if takeover.is_none() && n > at_kill {
            takeover = Some(killed_at.elapsed());
        }
        let unique: std::collections::BTreeSet<String> =
            accepted_jobs(&server).into_iter().collect();
        if unique.len() >= APPOINTMENTS {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(400),
            "only {} of {APPOINTMENTS} sent after the kill:\nA:\n{}\nC:\n{}",
            unique.len(),
            tail(&logs[0]),
            tail(&logs[2])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the sending grace: a released job, had there been one, would be sent again by now.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let jobs = accepted_jobs(&server);
    let mut per_job: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &jobs {
        *per_job.entry(j.as_str()).or_default() += 1;
    }
    let duplicates: Vec<(&str, usize)> = per_job
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(j, n)| (*j, *n))
        .collect();
    let stats = server.stats();
    eprintln!(
        "multi-instance: {} accepted, {} unique, {} duplicated, {} at the kill, takeover after {:?}, \
         max {} per second (limit {RATE}), {} throughput rejections",
        jobs.len(),
        per_job.len(),
        duplicates.len(),
        at_kill,
        takeover,
        stats.max_per_second,
        stats.throughput_rejections
    );
    assert_eq!(per_job.len(), APPOINTMENTS, "every appointment confirmed");
    // The crash-window rule allows a resend only for a job the dead instance had in flight (at
    // most one claimed batch) whose status never reached a live instance.
    assert!(duplicates.len() <= 50, "{duplicates:?}");
    assert!(
        stats.max_per_second <= u64::from(RATE),
        "{} requests in one second",
        stats.max_per_second
    );
    assert_eq!(stats.throughput_rejections, 0);
    assert!(
        takeover.is_some_and(|t| t < Duration::from_secs(30)),
        "{takeover:?}"
    );

    for child in [&mut a, &mut c] {
        // SIGTERM: a clean stop.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }
    for child in [&mut a, &mut c] {
        let status = child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    stop.notify_waiters();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&configs[0])
        .args(["audit", "verify"])
        .env(DB_ENV, &url)
        .env(APP_SECRET_ENV, APP_SECRET)
        .env(TOKEN_ENV, TOKEN)
        .env(VERIFY_ENV, "verify")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
