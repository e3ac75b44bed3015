//! Regression tests for what real HL7 feeds send (fixtures in tests/fixtures/hl7, written for this
//! project): a cancellation whose MSH-7 is older than its booking must never be dropped as
//! "unchanged", a cancel without timing must cancel, and SCH-25 words and AIL-3 rooms are read.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::config::load;
use medrelay_connector_hl7v2::file::split;
use medrelay_pipeline::clock::ManualClock;
use medrelay_pipeline::service::Service;
use tokio::net::TcpStream;

async fn settle(service: &Service) {
    while !service.tick(50).await.unwrap().is_idle() {}
}

fn sent_to(service: &Service, digits: &str) -> usize {
    let sim = service.simulator.clone().unwrap();
    sim.sent().into_iter().filter(|b| b["to"] == digits).count()
}

/// The demo configuration with the HL7 feed listening on loopback, no opt-in required (HL7 carries
/// none), and `extra` lines added to the HL7 connector.
fn setup(dir: &std::path::Path, extra: &str) -> (String, medrelay::config::Loaded) {
    common::demo_config(dir, &[]);
    let path = dir.join("medrelay.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "# listen = \"0.0.0.0:2575\"",
            &format!("listen = \"127.0.0.1:0\"\n{extra}"),
        )
        .replace("opt_in_required = true", "opt_in_required = false");
    std::fs::write(&path, text).unwrap();
    (path.to_str().unwrap().to_string(), load(&path).unwrap())
}

fn fixture(name: &str) -> String {
    let path = common::root().join("tests/fixtures/hl7").join(name);
    path.to_str().unwrap().to_string()
}

/// A running service with the HL7 feed on loopback (`extra` lines in its connector), one MLLP
/// connection to it, the clock at 2026-12-06T13:30Z and `fixture`'s messages.
struct MllpFeed {
    _dir: tempfile::TempDir,
    config: String,
    clock: Arc<ManualClock>,
    store: medrelay_pipeline::store::Store,
    service: Service,
    listeners: Vec<(
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    stream: TcpStream,
    messages: Vec<medrelay_connector_hl7v2::file::FileMessage>,
}

impl MllpFeed {
    async fn start(extra: &str, fixture_name: &str) -> MllpFeed {
        let dir = tempfile::tempdir().unwrap();
        let (config, loaded) = setup(dir.path(), extra);
        let clock = Arc::new(ManualClock::new("2026-12-06T13:30:00Z".parse().unwrap()));
        let store = medrelay::wiring::open_store(&loaded).await.unwrap();
        let service =
            medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
        let listeners = common::start_mllp(&service, &loaded, clock.clone()).await;
        let stream = TcpStream::connect(listeners[0].0).await.unwrap();
        let messages = split(&std::fs::read(fixture(fixture_name)).unwrap());
        MllpFeed {
            _dir: dir,
            config,
            clock,
            store,
            service,
            listeners,
            stream,
            messages,
        }
    }

    /// Sends message `i` and returns its ACK.
    async fn send(&mut self, i: usize) -> String {
        common::mllp_exchange(&mut self.stream, &self.messages[i].bytes).await
    }

