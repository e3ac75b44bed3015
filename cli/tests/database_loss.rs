//! Losing the database while `medrelay run` serves (issue 12): PostgreSQL is reached through a
//! TCP relay the test can cut. While it is cut, an SIU over MLLP is answered AR with ERR 207 (not
//! stored: the engine keeps it and resends), never AA; the process stays up; when the relay comes
//! back the same message is accepted and the service carries on by itself (the booking
//! confirmation goes out), with no restart.
//!
//! Needs `MEDRELAY_TEST_POSTGRES` (skipped, saying so, without it); `.ci/run` sets it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use medrelay_connector_hl7v2::mllp::exchange;
use medrelay_pipeline::store::{StoreLocation, testing};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const BIN: &str = env!("CARGO_BIN_EXE_medrelay");
const DB_ENV: &str = "MEDRELAY_LOSS_DATABASE_URL";

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

/// A relay to PostgreSQL on `port` that can be cut (every connection dropped, new ones refused)
/// and restored.
struct Relay {
    port: u16,
    tasks: Option<JoinSet<()>>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let mut r = Relay { port, tasks: None };
        r.restore().await;
        r
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut pipes = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut server).await;
                    }
                });
            }
        });
        self.tasks = Some(tasks);
    }

    /// Drops the listener and every relayed connection (aborting the accept task drops its
    /// `JoinSet` of pipes, which aborts them).
    async fn cut(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
            while t.join_next().await.is_some() {}
        }
    }
}

fn siu(i: usize) -> String {
    format!(
        "MSH|^~\\&|AGENDA|CLINICA-SP|MEDRELAY|CLINICA-SP|20261201120000-0300||SIU^S12^SIU_S12|LOSS-{i}|P|2.5.1||||||UNICODE UTF-8\r\
         SCH|PL-L{i}|LOSS-AG-{i}||||ROTINA|Consulta^Consulta|NORMAL|30|MIN|^^^202612{day:02}1000-0300^202612{day:02}1030-0300||||||||||||||Booked\r\
         PID|1||P-L{i}^^^CLINICA^MR||Exemplo^Jo\u{e3}o^^^^^L||19800101|M|||||^PRN^CP^^55^11^98888{i:04}||por\r\
         RGS|1\r\
         AIS|1||CONS^Consulta^L\r\
         AIL|1||PAU1^^^Cl\u{ed}nica S\u{e3}o Paulo\r",
        day = 20 + i % 8,
    )
}

/// MSA-1 and whether ERR carries 207.
fn ack(reply: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(reply);
    let code = text
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
        .to_owned();
    (
        code,
        text.split('\r')
            .any(|s| s.starts_with("ERR|") && s.contains("207")),
    )
}

async fn send(addr: SocketAddr, message: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(60),
        exchange(&mut s, message.as_bytes()),
    )
    .await
    .expect("an answer within a minute")
    .unwrap();
    ack(&reply)
}

fn tail(log: &Path) -> String {
    let t = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn status_json(config: &Path, url: &str) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(["--json", "status"])
        .env(DB_ENV, url)
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

#[ignore = "PostgreSQL: set MEDRELAY_TEST_POSTGRES and run with --include-ignored (.ci/run does)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_gone_mllp_answers_ar_207_and_the_service_recovers_by_itself() {
    assert!(
        testing::postgres_requested(),
        "this test needs {} (a PostgreSQL server)",
        testing::TEST_POSTGRES_ENV
    );
    let StoreLocation::Postgres(direct) = testing::location(Path::new("unused.db")).await.unwrap()
    else {
        unreachable!()
    };
    let relay_port = free_port();
    let mut relay = Relay::start(relay_port).await;
    let url = direct.replacen("127.0.0.1:5432", &format!("127.0.0.1:{relay_port}"), 1);
    assert_ne!(url, direct, "the test server URL names 127.0.0.1:5432");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mllp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = std::fs::read_to_string(repo().join("samples/medrelay.toml")).unwrap();
    let text = edit(
        text,
        "path = \"medrelay.db\"",
        &format!("url_env = \"{DB_ENV}\""),
    );
    let text = edit(text, "poll_interval = \"5s\"", "poll_interval = \"1s\"");
    let text = edit(text, "opt_in_required = true", "opt_in_required = false");
    let text = edit(
        text,
        "reply_mix = { confirm = 60, cancel = 15, reschedule = 0 }",
        "reply_mix = { confirm = 0, cancel = 0, reschedule = 0 }",
    );
    let text = text.replace("quiet_hours = \"21:00-08:00\"\n", "");
    let text = edit(
        text,
        "# listen = \"0.0.0.0:2575\"",
        &format!("listen = \"{mllp}\""),
    );
    let config = dir.join("medrelay.toml");
    std::fs::write(&config, text).unwrap();
    std::fs::copy(
        repo().join("samples/profiles.toml"),
        dir.join("profiles.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("medrelay.key"), "k".repeat(48)).unwrap();

    let log = dir.join("run.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child: Child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env(DB_ENV, &url)
        .env("MEDRELAY_LOG", "info")
        .env_remove("MEDRELAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while TcpStream::connect(mllp).await.is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run exited:\n{}",
            tail(&log)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "not listening:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(mllp, &siu(0)).await.0, "AA");

    // The database goes away.
    relay.cut().await;
    let (code, resend) = send(mllp, &siu(1)).await;
    assert_eq!((code.as_str(), resend), ("AR", true), "{}", tail(&log));
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited:\n{}",
        tail(&log)
    );

    // It comes back: the message sent again is accepted, and the service goes on by itself.
    relay.restore().await;
    let t0 = Instant::now();
    loop {
        let (code, _) = send(mllp, &siu(1)).await;
        if code == "AA" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still {code}:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let t0 = Instant::now();
    loop {
        let sent = status_json(&config, &direct)
            .and_then(|v| {
                v["messages_by_status"]
                    .as_object()
                    .map(|m| m.values().filter_map(|n| n.as_i64()).sum::<i64>())
            })
            .unwrap_or(0);
        if sent >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the service did not resume sending ({sent} messages):\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "run exited:\n{}",
        tail(&log)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{}", tail(&log));
}
