//! Wiring of the HL7v2 connector: its options from the config, the sink that commits each MLLP
//! message before it is acknowledged, file imports, and the listeners `medrelay run` starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use jiff::Timestamp;
use medrelay_connector_hl7v2::mllp::{MessageSink, QuarantineGate};
use medrelay_connector_hl7v2::{Hl7Options, Outcome, Processed, file, process};
use medrelay_pipeline::clock::Clock;
use medrelay_pipeline::ingest::{
    ImportInfo, ImportMode, ImportSummary, Ingest, ItemSource, Rejected, SourceItem,
};
use medrelay_pipeline::service::Service;
use medrelay_pipeline::store::quarantine::{Admission, QuarantineQuota};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::info;

use crate::config::{Hl7ConnectorConfig, Loaded};

/// The connector's mapping options: its system and site, and the site's zone and phone region.
pub fn options(loaded: &Loaded, c: &Hl7ConnectorConfig) -> Hl7Options {
    let site = &loaded.compiled.sites[&c.site];
    let mut o = Hl7Options::new(
        c.system(),
        &site.name,
        &site.time_zone,
        &site.default_region,
    );
    if let Some(e) = medrelay_connector_hl7v2::charset::encoding_for(&c.fallback_charset) {
        o.fallback_charset = e;
    }
    o.publicity_opt_out = c.publicity_opt_out.clone();
    o.publicity_opt_in = c.publicity_opt_in.clone();
    if let Some(a) = &c.application {
        o.application = a.clone();
    }
    if let Some(f) = &c.facility {
        o.facility = f.clone();
    }
    // Validated at load (`validate_hl7`): unknown values cannot reach here.
    o.ordering = medrelay_connector_hl7v2::Ordering::parse(&c.ordering).unwrap_or_default();
    o.status_map = c
        .status_map
        .iter()
        .filter_map(|(local, status)| {
            medrelay_mapping::AppointmentStatus::from_code(status)
                .map(|s| (medrelay_connector_hl7v2::siu::status_key(local), s))
        })
        .collect();
    o.location_parts = c
        .location_parts
        .iter()
        .filter_map(|p| medrelay_connector_hl7v2::LocationPart::parse(p))
        .collect();
    o
}

/// The write-back target of an HL7v2 connector with `[connectors.write_back]`.
pub fn write_back_target(
    loaded: &Loaded,
    c: &Hl7ConnectorConfig,
    w: &crate::config::Hl7WriteBackSection,
    handle: tokio::runtime::Handle,
) -> anyhow::Result<medrelay_connector_hl7v2::write_back::Hl7WriteBack> {
    use medrelay_connector_hl7v2::write_back::{Hl7WriteBack, Hl7WriteBackConfig};
    let mut cfg = Hl7WriteBackConfig::new(&w.send_to);
    cfg.timeout = std::time::Duration::from_secs(w.timeout_secs);
    if let Some(a) = &c.application {
        cfg.application = a.clone();
    }
    cfg.facility = c.facility.clone().unwrap_or_default();
    cfg.receiving_application = w.receiving_application.clone();
    cfg.receiving_facility = w.receiving_facility.clone();
    cfg.version = w.version.clone();
    for (i, action) in ["confirm", "cancel", "reschedule", "not_notified"]
        .iter()
        .enumerate()
    {
        if let Some(code) = w.action_codes.get(*action) {
            cfg.action_codes[i] = code.clone();
        }
    }
    if let Some(t) = &w.tls {
        cfg.tls = Some(
            loaded
                .client_tls(t)
                .with_context(|| format!("connector `{}`: write_back.tls", c.name))?,
        );
    }
    Ok(Hl7WriteBack::new(cfg, handle))
}

/// A rejected message as the quarantine keeps it: where (file and message, or the MLLP control
/// id), which field, why, and the raw bytes.
fn quarantined(p: &Processed, location: String, raw: &[u8]) -> Option<Rejected> {
    let Outcome::Rejected(e) = &p.outcome else {
        return None;
    };
    Some(Rejected {
        location,
        column: e.location.as_ref().map(ToString::to_string),
        reason: e.to_string(),
        raw: raw.to_vec(),
        filler_id: None,
    })
}