    async fn stop(self) {
        for (_, h) in &self.listeners {
            h.abort();
        }
        self.store.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_msh7_cancellation_on_one_mllp_connection_cancels_the_booking() {
    let mut f = MllpFeed::start("", "skewed_cancel_v251.hl7").await;
    assert_eq!(f.messages.len(), 4);

    // The booking, then its confirmation goes out.
    let ack = f.send(0).await;
    assert!(ack.contains("\rMSA|AA|SKW-0001"), "{ack}");
    settle(&f.service).await;
    assert_eq!(
        sent_to(&f.service, "5511940000001"),
        1,
        "booking confirmation"
    );
    // The cancel, stamped an hour before the booking, arrives after it on the same connection.
    let ack = f.send(1).await;
    assert!(ack.contains("\rMSA|AA|SKW-0002"), "{ack}");
    // A booking and a cancel that carries no timing at all.
    for (i, id) in [(2, "SKW-0003"), (3, "SKW-0004")] {
        let ack = f.send(i).await;
        assert!(ack.contains(&format!("\rMSA|AA|{id}")), "{ack}");
    }
    settle(&f.service).await;
    for id in ["clinica/AG-40001", "clinica/AG-40002"] {
        let (_, explain) = cli(&f.config, &["explain", id]).await;
        assert!(explain.contains("  cancelled  "), "{explain}");
        assert!(
            !explain.contains("pending"),
            "reminders withdrawn:\n{explain}"
        );
    }
    // The 48 h reminder time of AG-40001 (20 Dec 10:00 -03) passes: nothing more is sent.
    f.clock.set("2026-12-18T13:05:00Z".parse().unwrap());
    settle(&f.service).await;
    assert_eq!(
        sent_to(&f.service, "5511940000001"),
        1,
        "no reminder after the cancel"
    );
    assert_eq!(sent_to(&f.service, "5511940000002"), 0);
    let (_, status) = cli(&f.config, &["status"]).await;
    assert!(status.contains("ignored events: none"), "{status}");
    f.stop().await;
}

#[tokio::test]
async fn older_msh7_cancellation_with_message_time_ordering_is_reported_older_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path(), "ordering = \"message_time\"");
    let file = fixture("skewed_cancel_v251.hl7");
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", &file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::OK, "{out}");
    assert!(
        out.contains("4 messages imported (3 new or changed, 0 unchanged), 0 ignored, 0 rejected"),
        "{out}"
    );
    assert!(out.contains("  1 older, ignored: "), "{out}");
    let (_, status) = cli(&config, &["status"]).await;
    assert!(
        status.contains(
            "older_cancellation_ignored: feed clinica-hl7: a `cancelled` event for clinica/AG-40001"
        ),
        "an alert, because a reminder would go out for a cancelled visit:\n{status}"
    );
    assert!(status.contains("older, ignored, stored booked"), "{status}");
    assert!(status.contains("1 older ignored"), "{status}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-40001"]).await;
    assert!(explain.contains("  booked  "), "{explain}");
    assert!(
        explain.contains("ignored: a cancelled event from feed clinica-hl7")
            && explain.contains("older, ignored"),
        "{explain}"
    );
    // The status change without timing was newer by MSH-7 too: it cancelled.
    let (_, explain) = cli(&config, &["explain", "clinica/AG-40002"]).await;
    assert!(explain.contains("  cancelled  "), "{explain}");
}

#[tokio::test]
async fn reimported_file_in_arrival_order_is_unchanged_and_keeps_the_cancellations() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path(), "");
    let file = fixture("skewed_cancel_v251.hl7");
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", &file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::OK, "{out}");
    assert!(out.contains("(4 new or changed, 0 unchanged)"), "{out}");
    assert!(!out.contains("older, ignored"), "{out}");
    // A day later the same file again (a replayed batch): every message is a repeat.
    let args = ["--now", "2026-12-07T13:30:00Z", "ingest", "hl7", &file];
    let (_, out) = cli(&config, &args).await;
    assert!(out.contains("(0 new or changed, 4 unchanged)"), "{out}");
    for id in ["clinica/AG-40001", "clinica/AG-40002"] {
        let (_, explain) = cli(&config, &["explain", id]).await;
        assert!(explain.contains("  cancelled  "), "{explain}");
    }
}

#[tokio::test]
async fn v23_delete_stamped_a_day_early_and_s26_without_timing_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path(), "");
    let file = fixture("skewed_cancel_v23.hl7");
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", &file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::OK, "{out}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-40003"]).await;
    assert!(explain.contains("  entered-in-error  "), "{explain}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-40004"]).await;
    assert!(explain.contains("  noshow  "), "{explain}");
}

#[tokio::test]
async fn status_change_for_an_unknown_appointment_is_reported_not_on_record() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(dir.path(), "");
    // Only the last message: a cancel without timing for an appointment never booked here.
    let all = std::fs::read(fixture("skewed_cancel_v251.hl7")).unwrap();
    let last = split(&all).pop().unwrap();
    let file = dir.path().join("only_cancel.hl7");
    std::fs::write(&file, &last.bytes).unwrap();
    let file = file.to_str().unwrap();
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::OK, "{out}");
    assert!(out.contains("(0 new or changed, 0 unchanged)"), "{out}");
    assert!(
        out.contains("1 status change(s) for appointments not on record, ignored"),
        "{out}"
    );
    let (_, status) = cli(&config, &["status"]).await;
    assert!(
        status.contains("ignored events (") && status.contains("unknown 1"),
        "{status}"
    );
}

