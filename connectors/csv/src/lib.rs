//! CSV connector for medrelay: profile-driven import of appointment exports, and the return file for
//! write-back.
//!
//! Hospitals without an interface engine can still export a report. Every EHR lays it out differently,
//! so the layout lives in a [`CsvProfile`] (TOML): delimiter, encoding, which header holds which
//! canonical field, date formats, the status vocabulary and opt-in values.
//!
//! - [`config`]: the profile and its validation.
//! - [`source`]: [`open`] streams a file as [`RowResult`]s, with flat memory whatever the file size.
//! - `map`: one row -> one canonical appointment (dates placed in the site's zone), or a status
//!   change for a row that is not booked and has no start.
//! - [`report`]: the `<file>.report.csv` listing bad rows and warnings by line, column and reason,
//!   then a summary per column and reason (naming the unknown values of code columns).
//! - [`slots`]: the "open slots" export (the free times offered to a patient who asks for another
//!   time), read with a [`slots::SlotProfile`].
//! - [`write_back`]: [`CsvReturnFile`], the write-back target that drops one CSV per batch.
//!
//! No error, reason or report produced here contains a cell value: they name the line, the column
//! header and what was expected. Cell values leave this crate only inside [`medrelay_mapping::Phi`]
//! wrappers or in [`BadRow::raw`], which is meant for quarantine storage only.

pub mod config;
mod map;
pub mod report;
pub mod slots;
pub mod source;
pub mod write_back;

pub use config::{ColumnMap, CsvProfile, DstGap, Encoding, NameOrder};
pub use report::{CodeValues, FileSummary, RowReport};
pub use source::{BadRow, CsvError, CsvRows, ImportOptions, RowResult, RowWarning, open};
pub use write_back::{CsvReturnFile, ReturnColumn, ReturnFileConfig};
