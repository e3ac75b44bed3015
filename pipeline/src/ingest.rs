//! The ingest handle: the one door through which connectors hand events to the pipeline.
//!
//! [`Ingest::accept`] returns only after its batch is committed. That is the signal an MLLP listener
//! may ACK on, a webhook may answer 2xx on, and a CSV import may report a row as imported on.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::AppointmentEvent;
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::model::{Change, StatusChange};

use crate::clock::Clock;
use crate::keys::Keys;
use crate::store::ingest::AppointmentRow;
use crate::store::{Store, StoreResult};

/// How an input relates to what came before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// Rows are changes; absent appointments are untouched.
    Delta,
    /// A full export of a feed: future appointments absent from it are cancelled.
    Snapshot,
    /// Individual messages (HL7, FHIR notifications).
    Message,
}

impl ImportMode {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delta => "delta",
            Self::Snapshot => "snapshot",
            Self::Message => "message",
        }
    }
}

/// What an import is (no PHI: file names and hashes only).
#[derive(Clone, Debug)]
pub struct ImportInfo {
    pub source: String,
    pub input_name: String,
    pub input_sha256: Option<String>,
    pub mode: ImportMode,
    /// The moment the input describes (snapshot time, file time).
    pub as_of: Timestamp,
}

/// Input that could not be accepted, kept whole in quarantine.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// File and line, message id: never PHI.
    pub location: String,
    pub column: Option<String>,
    /// Why, without any cell value.
    pub reason: String,
    /// The raw bytes (PHI; stored in quarantine only).
    pub raw: Vec<u8>,
    /// The appointment id, when it was readable (a snapshot then still knows it exists).
    pub filler_id: Option<String>,
}

/// One item from a source.
#[derive(Clone, Debug)]
pub enum SourceItem {
    Event(Box<AppointmentEvent>),
    /// A status change that names the appointment only (a cancel without timing).
    Status(StatusChange),
    Rejected(Rejected),
}

impl From<Change> for SourceItem {
    fn from(c: Change) -> Self {
        match c {
            Change::Appointment(e) => SourceItem::Event(e),
            Change::Status(s) => SourceItem::Status(s),
        }
    }
}

/// What a committed batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AcceptReceipt {
    /// Rows that created or updated an appointment (newer than what was stored).
    pub applied: u64,
    /// Rows that said what was already stored (re-imports, repeats of a message).
    pub unchanged: u64,
    /// Rows that differed from the stored appointment but were older than its version, so they
    /// were ignored (recorded in `ignored_events`, shown by `status` and `explain`; an ignored
    /// cancellation of a booked appointment raises an alert). Never counted as unchanged.
    pub older_ignored: u64,
    /// Status changes for an appointment that is not stored (nothing to change; recorded).
    pub unknown_ignored: u64,
    pub quarantined: u64,
}

/// The end of an import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    pub import_id: i64,
    pub rows_ok: u64,
    pub rows_bad: u64,
    pub applied: u64,
    pub unchanged: u64,
    /// See [`AcceptReceipt::older_ignored`].
    pub older_ignored: u64,
    /// See [`AcceptReceipt::unknown_ignored`].
    pub unknown_ignored: u64,
    pub swept: u64,
    /// Why a snapshot sweep was skipped, if it was.
    pub sweep_note: Option<String>,
}

/// A streaming source of items for [`Ingest::import_stream`]; `position` feeds progress (bytes read).
pub trait ItemSource: Send + 'static {
    /// The next item, or `None` at the end.
    fn next_item(&mut self) -> Option<SourceItem>;
    /// Progress so far, in the source's unit (bytes for files).
    fn position(&self) -> u64;
}

/// Progress after each committed batch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub rows: u64,
    pub bad: u64,
    pub position: u64,
}

/// The ingest handle. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    clock: Arc<dyn Clock>,
}

fn push_field(buf: &mut Vec<u8>, field: Option<&str>) {
    if let Some(f) = field {
        buf.extend_from_slice(f.as_bytes());
    }
    buf.push(0x1f);
}

