//! Helpers shared by the CSV connector's integration tests.

#![allow(dead_code)]

use std::path::Path;

use jiff::Timestamp;
use medrelay_connector_csv::{
    BadRow, CsvProfile, FileSummary, ImportOptions, RowResult, RowWarning, open,
};
use medrelay_mapping::{AppointmentEvent, StatusChange};

/// Import options for a test source in a given zone and phone region, as of a fixed instant.
pub fn options(source: &str, tz: &str, region: &str) -> ImportOptions {
    ImportOptions {
        source: source.into(),
        site: "demo-site".into(),
        site_time_zone: tz.into(),
        default_region: region.into(),
        as_of: "2026-11-30T12:00:00Z".parse().unwrap(),
    }
}

/// Everything one file yielded.
#[derive(Debug)]
pub struct Everything {
    pub events: Vec<AppointmentEvent>,
    pub statuses: Vec<StatusChange>,
    pub bad: Vec<BadRow>,
    pub warnings: Vec<RowWarning>,
    pub summary: FileSummary,
}

/// Reads a whole file, splitting events, status changes, bad rows and warnings, and checks that the
/// reader reached the end.
pub fn read_everything(path: &Path, profile: &CsvProfile, opts: ImportOptions) -> Everything {
    let mut rows = open(path, profile, opts).unwrap();
    let (mut events, mut statuses, mut bad, mut warnings) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = rows.next() {
        warnings.extend(rows.take_warnings());
        match r {
            RowResult::Event(e) => events.push(e),
            RowResult::Status(s) => statuses.push(s),
            RowResult::Bad(b) => bad.push(b),
        }
    }
    assert_eq!(rows.bytes_read(), rows.total_bytes());
    Everything {
        events,
        statuses,
        bad,
        warnings,
        summary: rows.summary(),
    }
}

/// Reads a whole file of appointments (no status changes), splitting good and bad rows.
pub fn read_all(
    path: &Path,
    profile: &CsvProfile,
    opts: ImportOptions,
) -> (Vec<AppointmentEvent>, Vec<BadRow>) {
    let all = read_everything(path, profile, opts);
    assert!(all.statuses.is_empty(), "{:?}", all.statuses);
    (all.events, all.bad)
}

/// An instant from RFC 3339.
pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
