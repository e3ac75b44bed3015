//! Crash tests of the real binary: `kill -9` of `medrelay run` while an interface engine streams
//! SIU^S12 messages over four MLLP connections, and of `medrelay ingest csv` in the middle of a file
//! (and, sharing the same tools, `run` reloading its configuration on a real SIGHUP).
//!
//! The peer follows the MLLP contract: a message is done when it got AA; one without an answer when
//! the connection died is sent again after the restart. After every kill, with the process down:
//! every message that got AA is in the store, no appointment has two applied events (a message sent
//! again is a repeat, not news), and `medrelay audit verify` exits 0. The kill moments come from a
//! seeded generator (the seed is printed; `MEDRELAY_CRASH_SEED=<seed>` replays the same schedule):
//! random moments, right after an ACK was read, after a message was committed but before its ACK
//! was read (the peer watches the database), and while a write-back SRM to the EHR is unanswered.
//!
//! Only public behaviour is used (the command line, MLLP, the SQLite file read with plain SQL), and
//! no assertion depends on timing: waits are bounded only to end a hung run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medrelay_connector_hl7v2::mllp::exchange;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const BIN: &str = env!("CARGO_BIN_EXE_medrelay");
/// The HL7 feed's system (its own: it writes back to the EHR over MLLP).
const SYSTEM: &str = "clinica-hl7";
/// Generous bound for anything the test waits for (start-up, a commit, a write-back): a guard
/// against a hang, not a speed claim. 120 s was once not enough on two cores shared with the CSV
/// crash test (the backlog of confirmations and replies took 136 s; the same seed alone, 37 s).
const PATIENCE: Duration = Duration::from_secs(360);

// ---------------------------------------------------------------------------------------------
// Small tools

/// SplitMix64: a seeded generator, so that a failing schedule can be replayed.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        let seed = std::env::var("MEDRELAY_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("crash test seed {seed} (MEDRELAY_CRASH_SEED={seed} replays this schedule)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The simulated clock every process of a test runs on (`--now`), moving forward across restarts
/// as real time does, so a restart never goes back in time.
struct SimClock {
    origin: jiff::Timestamp,
    started: Instant,
}

impl SimClock {
    fn new(origin: &str) -> Self {
        SimClock {
            origin: origin.parse().unwrap(),
            started: Instant::now(),
        }
    }