#[tokio::test]
async fn sch25_status_map_and_local_words_through_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = setup(
        dir.path(),
        "status_map = { \"X\" = \"cancelled\" }\nlocation_parts = [\"point_of_care\", \"room\", \"facility\"]",
    );
    let file = fixture("local_status_words.hl7");
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", &file];
    let (code, out) = cli(&config, &args).await;
    assert_eq!(code, medrelay::exit::PARTIAL, "{out}");
    assert!(out.contains("3 messages imported"), "{out}");
    assert!(
        out.contains("message 4 (line 12, MSH-10 STA-0004): AE") && out.contains("`status_map`"),
        "{out}"
    );
    assert!(!out.contains("Remarcado"), "the value is not echoed: {out}");
    let (_, explain) = cli(&config, &["explain", "clinica/AG-40013"]).await;
    assert!(explain.contains("  cancelled  "), "{explain}");

    // A room change is a change: the location follows the configured PL parts.
    let file = fixture("room_change.hl7");
    let args = ["--now", "2026-12-06T13:30:00Z", "ingest", "hl7", &file];
    let (_, out) = cli(&config, &args).await;
    assert!(out.contains("(2 new or changed, 0 unchanged)"), "{out}");
    use sqlx::Connection;
    let db = format!("sqlite://{}", dir.path().join("medrelay.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    let (location, revision): (String, i64) =
        sqlx::query_as("SELECT location, revision FROM appointments WHERE filler_id = 'AG-40021'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(location, "CARDIO, Sala 305, Hospital Central");
    assert!(revision >= 2, "the move is a revision of the appointment");
}

/// The template names and location parameter of every message sent to `digits`, in order.
fn sent_moves(service: &Service, digits: &str) -> Vec<(String, String)> {
    let sim = service.simulator.clone().unwrap();
    sim.sent()
        .into_iter()
        .filter(|b| b["to"] == digits)
        .map(|b| {
            let name = b["template"]["name"].as_str().unwrap().to_string();
            let body = &b["template"]["components"][0]["parameters"];
            (
                name,
                body[3]["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_change_after_the_confirmation_tells_the_patient_at_once() {
    let mut f = MllpFeed::start(
        "location_parts = [\"point_of_care\", \"room\", \"facility\"]",
        "room_moves.hl7",
    )
    .await;
    assert_eq!(f.messages.len(), 4);
    let digits = "5511940000003";

    // Booked in Sala 201: the confirmation names it.
    let ack = f.send(0).await;
    assert!(ack.contains("\rMSA|AA|MOVE-0001"), "{ack}");
    settle(&f.service).await;
    let sent = sent_moves(&f.service, digits);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].1.contains("Sala 201"), "{sent:?}");

    // Moved to Sala 305 at the same time: the patient hears it now, not 48 h before the visit.
    let ack = f.send(1).await;
    assert!(ack.contains("\rMSA|AA|MOVE-0002"), "{ack}");
    settle(&f.service).await;
    let sent = sent_moves(&f.service, digits);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[1].0, "appointment_moved");
    assert_eq!(sent[1].1, "CARDIO, Sala 305, Hospital Central");

    // Two more moves at night (22:00 in São Paulo, quiet hours until 08:00): the first
    // announcement waits, the second supersedes it, and only the latest place goes out.
    f.clock.set("2026-12-07T01:00:00Z".parse().unwrap());
    for (i, id) in [(2, "MOVE-0003"), (3, "MOVE-0004")] {
        let ack = f.send(i).await;
        assert!(ack.contains(&format!("\rMSA|AA|{id}")), "{ack}");
        settle(&f.service).await;
    }
    assert_eq!(sent_moves(&f.service, digits).len(), 2, "quiet hours");
    f.clock.set("2026-12-07T11:05:00Z".parse().unwrap());
    settle(&f.service).await;
    let sent = sent_moves(&f.service, digits);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[2].0, "appointment_moved");
    assert_eq!(sent[2].1, "CARDIO, Sala 512, Hospital Central");
    let (_, explain) = cli(&f.config, &["explain", "clinica/AG-40031"]).await;
    assert!(
        explain.contains("superseded by a newer location change"),
        "{explain}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_change_before_the_confirmation_went_out_sends_one_message_with_the_new_room() {
    let mut f = MllpFeed::start(
        "location_parts = [\"point_of_care\", \"room\", \"facility\"]",
        "room_moves.hl7",
    )
    .await;
    // Booking and move arrive before the service plans anything.
    for i in 0..2 {
        let ack = f.send(i).await;
        assert!(ack.contains("\rMSA|AA|"), "{ack}");
    }
    settle(&f.service).await;
    let sent = sent_moves(&f.service, "5511940000003");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "appointment_booked");
    assert_eq!(sent[0].1, "CARDIO, Sala 305, Hospital Central");
    f.stop().await;
}
