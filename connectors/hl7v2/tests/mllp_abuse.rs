//! The MLLP listener under hostile clients (issue 11): for each class of abuse, a well-behaved
//! client on the reserved address keeps getting AA within a generous bound while the hostile ones
//! run, the hostile connections are closed or refused, and the process's memory stays bounded.
//!
//! The tests run one at a time (they share the process's memory figures) on short configured
//! timeouts; bounds are generous for a loaded 2-core machine. Hostile clients connect from other
//! loopback addresses (127.0.0.2...), the EHR from 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use medrelay_connector_hl7v2::mllp::{
    ListenerOptions, MessageSink, QuarantineGate, exchange, serve,
};
use medrelay_connector_hl7v2::{Hl7Options, Outcome, Processed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One test at a time: memory figures are per process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A generous bound for anything that should take milliseconds.
const BOUND: Duration = Duration::from_secs(20);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// What the listener handed over: events counted, rejections with their reason and raw size.
#[derive(Default)]
struct Memory {
    events: AtomicUsize,
    quarantined: std::sync::Mutex<Vec<(String, usize)>>,
}

#[async_trait::async_trait]
impl MessageSink for Memory {
    async fn store(&self, p: &Processed, raw: &[u8]) -> Result<(), String> {
        match &p.outcome {
            Outcome::Event(_) => {
                self.events.fetch_add(1, Ordering::SeqCst);
            }
            Outcome::Rejected(e) => self
                .quarantined
                .lock()
                .unwrap()
                .push((e.to_string(), raw.len())),
            _ => {}
        }
        Ok(())
    }
}

impl Memory {
    fn quarantined(&self) -> Vec<(String, usize)> {
        self.quarantined.lock().unwrap().clone()
    }
}

/// The listener's options for these tests: 127.0.0.0/8 may connect, 127.0.0.1 (the EHR) has
/// two reserved slots, short timeouts.
fn options() -> ListenerOptions {
    let mut o = ListenerOptions::new("abuse");
    o.max_connections = 8;
    o.max_connections_per_source = 2;
    o.allow_from = vec!["127.0.0.0/8".parse().unwrap()];
    o.reserved_for = vec!["127.0.0.1".parse().unwrap()];
    o.reserved_connections = 2;
    o.idle_timeout = Duration::from_secs(2);
    o.frame_timeout = Duration::from_secs(2);
    o.write_timeout = Duration::from_secs(1);
    o
}

async fn start(
    o: ListenerOptions,
    sink: Arc<dyn MessageSink>,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(Hl7Options::new("s", "saopaulo", "America/Sao_Paulo", "BR")),
        o,
        sink,
        Arc::new(Timestamp::now),
    ));
    (addr, server)
}

/// A connection to `addr` from the loopback address 127.0.0.`n`.
async fn connect_from(n: u8, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from(([127, 0, 0, n], 0))).unwrap();
    s.connect(addr).await.unwrap()
}

/// One exchange within the bound; the ACK text.
async fn ack_of(s: &mut TcpStream, msg: &[u8]) -> String {
    let ack = tokio::time::timeout(BOUND, exchange(s, msg))
        .await
        .expect("answered within the bound")
        .expect("an ACK frame");
    String::from_utf8(ack).unwrap()
}

/// The EHR on 127.0.0.1 sends the good message `n` times on one connection: every answer AA.
async fn ehr_gets_aa(addr: SocketAddr, n: usize) {
    let good = fixture("mllp_good_siu.hl7");
    let mut ehr = tokio::time::timeout(BOUND, connect_from(1, addr))
        .await
        .unwrap();
    for _ in 0..n {
        let ack = ack_of(&mut ehr, &good).await;
        assert!(ack.contains("\rMSA|AA|OK-0001"), "{ack}");
    }
}

