//! Shared helpers for the end-to-end tests: a demo configuration in a temporary folder, with the
//! simulator's random reply mix turned off so that tests script each patient's answer.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use medrelay::config::{Loaded, load};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the sample configuration (reply mix off, blocklist as given) and a secret into `dir`.
pub fn demo_config(dir: &Path, blocklist: &[&str]) -> Loaded {
    let text = std::fs::read_to_string(root().join("samples/medrelay.toml")).unwrap();
    let list = blocklist
        .iter()
        .map(|b| format!("\"{b}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = text
        .replace(
            "reply_mix = { confirm = 60, cancel = 15, reschedule = 0 }",
            "reply_mix = { confirm = 0, cancel = 0, reschedule = 0 }",
        )
        .replace(
            "blocklist = [\"+1 212 736 5012\"]",
            &format!("blocklist = [{list}]"),
        );
    std::fs::write(dir.join("medrelay.toml"), text).unwrap();
    std::fs::copy(
        root().join("samples/profiles.toml"),
        dir.join("profiles.toml"),
    )
    .unwrap();
    std::fs::write(dir.join("medrelay.key"), "k".repeat(48)).unwrap();
    load(&dir.join("medrelay.toml")).unwrap()
}

/// Points the sample FHIR connector `clinica-fhir` of the configuration at `path` to the server
/// at `base` (uncommenting its `[connectors.server]`).
pub fn with_fhir_server(path: &Path, base: &str) {
    let text = std::fs::read_to_string(path).unwrap().replace(
        "# [connectors.server]\n# base_url = \"https://ehr.clinica.example/fhir/R4\"",
        &format!("[connectors.server]\nbase_url = \"{base}\""),
    );
    std::fs::write(path, text).unwrap();
}

/// The data rows (header skipped) of every return file written for `connector`, oldest file first.
pub fn return_rows(dir: &Path, connector: &str) -> Vec<String> {
    let mut rows = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("returns").join(connector)) else {
        return rows;
    };
    let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        rows.extend(text.lines().skip(1).map(str::to_string));
    }
    rows
}

/// Copies a sample into `dir` and returns its path there.
pub fn copy_sample(dir: &Path, relative: &str) -> PathBuf {
    let from = root().join(relative);
    let to = dir.join(from.file_name().unwrap());
    std::fs::copy(&from, &to).unwrap();
    to
}

/// Opens the store, wires the service on `clock`, and imports `file` through `connector` as of now:
/// the start of most end-to-end tests.
pub async fn service_with_import(
    loaded: &Loaded,
    clock: std::sync::Arc<medrelay_pipeline::clock::ManualClock>,
    connector: &str,
    file: &Path,
) -> (
    medrelay_pipeline::store::Store,
    medrelay_pipeline::service::Service,
    medrelay::wiring::CsvImportResult,
) {
    use medrelay_pipeline::clock::Clock;
    let store = medrelay::wiring::open_store(loaded).await.unwrap();
    let service = medrelay::wiring::build_service(loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some(connector)).unwrap().clone();
    let imported =
        medrelay::wiring::import_csv(&service, loaded, &c, file, Some(clock.now()), |_| {})
            .await
            .unwrap();
    (store, service, imported)
}

/// Runs the `medrelay` command line in-process with full arguments (program name first); returns the
/// exit code and what it printed on stdout.
pub async fn cli(args: &[&str]) -> (u8, String) {
    use clap::Parser;
    let mut out = Vec::new();
    let code = medrelay::run(medrelay::Cli::parse_from(args), &mut out)
        .await
        .unwrap_or_else(|e| medrelay::exit_code_of(&e));
    (code, String::from_utf8(out).unwrap())
}

/// Runs `medrelay --config CONFIG ARGS...` in-process.
pub async fn cli_with_config(config: &str, args: &[&str]) -> (u8, String) {
    let mut full = vec!["medrelay", "--config", config];
    full.extend(args);
    cli(&full).await
}

/// Sends one MLLP frame and reads the answer frame; returns the ACK without its framing.
pub async fn mllp_exchange(stream: &mut tokio::net::TcpStream, message: &[u8]) -> String {
    let ack = medrelay_connector_hl7v2::mllp::exchange(stream, message)
        .await
        .expect("an ACK frame");
    String::from_utf8(ack).unwrap()
}

/// Starts the MLLP listeners of `loaded` (configure `listen = "127.0.0.1:0"`) for `service`.
pub async fn start_mllp(
    service: &medrelay_pipeline::service::Service,
    loaded: &Loaded,
    clock: std::sync::Arc<medrelay_pipeline::clock::ManualClock>,
) -> Vec<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    medrelay::hl7::start_listeners(
        service,
        loaded,
        clock,
        std::sync::Arc::new(tokio::sync::Notify::new()),
    )
    .await
    .unwrap()
}