/// Commits what the MLLP listener received through [`Ingest::accept`] (one transaction per
/// message, durable before it returns) and wakes the service loop to plan it.
pub struct IngestSink {
    pub ingest: Ingest,
    pub feed: String,
    pub clock: Arc<dyn Clock>,
    pub woken: Arc<Notify>,
}

#[async_trait::async_trait]
impl MessageSink for IngestSink {
    async fn store(&self, p: &Processed, raw: &[u8]) -> Result<(), String> {
        let now = self.clock.now();
        let control = p
            .header
            .as_ref()
            .map(|h| h.control_id.trim().to_string())
            .unwrap_or_default();
        let result = match &p.outcome {
            Outcome::Event(e) => {
                self.ingest
                    .accept_changes(None, &self.feed, now, std::slice::from_ref(e), &[], false)
                    .await
            }
            Outcome::Rejected(_) => {
                let r = quarantined(p, format!("mllp MSH-10 {control}"), raw)
                    .expect("a rejected outcome");
                self.ingest
                    .accept(None, &self.feed, now, &[], &[r], false)
                    .await
            }
            Outcome::Ignored(_) => return Ok(()),
        };
        result.map_err(|e| e.to_string())?;
        self.woken.notify_one();
        Ok(())
    }
}

/// Binds every HL7v2 connector's `listen` address and serves MLLP on it.
pub async fn start_listeners(
    service: &Service,
    loaded: &Loaded,
    clock: Arc<dyn Clock>,
    woken: Arc<Notify>,
) -> anyhow::Result<Vec<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)>> {
    let mut out = Vec::new();
    for (c, addr) in loaded.mllp_listeners() {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (connector `{}`)", c.name))?;
        let local = listener.local_addr()?;
        let tls = match &c.tls {
            Some(files) => Some(
                loaded
                    .server_tls(files)
                    .with_context(|| format!("connector `{}`: tls", c.name))?,
            ),
            None => None,
        };
        info!(connector = %c.name, address = %local, tls = tls.is_some(),
              mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()), "MLLP listener started");
        let sink = Arc::new(IngestSink {
            ingest: service.ingest.clone(),
            feed: c.name.clone(),
            clock: clock.clone(),
            woken: woken.clone(),
        });
        let now_clock = clock.clone();
        let mut listener_opts = c.listener_options();
        listener_opts.quarantine_gate = Some(QuotaGate::open(service, c, clock.clone()).await?);
        listener_opts.observer = Some(Arc::new(AckTimings(service.instruments.clone())));
        listener_opts.tls = tls;
        let handle = tokio::spawn(medrelay_connector_hl7v2::mllp::serve(
            listener,
            Arc::new(options(loaded, c)),
            listener_opts,
            sink,
            Arc::new(move || now_clock.now()),
        ));
        out.push((local, handle));
    }
    Ok(out)
}

/// The listener's ACKs into the service's `/metrics` histograms.
struct AckTimings(Arc<medrelay_pipeline::instruments::Instruments>);

impl medrelay_connector_hl7v2::mllp::AckObserver for AckTimings {
    fn acked(&self, feed: &str, code: &str, elapsed: std::time::Duration) {
        self.0.mllp_answered(feed, code, elapsed);
    }
}

/// The feed's quarantine quota, asked by the listener before a rejected message's raw bytes go
/// to quarantine (per source address and for the feed; see `store::quarantine`).
struct QuotaGate {
    quota: Arc<QuarantineQuota>,
    clock: Arc<dyn Clock>,
}

impl QuotaGate {
    async fn open(
        service: &Service,
        c: &Hl7ConnectorConfig,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Arc<dyn QuarantineGate>> {
        let quota = QuarantineQuota::open(
            service.store.clone(),
            &c.name,
            c.quarantine_limits(),
            clock.now(),
        )
        .await
        .context("cannot read the quarantine of the feed for its quota")?;
        let quota = Arc::new(quota);
        // Ends by itself once the listener (the last owner of the quota) is gone.
        quota.spawn_flusher(std::time::Duration::from_secs(1));
        Ok(Arc::new(QuotaGate { quota, clock }))
    }
}

#[async_trait::async_trait]
impl QuarantineGate for QuotaGate {
    async fn admit(&self, source: std::net::IpAddr, bytes: usize) -> bool {
        match self
            .quota
            .admit(&source.to_string(), bytes as u64, self.clock.now())
            .await
        {
            Ok(a) => a == Admission::Keep,
            // The store is failing: let the sink try, so that the answer says so (AR 207).
            Err(e) => {
                tracing::warn!(error = %e, "quarantine quota not checked");
                true
            }
        }
    }
}

/// One message of a file that could not be accepted, for the command's report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FileRejection {
    pub message: usize,
    pub line: usize,
    pub control_id: String,
    pub ack_code: &'static str,
    pub error: String,
}