/// Flattens an event into its stored columns, with its keyed hashes. A free function so that bulk
/// imports run it on the reader thread, overlapping the database work.
// PHI: flattening the appointment into its (PHI) columns is the reason the store exists.
#[allow(clippy::disallowed_methods)]
fn build_row(keys: &Keys, e: &AppointmentEvent) -> AppointmentRow {
    let a = &e.appointment;
    let p = &a.patient;
    let phone = p.best_phone().map(|n| n.expose().clone());
    let contact_hash = phone.as_deref().map(|n| keys.contact_hash(n));
    let ehr_consent = a.ehr_consent.map(|c| match c {
        EhrConsent::OptIn => "opt_in",
        EhrConsent::OptOut => "opt_out",
    });
    let start_at = a.start.as_second();
    let end_at = a.end.map(|t| t.as_second());
    let mut buf = Vec::with_capacity(256);
    let start_s = start_at.to_string();
    let end_s = end_at.map(|e| e.to_string());
    for f in [
        a.placer_id.as_deref(),
        Some(a.status.as_str()),
        Some(start_s.as_str()),
        end_s.as_deref(),
        Some(a.site.as_str()),
        Some(a.time_zone.as_str()),
        a.location.as_deref(),
        a.practitioner.as_deref(),
        a.service_type.as_ref().map(|s| s.expose().as_str()),
        a.reason.as_ref().map(|s| s.expose().as_str()),
        p.id.as_ref().map(|s| s.expose().as_str()),
        p.given_name.as_ref().map(|s| s.expose().as_str()),
        p.family_name.as_ref().map(|s| s.expose().as_str()),
        phone.as_deref(),
        p.preferred_language.as_deref(),
        ehr_consent,
        Some(match p.protected {
            Some(true) => "protected",
            Some(false) => "",
            None => "?",
        }),
    ] {
        push_field(&mut buf, f);
    }
    // Only day-only appointments hash the flag: the hashes of every other appointment stay what
    // they were, so an upgrade re-plans nothing.
    if a.time_unknown {
        push_field(&mut buf, Some("time-unknown"));
    }
    AppointmentRow {
        source: a.key.source.clone(),
        filler_id: a.key.id.clone(),
        placer_id: a.placer_id.clone(),
        sv_at_us: e.version.at.as_microsecond(),
        sv_seq: e.version.seq,
        status: a.status.as_str(),
        start_at,
        end_at,
        site: a.site.clone(),
        time_zone: a.time_zone.clone(),
        location: a.location.clone(),
        practitioner: a.practitioner.clone(),
        service_type: a.service_type.as_ref().map(|s| s.expose().clone()),
        reason: a.reason.as_ref().map(|s| s.expose().clone()),
        patient_ref: p.id.as_ref().map(|s| s.expose().clone()),
        given_name: p.given_name.as_ref().map(|s| s.expose().clone()),
        family_name: p.family_name.as_ref().map(|s| s.expose().clone()),
        phone_e164: phone,
        phone_problem: p.phone_problem(),
        contact_hash,
        language: p.preferred_language.clone(),
        protected: p.protected,
        ehr_consent,
        content_hash: keys.content_hash(&buf),
        raw_ref: e.raw_ref.clone(),
        message_id: e.message_id.clone(),
        status_only: false,
        time_unknown: a.time_unknown,
    }
}

/// The row of a status change: only the key, placer id, version and status mean anything; the
/// store updates nothing else (`status_only`). Its content hash covers the status alone, so a
/// repeat is recognised and a later full description is always a change.
fn build_status_row(keys: &Keys, s: &StatusChange) -> AppointmentRow {
    let mut buf = Vec::with_capacity(32);
    push_field(&mut buf, Some("status-only"));
    push_field(&mut buf, Some(s.status.as_str()));
    AppointmentRow {
        source: s.key.source.clone(),
        filler_id: s.key.id.clone(),
        placer_id: s.placer_id.clone(),
        sv_at_us: s.version.at.as_microsecond(),
        sv_seq: s.version.seq,
        status: s.status.as_str(),
        start_at: 0,
        end_at: None,
        site: String::new(),
        time_zone: String::new(),
        location: None,
        practitioner: None,
        service_type: None,
        reason: None,
        patient_ref: None,
        given_name: None,
        family_name: None,
        phone_e164: None,
        phone_problem: None,
        contact_hash: None,
        language: None,
        protected: None,
        ehr_consent: None,
        content_hash: keys.content_hash(&buf),
        raw_ref: s.raw_ref.clone(),
        message_id: s.message_id.clone(),
        status_only: true,
        time_unknown: false,
    }
}

/// The row of any change.
fn build_change_row(keys: &Keys, c: &Change) -> AppointmentRow {
    match c {
        Change::Appointment(e) => build_row(keys, e),
        Change::Status(s) => build_status_row(keys, s),
    }
}