    fn now(&self) -> jiff::Timestamp {
        let elapsed = jiff::SignedDuration::try_from(self.started.elapsed()).unwrap();
        self.origin + elapsed
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// `text` with `from` replaced; fails if the sample no longer has it (the test would silently
/// test something else).
fn edit(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "samples/medrelay.toml no longer contains {from:?}"
    );
    text.replacen(from, to, 1)
}

/// The sample configuration, secret and profiles in `dir`, edited by `change`.
fn write_site(dir: &Path, change: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("samples/medrelay.toml")).unwrap();
    let config = dir.join("medrelay.toml");
    std::fs::write(&config, change(text)).unwrap();
    std::fs::copy(
        repo().join("samples/profiles.toml"),
        dir.join("profiles.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("medrelay.key"), "k".repeat(48)).unwrap();
    config
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `medrelay` command on `config` at the simulated moment, its output appended to `log`.
fn medrelay(config: &Path, now: jiff::Timestamp, log: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(config)
        .arg("--now")
        .arg(now.to_string())
        .args(args)
        .env("MEDRELAY_LOG", "info")
        .env_remove("MEDRELAY_CONFIG")
        .stdin(Stdio::null());
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    c.stdout(out.try_clone().unwrap()).stderr(out);
    c
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `kill -9` (std's `Child::kill` sends SIGKILL on Unix), then reap it.
fn kill_9(child: &mut Child) {
    let _ = child.kill();
    child.wait().unwrap();
}

/// `medrelay audit verify` must exit 0.
fn audit_verify(config: &Path, clock: &SimClock, log: &Path, when: &str) {
    let status = medrelay(config, clock.now(), log, &["audit", "verify"])
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "audit verify failed {when}:\n{}",
        log_tail(log)
    );
}

async fn open_db(path: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(PATIENCE);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// Applied events per filler id of `source`.
async fn events_by_filler(db: &SqlitePool, source: &str) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT filler_id, COUNT(*) FROM events WHERE source = ? GROUP BY filler_id",
    )
    .bind(source)
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn appointments(db: &SqlitePool, source: &str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, String>("SELECT filler_id FROM appointments WHERE source = ?")
        .bind(source)
        .fetch_all(db)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

async fn count(db: &SqlitePool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The MLLP peer

/// The filler id (SCH-2) of message `i`.
fn filler(i: usize) -> String {
    format!("CRASH-AG-{i}")
}

/// The i-th SIU^S12: a distinct appointment in 10-28 Dec 2026 (reminders not yet due at the test's
/// clock, so only the booking confirmation is sent), v2.5.1 with PD1, as the sample clinic sends.
fn siu(i: usize) -> String {
    let day = 10 + i % 19;
    let hour = 8 + i % 9;
    format!(
        "MSH|^~\\&|AGENDA|CLINICA-SP|MEDRELAY|CLINICA-SP|20261201120000-0300||SIU^S12^SIU_S12|CRASH-{i}|P|2.5.1||||||UNICODE UTF-8\r\
         SCH|PL-{i}|{filler}||||ROTINA|Consulta^Consulta|NORMAL|30|MIN|^^^202612{day:02}{hour:02}00-0300^202612{day:02}{hour:02}30-0300||||||||||||||Booked\r\
         PID|1||P-{pid}^^^CLINICA^MR||Exemplo^Jo\u{e3}o^^^^^L||19800101|M|||||^PRN^CP^^55^11^9{phone:08}||por\r\
         PD1|||||||||||F^Family only^HL70215|N\r\
         RGS|1\r\
         AIS|1||CONS^Consulta^L\r\
         AIL|1||PAU1^^^Cl\u{ed}nica S\u{e3}o Paulo\r\
         AIP|1||7001^Fict\u{ed}cia^Ana^^^Dra.\r",
        filler = filler(i),
        pid = 100_000 + i % 50_000,
        phone = 10_000_000 + i % 50_000,
    )
}

/// A booking whose 48 h reminder (with the Confirm button) is due at once: its simulated patient
/// taps Confirm, and the reply is written back to the EHR as an SRM.
fn siu_due_now(k: usize, now: jiff::Timestamp) -> String {
    let start = now + jiff::SignedDuration::from_mins(48 * 60 - 3);
    let end = start + jiff::SignedDuration::from_mins(30);
    let hl7 = |t: jiff::Timestamp| t.strftime("%Y%m%d%H%M%S+0000").to_string();
    format!(
        "MSH|^~\\&|AGENDA|CLINICA-SP|MEDRELAY|CLINICA-SP|20261206120000-0300||SIU^S12^SIU_S12|CRASH-WB-{k}|P|2.5.1||||||UNICODE UTF-8\r\
         SCH|PL-WB-{k}|CRASH-WB-{k}||||ROTINA|Consulta^Consulta|NORMAL|30|MIN|^^^{start}^{end}||||||||||||||Booked\r\
         PID|1||P-WB-{k}^^^CLINICA^MR||Exemplo^Maria^^^^^L||19800101|F|||||^PRN^CP^^55^11^98765{k:04}||por\r\
         RGS|1\r\
         AIS|1||CONS^Consulta^L\r\
         AIL|1||PAU1^^^Cl\u{ed}nica S\u{e3}o Paulo\r",
        start = hl7(start),
        end = hl7(end),
    )
}

/// The MSA-1 code and, for an AR, whether ERR says 207 (not stored: resend as is).
fn ack_code(ack: &[u8]) -> (String, bool) {
    let text = String::from_utf8_lossy(ack);
    let code = text
        .split('\r')
        .find(|s| s.starts_with("MSA|"))
        .and_then(|s| s.split('|').nth(1))
        .unwrap_or("")
        .to_owned();
    let resend = text
        .split('\r')
        .any(|s| s.starts_with("ERR|") && s.contains("207"));
    (code, resend)
}

/// What the peer knows about its messages.
#[derive(Default)]
struct Ledger {
    /// The next message never sent.
    next: usize,
    /// Sent, but the connection died before the answer: to send again.
    unanswered: Vec<usize>,
    /// Answered AA.
    acked: BTreeSet<usize>,
    /// Messages sent again after they had got AA (each answered AA again).
    repeats: u64,
    /// AR 207 answers (not stored; sent again).
    not_stored: u64,
}

/// One connection of the interface engine: a repeat of an earlier AA'd message first (as engines
/// do after reconnecting), then the unanswered ones, then new ones, until the connection dies.
async fn stream(
    addr: SocketAddr,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AtomicU64>,
    repeat: Option<usize>,
) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    let mut first = repeat;
    loop {
        let (i, is_repeat) = match first.take() {
            Some(i) => (i, true),
            None => {
                let mut l = ledger.lock().unwrap();
                match l.unanswered.pop() {
                    Some(i) => (i, false),
                    None => {
                        l.next += 1;
                        (l.next - 1, false)
                    }
                }
            }
        };
        match exchange(&mut s, siu(i).as_bytes()).await {
            Ok(ack) => {
                let (code, resend) = ack_code(&ack);
                let mut l = ledger.lock().unwrap();
                match code.as_str() {
                    "AA" => {
                        l.repeats += is_repeat as u64;
                        l.acked.insert(i);
                        acks.fetch_add(1, Ordering::SeqCst);
                    }
                    "AR" if resend => {
                        l.not_stored += 1;
                        if !is_repeat {
                            l.unanswered.push(i);
                        }
                    }
                    _ => panic!(
                        "message {i} answered {code}: {}",
                        String::from_utf8_lossy(&ack).replace('\r', "\n")
                    ),
                }
            }
            Err(_) => {
                if !is_repeat {
                    ledger.lock().unwrap().unanswered.push(i);
                }
                return;
            }
        }
    }
}

/// The EHR's inbound interface for write-back: answers AA to each SRM, or, while `hold` is set,
/// keeps the SRM unanswered (the connection open) and says so through `held`.
#[derive(Default)]
struct Ehr {
    hold: bool,
    /// MSH-10 of every SRM received, and whether it was answered AA.
    received: Vec<(String, bool)>,
}

async fn ehr_inbound(listener: TcpListener, ehr: Arc<Mutex<Ehr>>, held: Arc<Notify>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let (ehr, held) = (ehr.clone(), held.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // One frame: <VT> message <FS><CR>.
                let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) else {
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                    continue;
                };
                let start = buf.iter().position(|&b| b == 0x0b).map_or(0, |p| p + 1);
                let m = String::from_utf8_lossy(&buf[start.min(end)..end]).into_owned();
                buf.drain(..end + 2);
                let control = m.split('|').nth(9).unwrap_or("").to_owned();
                let hold = {
                    let mut e = ehr.lock().unwrap();
                    let answered = !e.hold;
                    e.received.push((control.clone(), answered));
                    e.hold
                };
                if hold {
                    held.notify_one();
                    // Unanswered: hold the connection until the sender is gone.
                    while s.read(&mut chunk).await.is_ok_and(|n| n > 0) {}
                    return;
                }
                let ack = format!(
                    "\x0bMSH|^~\\&|AGENDA||MEDRELAY||20261206||ACK^S03^ACK|A{control}|P|2.5.1\rMSA|AA|{control}\r\x1c\r"
                );
                if s.write_all(ack.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Where a round kills the service.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// After a random delay from the moment it accepts connections.
    Random(Duration),
    /// Right after the peer read the n-th AA of the round (committed, before the next ACK).
    AfterAck(u64),
    /// A message committed (seen in the database) whose ACK the peer has not read.
    CommittedBeforeAck,
    /// An SRM to the EHR received and not answered (write-back in flight).
    WriteBackInFlight,
}

fn schedule(rng: &mut Rng) -> Vec<KillAt> {
    let mut rounds: Vec<KillAt> = (0..20)
        .map(|_| KillAt::Random(Duration::from_millis(rng.below(700))))
        .collect();
    for _ in 0..3 {
        rounds.push(KillAt::AfterAck(1 + rng.below(150)));
    }
    rounds.push(KillAt::CommittedBeforeAck);
    rounds.push(KillAt::CommittedBeforeAck);
    rounds.push(KillAt::WriteBackInFlight);
    // Fisher-Yates.
    for i in (1..rounds.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        rounds.swap(i, j);
    }
    rounds
}

/// Waits until `child` accepts MLLP connections on `addr`.
async fn wait_listening(child: &mut Child, addr: SocketAddr, log: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "medrelay run exited ({status}) before listening:\n{}",
                log_tail(log)
            );
        }
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "medrelay run is not listening after {PATIENCE:?}:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 10 ms until it holds (bounded by [`PATIENCE`]).
async fn wait_for<F, Fut>(what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {what}:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With the service down: every AA'd message is stored, no appointment has two applied events,
/// and the audit trail verifies.
async fn check_store(
    db_path: &Path,
    acked: &BTreeSet<usize>,
    wb_acked: usize,
    config: &Path,
    clock: &SimClock,
    log: &Path,
    when: &str,
) -> usize {
    let db = open_db(db_path).await;
    let stored = appointments(&db, SYSTEM).await;
    let missing: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|i| !stored.contains(&filler(*i)))
        .collect();
    assert!(
        missing.is_empty(),
        "{when}: {} message(s) answered AA are not in the store, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let wb_stored = (0..wb_acked)
        .filter(|k| stored.contains(&format!("CRASH-WB-{k}")))
        .count();
    assert_eq!(wb_stored, wb_acked, "{when}: a write-back booking is lost");
    let twice: Vec<(String, i64)> = events_by_filler(&db, SYSTEM)
        .await
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{when}: message(s) applied twice (a repeat taken as new): {:?}",
        &twice[..twice.len().min(5)]
    );
    db.close().await;
    audit_verify(config, clock, log, when);
    stored.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mllp_stream_survives_kill_9_at_random_moments_and_named_points() {
    let started = Instant::now();
    let mut rng = Rng::from_env();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("medrelay.log");
    let db_path = dir.path().join("medrelay.db");
    // 12:00 in São Paulo: outside quiet hours, so due messages go at once.
    let clock = SimClock::new("2026-12-06T15:00:00Z");

    let ehr_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ehr_addr = ehr_listener.local_addr().unwrap();
    let ehr = Arc::new(Mutex::new(Ehr::default()));
    let held = Arc::new(Notify::new());
    tokio::spawn(ehr_inbound(ehr_listener, ehr.clone(), held.clone()));

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = write_site(dir.path(), |t| {
        let t = edit(t, "poll_interval = \"5s\"", "poll_interval = \"1s\"");
        let t = edit(
            t,
            "reply_mix = { confirm = 60, cancel = 15, reschedule = 0 }",
            "reply_mix = { confirm = 100, cancel = 0, reschedule = 0 }",
        );
        // HL7 carries no opt-in; this site does not require one.
        let t = edit(t, "opt_in_required = true", "opt_in_required = false");
        // The HL7 feed as a system of its own, listening, writing back to the EHR over MLLP.
        let t = edit(
            t,
            "name = \"clinica-hl7\"\nsystem = \"clinica\"\n",
            "name = \"clinica-hl7\"\n",
        );
        let t = edit(
            t,
            "# listen = \"0.0.0.0:2575\"",
            &format!("listen = \"{addr}\""),
        );
        edit(
            t,
            "# [connectors.write_back]\n# send_to = \"ehr.example.org:2576\"",
            &format!("[connectors.write_back]\nsend_to = \"{ehr_addr}\""),
        )
    });

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut wb_acked = 0usize;
    let mut held_controls: Vec<String> = Vec::new();
    let rounds = schedule(&mut rng);
    let mut kinds = BTreeMap::<&str, u32>::new();
    for (round, kill_at) in rounds.iter().enumerate() {
        let mut child = medrelay(&config, clock.now(), &log, &["run"])
            .spawn()
            .unwrap();
        wait_listening(&mut child, addr, &log).await;
        if matches!(kill_at, KillAt::WriteBackInFlight) {
            ehr.lock().unwrap().hold = true;
            let mut s = TcpStream::connect(addr).await.unwrap();
            for k in wb_acked..wb_acked + 2 {
                let ack = exchange(&mut s, siu_due_now(k, clock.now()).as_bytes())
                    .await
                    .unwrap();
                assert_eq!(ack_code(&ack).0, "AA", "{}", String::from_utf8_lossy(&ack));
            }
            wb_acked += 2;
        }
        let acks = Arc::new(AtomicU64::new(0));
        let streams = if matches!(kill_at, KillAt::CommittedBeforeAck) {
            3
        } else {
            4
        };
        let mut workers = Vec::new();
        for _ in 0..streams {
            let repeat = {
                let l = ledger.lock().unwrap();
                (!l.acked.is_empty()).then(|| {
                    let nth = rng.below(l.acked.len() as u64) as usize;
                    *l.acked.iter().nth(nth).unwrap()
                })
            };
            workers.push(tokio::spawn(stream(
                addr,
                ledger.clone(),
                acks.clone(),
                repeat,
            )));
        }
        // The connection whose answer is never read (kept open until the kill).
        let mut unread = None;
        let name = match *kill_at {
            KillAt::Random(d) => {
                tokio::time::sleep(d).await;
                "random moment"
            }
            KillAt::AfterAck(n) => {
                wait_for("the ACKs of this round", &log, || {
                    let done = acks.load(Ordering::SeqCst) >= n;
                    async move { done }
                })
                .await;
                "right after an ACK was read"
            }
            KillAt::CommittedBeforeAck => {
                // The fourth connection sends one new message and does not read its answer.
                let i = {
                    let mut l = ledger.lock().unwrap();
                    l.next += 1;
                    l.next - 1
                };
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(format!("\x0b{}\x1c\r", siu(i)).as_bytes())
                    .await
                    .unwrap();
                unread = Some(s);
                let db = open_db(&db_path).await;
                let id = filler(i);
                wait_for("the held message's commit", &log, || {
                    let (db, id) = (db.clone(), id.clone());
                    async move {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT COUNT(*) FROM events WHERE source = ? AND filler_id = ?",
                        )
                        .bind(SYSTEM)
                        .bind(id)
                        .fetch_one(&db)
                        .await
                        .unwrap()
                            > 0
                    }
                })
                .await;
                db.close().await;
                // Committed, answer not read: for the peer it is unanswered, and it sends it again.
                ledger.lock().unwrap().unanswered.push(i);
                "after a commit, before its ACK was read"
            }
            KillAt::WriteBackInFlight => {
                tokio::time::timeout(PATIENCE, held.notified())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no write-back SRM reached the EHR:\n{}", log_tail(&log))
                    });
                // Every patient's answer stored before the kill: the simulator is part of the
                // killed process, and a reply it had not delivered yet would die with it (the
                // real Cloud API delivers it again; the in-process simulator cannot). Regression:
                // under load the second reply was often still in the simulator at the kill, and
                // the final wait for both written back never ended.
                let db = open_db(&db_path).await;
                wait_for("the round's replies stored", &log, || {
                    let db = db.clone();
                    async move {
                        count(
                            &db,
                            "SELECT COUNT(*) FROM replies WHERE outcome = 'accepted'",
                        )
                        .await
                            >= wb_acked as i64
                    }
                })
                .await;
                db.close().await;
                let e = ehr.lock().unwrap();
                held_controls.extend(e.received.iter().filter(|r| !r.1).map(|r| r.0.clone()));
                "while a write-back SRM was unanswered"
            }
        };
        kill_9(&mut child);
        drop(unread);
        ehr.lock().unwrap().hold = false;
        *kinds.entry(name).or_default() += 1;
        for w in workers {
            tokio::time::timeout(PATIENCE, w)
                .await
                .expect("a peer connection ends when the service dies")
                .expect("every answer was AA (or AR 207)");
        }
        let acked = ledger.lock().unwrap().acked.clone();
        let when = format!("after kill {} ({name})", round + 1);
        check_store(&db_path, &acked, wb_acked, &config, &clock, &log, &when).await;
    }

    // The last start: what was unanswered is sent again, and the held write-back goes out again.
    let mut child = medrelay(&config, clock.now(), &log, &["run"])
        .spawn()
        .unwrap();
    wait_listening(&mut child, addr, &log).await;
    let unanswered: Vec<usize> = std::mem::take(&mut ledger.lock().unwrap().unanswered);
    {
        let mut s = TcpStream::connect(addr).await.unwrap();
        for i in unanswered {
            let ack = exchange(&mut s, siu(i).as_bytes()).await.unwrap();
            assert_eq!(ack_code(&ack).0, "AA", "{}", String::from_utf8_lossy(&ack));
            ledger.lock().unwrap().acked.insert(i);
        }
    }
    let db = open_db(&db_path).await;
    wait_for("every accepted reply written back", &log, || {
        let db = db.clone();
        async move {
            count(
                &db,
                "SELECT COUNT(*) FROM replies WHERE outcome = 'accepted'",
            )
            .await
                >= wb_acked as i64
                && count(
                    &db,
                    "SELECT COUNT(*) FROM writeback_batches WHERE completed_at IS NULL",
                )
                .await
                    == 0
        }
    })
    .await;
    let reply_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM replies WHERE outcome = 'accepted'")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    kill_9(&mut child);
    let acked = ledger.lock().unwrap().acked.clone();
    let stored = check_store(
        &db_path,
        &acked,
        wb_acked,
        &config,
        &clock,
        &log,
        "at the end",
    )
    .await;
    let l = ledger.lock().unwrap();
    let e = ehr.lock().unwrap();
    // Every patient answer reached the EHR and was acknowledged; the one held during the crash was
    // sent again with the same MSH-10, so the EHR can drop a repeat.
    for id in &reply_ids {
        let control = format!("MRWB{id}");
        assert!(
            e.received
                .iter()
                .any(|(c, answered)| *c == control && *answered),
            "reply {id} was never written back with AA; the EHR received {:?}",
            e.received
        );
    }
    assert!(!held_controls.is_empty(), "no write-back was held");
    for c in &held_controls {
        assert!(
            e.received.iter().any(|(r, answered)| r == c && *answered),
            "the SRM {c} held during the crash was not sent again"
        );
    }
    assert!(l.repeats > 0, "no AA'd message was sent again");
    eprintln!(
        "{} kills ({kinds:?}); {} messages AA, {} stored, {} repeats answered AA without a second event, {} AR 207; {} SRMs received ({} held), {:.1} s",
        rounds.len(),
        l.acked.len(),
        stored,
        l.repeats,
        l.not_stored,
        e.received.len(),
        held_controls.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// CSV import killed mid-file

/// What a finished import left, for comparing two stores: appointments with their version and
/// content, applied events, planned steps.
async fn csv_state(db_path: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let db = open_db(db_path).await;
    let rows = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&db)
                .await
                .unwrap()
        }
    };
    let appointments = rows(
        "SELECT filler_id || '|' || status || '|' || start_at || '|' || sv_at_us || '|' || sv_seq || '|' || content_hash
         FROM appointments WHERE source = 'openemr' ORDER BY filler_id",
    )
    .await;
    let events = rows(
        "SELECT filler_id || '|' || sv_at_us || '|' || sv_seq || '|' || content_hash
         FROM events WHERE source = 'openemr' ORDER BY 1",
    )
    .await;
    let steps = rows(
        "SELECT a.filler_id || '|' || o.step || '|' || o.slot_start || '|' || o.state
         FROM outbox o JOIN appointments a ON a.id = o.appointment_id ORDER BY 1",
    )
    .await;
    db.close().await;
    (appointments, events, steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_import_killed_mid_file_then_rerun_matches_an_uncrashed_import() {
    const ROWS: u64 = 20_000;
    let started = Instant::now();
    let mut rng = Rng::from_env();
    let clock = SimClock::new("2026-12-01T12:00:00Z");
    let args = |file: &Path| -> Vec<String> {
        [
            "ingest",
            "csv",
            "--connector",
            "openemr",
            "--as-of",
            "2026-12-01T06:00:00Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([file.display().to_string()])
        .collect()
    };
    let site = || {
        let dir = tempfile::tempdir().unwrap();
        let config = write_site(dir.path(), |t| t);
        let file = dir.path().join("export.csv");
        medrelay::commands::bench::generate(&file, ROWS).unwrap();
        (dir, config, file)
    };

    // The uncrashed import.
    let (ref_dir, ref_config, ref_file) = site();
    let ref_log = ref_dir.path().join("medrelay.log");
    let a = args(&ref_file);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let status = medrelay(&ref_config, clock.now(), &ref_log, &a)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_tail(&ref_log));
    let reference = csv_state(&ref_dir.path().join("medrelay.db")).await;
    assert_eq!(reference.0.len() as u64, ROWS);

    // The same file, killed mid-file again and again, then run to the end.
    let (dir, config, file) = site();
    let log = dir.path().join("medrelay.log");
    let db_path = dir.path().join("medrelay.db");
    let a = args(&file);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    // The database exists (migrated, in WAL mode) before the first import, so that this test's
    // reader never holds the file while the importer creates it.
    let status = medrelay(&config, clock.now(), &log, &["status"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));
    let db = open_db(&db_path).await;
    let mut high_water = 0i64;
    let mut mid_file = 0;
    for attempt in 1..=6 {
        let mut child = medrelay(&config, clock.now(), &log, &a).spawn().unwrap();
        // Named point: the import has committed a batch beyond what the last attempt reached; kill
        // a random 0-30 ms later, inside the next batch.
        let mut exited = false;
        let deadline = Instant::now() + PATIENCE;
        loop {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            let n = count(
                &db,
                "SELECT COUNT(*) FROM appointments WHERE source = 'openemr'",
            )
            .await;
            if n > high_water {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress:\n{}",
                log_tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        kill_9(&mut child);
        let n = count(
            &db,
            "SELECT COUNT(*) FROM appointments WHERE source = 'openemr'",
        )
        .await;
        let twice = count(
            &db,
            "SELECT COUNT(*) FROM (SELECT filler_id FROM events WHERE source = 'openemr' GROUP BY filler_id HAVING COUNT(*) > 1)",
        )
        .await;
        assert_eq!(twice, 0, "attempt {attempt}: a row applied twice");
        assert!(n <= ROWS as i64);
        if n < ROWS as i64 {
            mid_file += 1;
        }
        high_water = n;
        audit_verify(&config, &clock, &log, &format!("after kill {attempt}"));
    }
    db.close().await;
    assert!(
        mid_file >= 3,
        "only {mid_file} kill(s) landed mid-file; the import is too fast for this test"
    );
    let mut out = medrelay(&config, clock.now(), &log, &a);
    out.arg("--json").stdout(Stdio::piped());
    let out = out.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", log_tail(&log));
    let summary: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{") && l.windows(7).any(|w| w == b"rows_ok"))
            .expect("a JSON result line"),
    )
    .unwrap();
    assert_eq!(summary["rows_ok"], ROWS, "{summary}");
    assert_eq!(summary["rows_bad"], 0, "{summary}");
    audit_verify(&config, &clock, &log, "after the rerun");
    let crashed = csv_state(&db_path).await;
    assert_eq!(crashed.0.len(), reference.0.len(), "appointments");
    assert!(
        crashed.0 == reference.0,
        "the appointments differ from an uncrashed import"
    );
    assert!(
        crashed.1 == reference.1,
        "the applied events differ from an uncrashed import"
    );
    assert!(
        crashed.2 == reference.2,
        "the planned steps differ from an uncrashed import"
    );
    eprintln!(
        "{mid_file} kills mid-file; {} appointments, {} events, {} steps identical to the uncrashed import; {:.1} s",
        crashed.0.len(),
        crashed.1.len(),
        crashed.2.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration reload on SIGHUP (issue 16), on the real binary and the real signal; it shares
// this file's small tools (the site, the command, the log).

/// Waits until the log has `what` (a guard against a hang, not a speed claim).
fn wait_for_log(log: &Path, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(what)
    {
        assert!(
            Instant::now() < deadline,
            "no {what:?} in:\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn run_reloads_its_configuration_on_sighup_and_refuses_a_restart_only_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_site(dir.path(), |t| t);
    let log = dir.path().join("run.log");
    let now: jiff::Timestamp = "2026-11-29T13:30:00Z".parse().unwrap();
    let mut child = medrelay(&config, now, &log, &["run"]).spawn().unwrap();
    wait_for_log(&log, "medrelay service started");
    // A new plan step, then SIGHUP: applied, the process keeps running.
    let original = std::fs::read_to_string(&config).unwrap();
    let added = format!(
        "{original}\n[[plan.steps]]\nname = \"reminder_6h\"\nkind = \"reminder\"\noffset = \"6h\"\ntemplate = \"appointment_reminder\"\n"
    );
    std::fs::write(&config, &added).unwrap();
    signal(&child, "HUP");
    wait_for_log(&log, "configuration reloaded");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    // Another database needs a restart: refused, still running on the running configuration.
    std::fs::write(
        &config,
        added.replacen("path = \"medrelay.db\"", "path = \"other.db\"", 1),
    )
    .unwrap();
    signal(&child, "HUP");
    wait_for_log(&log, "configuration reload refused");
    assert!(log_tail(&log).contains("[store] changed, which needs a restart"));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));
    assert!(!dir.path().join("other.db").exists());
}

/// The test PKI (tests/fixtures/tls).
fn pki(name: &str) -> PathBuf {
    repo().join("tests/fixtures/tls").join(name)
}

/// MLLP over TLS to `addr`, trusting the test CA: the ACK's MSA-1, or why there was none.
async fn tls_exchange(
    stream: &mut medrelay_listener::tls::ClientTlsStream<TcpStream>,
    i: usize,
) -> Result<String, String> {
    exchange(stream, siu(i).as_bytes())
        .await
        .map(|ack| ack_code(&ack).0)
        .map_err(|e| e.to_string())
}

async fn tls_connect(
    addr: SocketAddr,
) -> Result<medrelay_listener::tls::ClientTlsStream<TcpStream>, String> {
    let client = medrelay_listener::tls::ClientTls::load(&medrelay_listener::tls::ClientTlsFiles {
        ca: pki("ca.crt"),
        server_name: Some("localhost".into()),
        client_cert: None,
        client_key: None,
    })
    .unwrap();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    client
        .connect("localhost", tcp, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())
}

#[test]
fn run_reloads_renewed_tls_certificates_on_sighup_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (cert, key) = (dir.path().join("mllp.crt"), dir.path().join("mllp.key"));
    std::fs::copy(pki("server.crt"), &cert).unwrap();
    std::fs::copy(pki("server.key"), &key).unwrap();
    let config = write_site(dir.path(), |t| {
        edit(
            t,
            "# listen = \"0.0.0.0:2575\"",
            &format!("listen = \"{addr}\"\ntls = {{ cert = \"mllp.crt\", key = \"mllp.key\" }}"),
        )
    });
    let log = dir.path().join("run.log");
    let now: jiff::Timestamp = "2026-12-06T15:00:00Z".parse().unwrap();
    let mut child = medrelay(&config, now, &log, &["run"]).spawn().unwrap();
    wait_for_log(&log, "medrelay service started");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A connection under the first certificate.
        let mut open = tls_connect(addr).await.expect("the CA's certificate");
        assert_eq!(tls_exchange(&mut open, 1).await.unwrap(), "AA");
        // The certificate is replaced by one nobody trusts, and the service told.
        std::fs::copy(pki("rogue.crt"), &cert).unwrap();
        std::fs::copy(pki("rogue.key"), &key).unwrap();
        signal(&child, "HUP");
        wait_for_log(&log, "TLS certificates reloaded");
        let refused = tls_connect(addr).await;
        assert!(refused.is_err(), "a new connection got the old certificate");
        // The open connection keeps its session.
        assert_eq!(tls_exchange(&mut open, 2).await.unwrap(), "AA");
        // A half-written renewal: refused, the listener keeps what it has.
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
        signal(&child, "HUP");
        wait_for_log(&log, "TLS reload refused");
        // The renewal done right: new connections get it.
        std::fs::copy(pki("server.crt"), &cert).unwrap();
        std::fs::copy(pki("server.key"), &key).unwrap();
        let reloads = std::fs::read_to_string(&log)
            .unwrap()
            .matches("TLS certificates reloaded")
            .count();
        signal(&child, "HUP");
        let deadline = Instant::now() + PATIENCE;
        while std::fs::read_to_string(&log)
            .unwrap()
            .matches("TLS certificates reloaded")
            .count()
            == reloads
        {
            assert!(Instant::now() < deadline, "{}", log_tail(&log));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut renewed = tls_connect(addr).await.expect("the renewed certificate");
        assert_eq!(tls_exchange(&mut renewed, 3).await.unwrap(), "AA");
    });
    assert!(child.try_wait().unwrap().is_none(), "still running");
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_tail(&log));
}