/// Whether the server closes `s` (EOF or reset) within the bound, reading and dropping whatever
/// it sends first.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// This process's memory figure `field` (`VmRSS`, `VmHWM`) in MiB, from /proc/self/status.
fn memory_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// Peak memory of the whole test process must stay under this (a single `|` bomb used to take
/// 700+ MiB).
const MAX_PEAK_MIB: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_global_limit_do_not_lock_out_the_ehr() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(options(), sink.clone()).await;
    // 16 idle connections from 8 hostile addresses against 8 slots (2 of them reserved).
    let mut hostile = Vec::new();
    for n in 2..10 {
        for _ in 0..2 {
            hostile.push(connect_from(n, addr).await);
        }
    }
    ehr_gets_aa(addr, 5).await;
    // Every hostile connection ends: refused at once (over the limits) or closed when idle.
    for s in &mut hostile {
        assert!(
            closed_by_server(s).await,
            "an idle hostile connection was kept"
        );
    }
    assert_eq!(sink.events.load(Ordering::SeqCst), 5);
    ehr_gets_aa(addr, 1).await;
    assert!(memory_mib("VmHWM") < MAX_PEAK_MIB);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_allow_from_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.allow_from = vec!["127.0.0.1".parse().unwrap()];
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    let mut outsider = connect_from(7, addr).await;
    let _ = outsider.write_all(&fixture("mllp_good_siu.hl7")).await;
    assert!(closed_by_server(&mut outsider).await);
    ehr_gets_aa(addr, 1).await;
    assert_eq!(
        sink.events.load(Ordering::SeqCst),
        1,
        "nothing of the outsider's was read"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_without_a_start_byte_counts_toward_the_idle_timeout() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (addr, server) = start(options(), Arc::new(Memory::default())).await;
    let noisy = connect_from(2, addr).await;
    let (mut read, mut write) = noisy.into_split();
    // A byte every 300 ms: more often than the 2 s idle timeout, never a start block.
    let writer = tokio::spawn(async move {
        while write.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    ehr_gets_aa(addr, 3).await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(BOUND, read.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the noisy connection is closed: {closed:?}"
    );
    writer.abort();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_byte_then_a_slow_dribble_hits_the_frame_deadline() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.max_message_bytes = 4096;
    let (addr, server) = start(o, Arc::new(Memory::default())).await;
    let mut dribblers = Vec::new();
    // One within the size limit, one past it (skipped, so its buffer stays empty: the bypass).
    for (n, head) in [(2u8, 10usize), (3, 8000)] {
        let s = connect_from(n, addr).await;
        let (read, mut write) = s.into_split();
        let mut first = vec![0x0b];
        first.extend(std::iter::repeat_n(b'|', head));
        dribblers.push((
            read,
            tokio::spawn(async move {
                let _ = write.write_all(&first).await;
                while write.write_all(b"|").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }),
        ));
    }
    ehr_gets_aa(addr, 3).await;
    for (mut read, writer) in dribblers {
        let mut buf = [0u8; 4096];
        let closed = tokio::time::timeout(BOUND, async {
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a dribbling frame outlived its deadline");
        writer.abort();
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_acks_is_dropped_by_the_write_timeout() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.max_connections_per_source = 1;
    // Long idle and frame timeouts: only the write timeout can free the slot.
    o.idle_timeout = Duration::from_secs(600);
    o.frame_timeout = Duration::from_secs(600);
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    // A message whose ACK is large (MSA-2 echoes a 32 KB MSH-10), sent over and over by a client
    // with a small receive buffer that never reads.
    let big_id = "Z".repeat(32 * 1024);
    let msg = String::from_utf8(fixture("mllp_good_siu.hl7"))
        .unwrap()
        .replace("OK-0001", &big_id);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
    let deaf = socket.connect(addr).await.unwrap();
    let (_read, mut write) = deaf.into_split();
    let mut frame = vec![0x0b];
    frame.extend_from_slice(msg.as_bytes());
    frame.extend_from_slice(b"\x1c\r");
    let flood = tokio::spawn(async move {
        for _ in 0..2_000 {
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    ehr_gets_aa(addr, 3).await;
    // The slot of 127.0.0.2 (its only one) comes free once the server gives up writing to it.
    let again = tokio::time::timeout(BOUND, async {
        loop {
            let mut s = connect_from(2, addr).await;
            let good = fixture("mllp_good_siu.hl7");
            let answered =
                tokio::time::timeout(Duration::from_secs(2), exchange(&mut s, &good)).await;
            if let Ok(Ok(ack)) = answered {
                return String::from_utf8(ack).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the deaf client's slot was never freed");
    assert!(again.contains("MSA|AA|OK-0001"), "{again}");
    flood.abort();
    server.abort();
}

/// A frame of `filler` repeated to about 1 MB inside PID, with its header.
fn bomb(filler: u8, id: &str) -> Vec<u8> {
    let mut raw =
        format!("MSH|^~\\&|X|Y|MEDRELAY|GHH|20261120093000||SIU^S12|{id}|P|2.5\rPID|").into_bytes();
    raw.extend(std::iter::repeat_n(filler, 1_000_000));
    raw.push(b'\r');
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_bombs_from_four_senders_keep_memory_bounded_and_acks_flowing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.max_connections_per_source = 4;
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    let mut senders = Vec::new();
    for n in 2..6u8 {
        senders.push(tokio::spawn(async move {
            let mut s = connect_from(n, addr).await;
            let mut answers = Vec::new();
            let bombs = [
                (b'|', "max_fields"),
                (b'~', "max_repetitions"),
                (b'^', "max_components"),
            ];
            for (i, (filler, limit)) in bombs.into_iter().enumerate() {
                let id = format!("BOMB{n}-{i}");
                let ack = ack_of(&mut s, &bomb(filler, &id)).await;
                answers.push((ack, id, limit));
            }
            answers
        }));
    }
    ehr_gets_aa(addr, 10).await;
    for s in senders {
        for (ack, id, limit) in s.await.unwrap() {
            assert!(ack.contains(&format!("\rMSA|AR|{id}")), "{ack}");
            assert!(ack.contains(limit), "the ERR names the limit: {ack}");
        }
    }
    assert_eq!(sink.events.load(Ordering::SeqCst), 10);
    let q = sink.quarantined();
    assert_eq!(q.len(), 12, "every bomb quarantined whole");
    assert!(q.iter().all(|(_, n)| *n > 1_000_000));
    let peak = memory_mib("VmHWM");
    assert!(peak < MAX_PEAK_MIB, "peak memory {peak} MiB");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_over_the_time_budget_is_answered_ar_and_quarantined() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.parse_budget = Duration::ZERO;
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    let mut s = connect_from(1, addr).await;
    let ack = ack_of(&mut s, &fixture("mllp_good_siu.hl7")).await;
    assert!(ack.contains("\rMSA|AR|OK-0001"), "{ack}");
    assert!(ack.contains("parse_budget_ms"), "{ack}");
    assert_eq!(sink.events.load(Ordering::SeqCst), 0);
    assert_eq!(sink.quarantined().len(), 1);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fs_inside_a_field_is_an_ae_not_an_aa_with_half_a_patient() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(options(), sink.clone()).await;
    let mut s = connect_from(1, addr).await;
    let raw = fixture("fs_inside_a_name.hl7");
    let ack = ack_of(&mut s, &raw).await;
    assert!(ack.contains("\rMSA|AE|FS-0001"), "{ack}");
    assert!(
        ack.contains("|PID^1^5^1|102^Data type error^HL70357|"),
        "{ack}"
    );
    assert_eq!(
        sink.events.load(Ordering::SeqCst),
        0,
        "nothing of it stored as data"
    );
    assert_eq!(
        sink.quarantined()[0].1,
        raw.len(),
        "quarantined whole, not cut at the FS"
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_name_is_an_ae_and_never_stored() {
    let _one = ONE_AT_A_TIME.lock().await;
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(options(), sink.clone()).await;
    let mut s = connect_from(1, addr).await;
    let ack = ack_of(&mut s, &fixture("nul_in_a_name.hl7")).await;
    assert!(ack.contains("\rMSA|AE|NUL-0001"), "{ack}");
    assert!(
        ack.contains("|PID^1^5^1^2|102^Data type error^HL70357|"),
        "{ack}"
    );
    assert!(ack.contains("NUL"), "{ack}");
    assert_eq!(sink.events.load(Ordering::SeqCst), 0);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_ending_in_fs_without_cr_is_answered_ar_not_read_as_complete() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    o.end_grace = Duration::from_millis(300);
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    let mut s = connect_from(1, addr).await;
    let good = fixture("mllp_good_siu.hl7");
    // Half a message, then FS and nothing more: the sender may be cutting a field at the FS.
    let mut frame = vec![0x0b];
    frame.extend_from_slice(&good[..good.len() / 2]);
    frame.push(0x1c);
    s.write_all(&frame).await.unwrap();
    let mut codec = medrelay_connector_hl7v2::mllp::MllpCodec::new(1 << 20);
    let mut buf = bytes::BytesMut::new();
    let ack = tokio::time::timeout(BOUND, async {
        use tokio_util::codec::Decoder;
        loop {
            if let Some(medrelay_connector_hl7v2::mllp::Frame::Message(m)) =
                codec.decode(&mut buf).unwrap()
            {
                return String::from_utf8(m).unwrap();
            }
            assert!(
                s.read_buf(&mut buf).await.unwrap() > 0,
                "closed without an answer"
            );
        }
    })
    .await
    .expect("answered");
    assert!(ack.contains("\rMSA|AR|OK-0001"), "{ack}");
    assert!(ack.contains("not followed by CR"), "{ack}");
    assert_eq!(sink.events.load(Ordering::SeqCst), 0);
    assert_eq!(sink.quarantined().len(), 1);
    // The connection goes on: the next frame is read normally.
    let ack = ack_of(&mut s, &good).await;
    assert!(ack.contains("\rMSA|AA|OK-0001"), "{ack}");
    server.abort();
}

/// A quota that keeps the first `keep` rejected messages and counts the rest.
struct KeepFirst {
    keep: usize,
    asked: AtomicUsize,
}

#[async_trait::async_trait]
impl QuarantineGate for KeepFirst {
    async fn admit(&self, source: IpAddr, _bytes: usize) -> bool {
        assert_eq!(
            source,
            IpAddr::from([127, 0, 0, 3]),
            "asked about the sender"
        );
        self.asked.fetch_add(1, Ordering::SeqCst) < self.keep
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_over_the_quarantine_quota_are_answered_but_not_stored() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut o = options();
    let gate = Arc::new(KeepFirst {
        keep: 2,
        asked: AtomicUsize::new(0),
    });
    o.quarantine_gate = Some(gate.clone());
    let sink = Arc::new(Memory::default());
    let (addr, server) = start(o, sink.clone()).await;
    let mut s = connect_from(3, addr).await;
    for i in 0..5 {
        let ack = ack_of(&mut s, &bomb(b'|', &format!("Q{i}"))).await;
        assert!(ack.contains(&format!("\rMSA|AR|Q{i}")), "{ack}");
    }
    assert_eq!(gate.asked.load(Ordering::SeqCst), 5);
    assert_eq!(sink.quarantined().len(), 2, "only what the quota admitted");
    // Accepted messages never ask the quota.
    let mut s = connect_from(3, addr).await;
    let ack = ack_of(&mut s, &fixture("mllp_good_siu.hl7")).await;
    assert!(ack.contains("MSA|AA"), "{ack}");
    assert_eq!(gate.asked.load(Ordering::SeqCst), 5);
    server.abort();
}