/// The result of importing one HL7 file.
#[derive(Clone, Debug)]
pub struct Hl7ImportResult {
    pub file: PathBuf,
    pub summary: ImportSummary,
    pub ignored: u64,
    pub rejected: Vec<FileRejection>,
}

/// The messages of one file as pipeline items; rejections are also collected for the report.
struct FileItems {
    messages: std::vec::IntoIter<(usize, file::FileMessage)>,
    opts: Hl7Options,
    file_name: String,
    /// When the file arrived: the version of its messages in arrival ordering.
    arrived: Timestamp,
    position: u64,
    rejected: Arc<std::sync::Mutex<Vec<FileRejection>>>,
    ignored: Arc<std::sync::atomic::AtomicU64>,
}

impl ItemSource for FileItems {
    fn next_item(&mut self) -> Option<SourceItem> {
        loop {
            let (n, m) = self.messages.next()?;
            self.position += m.bytes.len() as u64;
            // The file's order is the arrival order; a re-import is a repeat (same MSH-10, same
            // content), whenever it comes.
            let raw_ref = format!("{} message {n}", self.file_name);
            let arrival = medrelay_connector_hl7v2::Arrival::new(self.arrived, n as i64);
            let p = process(&m.bytes, &self.opts, arrival, &raw_ref);
            match p.outcome {
                Outcome::Event(e) => return Some(SourceItem::from(e)),
                Outcome::Ignored(_) => {
                    self.ignored
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Outcome::Rejected(ref e) => {
                    let control_id = p
                        .header
                        .as_ref()
                        .map(|h| h.control_id.trim().to_string())
                        .unwrap_or_default();
                    self.rejected.lock().expect("lock").push(FileRejection {
                        message: n,
                        line: m.line,
                        control_id,
                        ack_code: e.ack.as_str(),
                        error: e.to_string(),
                    });
                    let location = format!("{}:{} (message {n})", self.file_name, m.line);
                    return quarantined(&p, location, &m.bytes).map(SourceItem::Rejected);
                }
            }
        }
    }

    fn position(&self) -> u64 {
        self.position
    }
}

/// Imports one file of HL7 messages through a connector (each message in order; bad ones are
/// quarantined and reported, good ones keep flowing).
pub async fn import_file(
    service: &Service,
    loaded: &Loaded,
    c: &Hl7ConnectorConfig,
    path: &Path,
    now: Timestamp,
) -> anyhow::Result<Hl7ImportResult> {
    let content = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_name = crate::wiring::input_name(path);
    let rejected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ignored = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let messages: Vec<(usize, file::FileMessage)> = file::split(&content)
        .into_iter()
        .enumerate()
        .map(|(i, m)| (i + 1, m))
        .collect();
    let info = ImportInfo {
        source: c.name.clone(),
        input_name: file_name.clone(),
        input_sha256: Some(crate::wiring::sha256_hex(&content)),
        mode: ImportMode::Message,
        as_of: now,
    };
    let summary = service
        .ingest
        .import_stream(
            info,
            FileItems {
                messages: messages.into_iter(),
                opts: options(loaded, c),
                file_name,
                arrived: now,
                position: 0,
                rejected: rejected.clone(),
                ignored: ignored.clone(),
            },
            1_000,
            None,
            |_| {},
        )
        .await
        .context("import failed; nothing after the last committed batch was imported")?;
    let rejected = std::mem::take(&mut *rejected.lock().expect("lock"));
    Ok(Hl7ImportResult {
        file: path.to_path_buf(),
        summary,
        ignored: ignored.load(std::sync::atomic::Ordering::Relaxed),
        rejected,
    })
}