/// An HL7 feed of its own system (`clinica-hl7`, writing back to `addr` over MLLP, no opt-in
/// required) imports the sample SIU file; the simulated patient of AG-30007 taps Confirm on the
/// 48 h reminder; the service runs until idle. Returns the store (still open) and its folder.
pub async fn hl7_tap_written_back_to(
    addr: &str,
) -> (medrelay_pipeline::store::Store, tempfile::TempDir) {
    hl7_tap_written_back_with(addr, "").await
}

/// [`hl7_tap_written_back_to`] with `extra` lines in `[connectors.write_back]` (e.g. `tls = ...`).
pub async fn hl7_tap_written_back_with(
    addr: &str,
    extra: &str,
) -> (medrelay_pipeline::store::Store, tempfile::TempDir) {
    use medrelay_pipeline::clock::{Clock, ManualClock};
    use medrelay_pipeline::whatsapp::simulator::PatientAction;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    demo_config(dir.path(), &[]);
    let path = dir.path().join("medrelay.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        // The HL7 feed as a system of its own, writing back over MLLP.
        .replace(
            "name = \"clinica-hl7\"\nsystem = \"clinica\"\n",
            "name = \"clinica-hl7\"\n",
        )
        .replace(
            "# [connectors.write_back]\n# send_to = \"ehr.example.org:2576\"",
            &format!("[connectors.write_back]\nsend_to = \"{addr}\"\n{extra}"),
        )
        // HL7 carries no opt-in; this site does not require one.
        .replace("opt_in_required = true", "opt_in_required = false");
    std::fs::write(&path, text).unwrap();
    let loaded = load(&path).unwrap();
    let clock = Arc::new(ManualClock::new("2026-12-06T13:30:00Z".parse().unwrap()));
    let store = medrelay::wiring::open_store(&loaded).await.unwrap();
    let service = medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.hl7_connector(None).unwrap().clone();
    let file = root().join("samples/hl7/clinica_siu.hl7");
    medrelay::hl7::import_file(&service, &loaded, &c, &file, clock.now())
        .await
        .unwrap();
    let sim = service.simulator.clone().unwrap();
    sim.script("+5511954321098", [PatientAction::Tap("confirm".into())]);
    // The booking confirmation now; the 48 h reminder (with the buttons) on 8 Dec 14:05 local.
    for at in ["2026-12-06T13:30:00Z", "2026-12-08T17:05:00Z"] {
        clock.set(at.parse().unwrap());
        for _ in 0..20 {
            if service.tick(50).await.unwrap().is_idle() {
                break;
            }
        }
    }
    (store, dir)
}

/// The sample site with its HL7 feed's MLLP listener on loopback: what the MLLP tests talk to.
pub struct MllpSite {
    pub store: medrelay_pipeline::store::Store,
    pub service: medrelay_pipeline::service::Service,
    pub clock: std::sync::Arc<medrelay_pipeline::clock::ManualClock>,
    pub listeners: Vec<(
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl MllpSite {
    /// The sample configuration in `dir` with `listen = "127.0.0.1:0"` and `extra` lines after
    /// it (e.g. a `tls = { ... }` table), at 2026-12-06 12:00 UTC, listening.
    pub async fn start(dir: &Path, extra: &str) -> MllpSite {
        demo_config(dir, &[]);
        let path = dir.join("medrelay.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "# listen = \"0.0.0.0:2575\"",
            &format!("listen = \"127.0.0.1:0\"\n{extra}"),
        );
        std::fs::write(&path, text).unwrap();
        let loaded = load(&path).unwrap();
        let clock = std::sync::Arc::new(medrelay_pipeline::clock::ManualClock::new(
            "2026-12-06T12:00:00Z".parse().unwrap(),
        ));
        let store = medrelay::wiring::open_store(&loaded).await.unwrap();
        let service =
            medrelay::wiring::build_service(&loaded, store.clone(), clock.clone()).unwrap();
        let listeners = start_mllp(&service, &loaded, clock.clone()).await;
        MllpSite {
            store,
            service,
            clock,
            listeners,
        }
    }

    /// The listener's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.listeners[0].0
    }

    /// Stops the listeners and closes the store.
    pub async fn stop(self) {
        for (_, h) in self.listeners {
            h.abort();
        }
        self.store.close().await;
    }
}

/// A log capture (every line of this test binary).
#[derive(Clone, Default)]
pub struct Buffer(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures every log line of this test binary at trace level, through the same filter as the
/// binary's subscriber (`medrelay::logging::filter`: `MEDRELAY_LOG=trace` for medrelay, third-party
/// crates capped), with the `log` crate's records (rlibphonenumber's) routed through it too.
pub fn captured_logs() -> &'static Buffer {
    static LOGS: std::sync::OnceLock<Buffer> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let buffer = Buffer::default();
        let writer = buffer.clone();
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone())
                    .with_filter(medrelay::logging::filter("trace")),
            )
            .init();
        buffer
    })
}

impl Buffer {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