impl Ingest {
    /// A handle writing to `store`, stamping with `clock`.
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Ingest { store, clock }
    }

    /// Records the start of an import.
    pub async fn begin_import(&self, info: &ImportInfo) -> StoreResult<i64> {
        self.store.begin_import(info, self.clock.now()).await
    }

    /// Commits events and rejections durably, then returns. Events older than the stored version of
    /// their appointment are recorded but change nothing.
    pub async fn accept(
        &self,
        import_id: Option<i64>,
        source: &str,
        as_of: Timestamp,
        events: &[AppointmentEvent],
        rejected: &[Rejected],
        touch_seen: bool,
    ) -> StoreResult<AcceptReceipt> {
        let keys = self.store.keys();
        let rows: Vec<AppointmentRow> = events.iter().map(|e| build_row(keys, e)).collect();
        self.accept_rows(import_id, source, as_of, rows, rejected, touch_seen)
            .await
    }

    /// As [`Ingest::accept`], for changes that may be status changes alone (a FHIR Bundle, an
    /// HL7 message), applied in their order within one transaction.
    pub async fn accept_changes(
        &self,
        import_id: Option<i64>,
        source: &str,
        as_of: Timestamp,
        changes: &[Change],
        rejected: &[Rejected],
        touch_seen: bool,
    ) -> StoreResult<AcceptReceipt> {
        let keys = self.store.keys();
        let rows: Vec<AppointmentRow> = changes.iter().map(|c| build_change_row(keys, c)).collect();
        self.accept_rows(import_id, source, as_of, rows, rejected, touch_seen)
            .await
    }

    async fn accept_rows(
        &self,
        import_id: Option<i64>,
        source: &str,
        as_of: Timestamp,
        rows: Vec<AppointmentRow>,
        rejected: &[Rejected],
        touch_seen: bool,
    ) -> StoreResult<AcceptReceipt> {
        self.store
            .accept_rows(
                import_id,
                source,
                as_of,
                &rows,
                rejected,
                touch_seen,
                self.clock.now(),
            )
            .await
    }

    /// Streams a whole input through [`Ingest::accept`] in batches, with flat memory: the source is
    /// read on a blocking thread and at most two batches are in flight. For a snapshot, future
    /// appointments absent from it are cancelled at the end, unless a bad row's appointment id was
    /// unreadable (then nobody can say which appointment is really absent, and the sweep is skipped
    /// with a note).
    pub async fn import_stream<S: ItemSource>(
        &self,
        info: ImportInfo,
        mut source: S,
        batch_size: usize,
        snapshot_horizon: Option<SignedDuration>,
        mut progress: impl FnMut(Progress),
    ) -> StoreResult<ImportSummary> {
        let import_id = self.begin_import(&info).await?;
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(Vec<AppointmentRow>, Vec<Rejected>, u64)>(2);
        let keys = self.store.keys().clone();
        let reader = tokio::task::spawn_blocking(move || {
            let mut rows = Vec::with_capacity(batch_size);
            let mut rejected = Vec::new();
            while let Some(item) = source.next_item() {
                match item {
                    SourceItem::Event(e) => rows.push(build_row(&keys, &e)),
                    SourceItem::Status(s) => rows.push(build_status_row(&keys, &s)),
                    SourceItem::Rejected(r) => rejected.push(r),
                }
                if rows.len() + rejected.len() >= batch_size {
                    let batch = (
                        std::mem::replace(&mut rows, Vec::with_capacity(batch_size)),
                        std::mem::take(&mut rejected),
                        source.position(),
                    );
                    if tx.blocking_send(batch).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.blocking_send((rows, rejected, source.position()));
        });
        let snapshot = info.mode == ImportMode::Snapshot;
        let mut summary = ImportSummary {
            import_id,
            ..ImportSummary::default()
        };
        let mut unreadable_ids = 0u64;
        while let Some((rows, rejected, position)) = rx.recv().await {
            unreadable_ids += rejected.iter().filter(|r| r.filler_id.is_none()).count() as u64;
            let receipt = self
                .store
                .accept_rows(
                    Some(import_id),
                    &info.source,
                    info.as_of,
                    &rows,
                    &rejected,
                    snapshot,
                    self.clock.now(),
                )
                .await?;
            summary.rows_ok += rows.len() as u64;
            summary.rows_bad += rejected.len() as u64;
            summary.applied += receipt.applied;
            summary.unchanged += receipt.unchanged;
            summary.older_ignored += receipt.older_ignored;
            summary.unknown_ignored += receipt.unknown_ignored;
            progress(Progress {
                rows: summary.rows_ok,
                bad: summary.rows_bad,
                position,
            });
        }
        reader.await.map_err(|e| {
            crate::store::StoreError::Inconsistent(format!("reader task failed: {e}"))
        })?;
        if snapshot {
            if unreadable_ids > 0 {
                summary.sweep_note = Some(format!(
                    "absent appointments were not cancelled: {unreadable_ids} bad row(s) had no readable appointment id"
                ));
            } else {
                summary.swept = self
                    .store
                    .sweep_snapshot(
                        import_id,
                        &info.source,
                        info.as_of,
                        snapshot_horizon.map(|h| info.as_of + h),
                        self.clock.now(),
                    )
                    .await?;
            }
        }
        self.store
            .finish_import(import_id, &summary, self.clock.now())
            .await?;
        Ok(summary)
    }
}
