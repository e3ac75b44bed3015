//! Helpers shared by the CSV connector's integration tests.

#![allow(dead_code)]

use std::path::Path;

use jiff::Timestamp;
use medrelay_connector_csv::{BadRow, CsvProfile, ImportOptions, RowResult, open};
use medrelay_mapping::AppointmentEvent;

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

/// Reads a whole file, splitting good and bad rows, and checks that the reader reached the end.
pub fn read_all(
    path: &Path,
    profile: &CsvProfile,
    opts: ImportOptions,
) -> (Vec<AppointmentEvent>, Vec<BadRow>) {
    let mut rows = open(path, profile, opts).unwrap();
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for r in rows.by_ref() {
        match r {
            RowResult::Event(e) => ok.push(e),
            RowResult::Bad(b) => bad.push(b),
        }
    }
    assert_eq!(rows.bytes_read(), rows.total_bytes());
    (ok, bad)
}

/// An instant from RFC 3339.
pub fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}
