//! The traits adapters implement. The pipeline drives them; connectors implement them.

use jiff::Timestamp;

use crate::phi::Phi;
use crate::reply::ReplyAction;

/// One patient answer to be written back to the EHR.
#[derive(Clone, Debug)]
pub struct Confirmation {
    /// Our reply id: stable across retries, so a target can deduplicate.
    pub reply_id: i64,
    pub source: String,
    pub filler_id: String,
    pub placer_id: Option<String>,
    pub patient_id: Option<Phi<String>>,
    pub action: ReplyAction,
    pub replied_at: Timestamp,
    /// Appointment start, for targets that match on it.
    pub appointment_start: Timestamp,
    pub time_zone: String,
}

/// A batch of confirmations with a stable id: writing the same batch twice must produce the same
/// result once (a deterministic file name, a conditional update).
#[derive(Clone, Debug)]
pub struct WriteBackBatch {
    pub batch_id: i64,
    pub items: Vec<Confirmation>,
}

/// What a target reports after writing.
#[derive(Clone, Debug)]
pub struct WriteReceipt {
    /// Where it went (a file path, a URL): never PHI.
    pub location: String,
}

/// Why a write-back failed (no PHI in the text).
#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("write-back target unavailable: {0}")]
    Retryable(String),
    #[error("write-back rejected: {0}")]
    Permanent(String),
}

/// A write-back target: the CSV return file, a FHIR server, an HL7 interface.
pub trait WriteBack: Send + Sync {
    /// Writes one batch. Must be idempotent per `batch_id`.
    fn write_batch(&self, batch: &WriteBackBatch) -> Result<WriteReceipt, WriteBackError>;
}
