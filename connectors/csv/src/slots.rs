//! The "open slots" export (issue 14): the free times of an EHR's schedule, one row each, read with
//! a profile like the appointment exports. Snapshot semantics: a file lists every open slot of its
//! source; what it no longer lists is taken or gone (the store applies that).
//!
//! Like the appointment reader, no error names a cell value: a bad row is reported by line, column
//! and what was expected, and the good rows still count.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use jiff::SignedDuration;
use jiff::tz::TimeZone;
use medrelay_mapping::Phi;
use medrelay_mapping::slots::OpenSlot;
use serde::Deserialize;

use crate::config::parse_instant;

/// Which header holds which field of an open slot.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotColumns {
    pub slot_id: String,
    pub start: String,
    /// The slot's end; or its length in minutes in `duration_minutes`.
    #[serde(default)]
    pub end: Option<String>,
    #[serde(default)]
    pub duration_minutes: Option<String>,
    /// The site name (as in `[sites]`); absent: every slot is the connector's site.
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub practitioner: Option<String>,
    #[serde(default)]
    pub service_type: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

/// How an open-slots export is laid out.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SlotProfile {
    #[serde(default = "comma")]
    pub delimiter: char,
    pub columns: SlotColumns,
    /// `jiff` strptime format of `start` and `end` (civil times in the site's zone).
    #[serde(default = "default_datetime_format")]
    pub datetime_format: String,
}

fn comma() -> char {
    ','
}
fn default_datetime_format() -> String {
    "%Y-%m-%d %H:%M".into()
}

impl SlotProfile {
    /// What is wrong with the profile (every problem, not only the first).
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if !self.delimiter.is_ascii() {
            errors.push("delimiter must be an ASCII character".into());
        }
        if self.columns.end.is_some() == self.columns.duration_minutes.is_some() {
            errors.push("columns: exactly one of `end` and `duration_minutes`".into());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// A row that could not be read: where and why, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSlotRow {
    /// 1-based line of the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// What a file gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotFile {
    pub slots: Vec<OpenSlot>,
    pub bad: Vec<BadSlotRow>,
}

/// Why the file as a whole could not be read (then no snapshot may be applied).
#[derive(Debug, thiserror::Error)]
pub enum SlotFileError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("the header lacks the profile's column `{0}`")]
    MissingColumn(String),
    #[error("the file is not CSV as the profile describes it (line {0})")]
    Malformed(u64),
}

/// Reads the open slots of `source` from `path`: times placed in `zone`, slots without a site
/// column at `default_site`.
pub fn read_slots(
    path: &Path,
    profile: &SlotProfile,
    source: &str,
    default_site: &str,
    zone: &TimeZone,
) -> Result<SlotFile, SlotFileError> {
    let bytes = std::fs::read(path)?;
    read_slots_from(&bytes, profile, source, default_site, zone)
}

/// [`read_slots`] from bytes.
pub fn read_slots_from(
    bytes: &[u8],
    profile: &SlotProfile,
    source: &str,
    default_site: &str,
    zone: &TimeZone,
) -> Result<SlotFile, SlotFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(profile.delimiter as u8)
        .flexible(true)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|_| SlotFileError::Malformed(1))?
        .clone();
    let index: BTreeMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim().to_string(), i))
        .collect();
    let c = &profile.columns;
    let named = [
        Some(&c.slot_id),
        Some(&c.start),
        c.end.as_ref(),
        c.duration_minutes.as_ref(),
        c.site.as_ref(),
        c.practitioner.as_ref(),
        c.service_type.as_ref(),
        c.location.as_ref(),
    ];
    for name in named.into_iter().flatten() {
        if !index.contains_key(name.trim()) {
            return Err(SlotFileError::MissingColumn(name.clone()));
        }
    }
    let col = |name: &Option<String>| name.as_ref().map(|n| index[n.trim()]);
    let (id_col, start_col) = (index[c.slot_id.trim()], index[c.start.trim()]);
    let (end_col, minutes_col) = (col(&c.end), col(&c.duration_minutes));
    let (site_col, practitioner_col, service_col, location_col) = (
        col(&c.site),
        col(&c.practitioner),
        col(&c.service_type),
        col(&c.location),
    );
    let mut out = SlotFile::default();
    let mut seen = HashSet::new();
    for (n, record) in reader.records().enumerate() {
        let line = n as u64 + 2;
        let record = record.map_err(|_| SlotFileError::Malformed(line))?;
        let cell = |i: Option<usize>| {
            i.and_then(|i| record.get(i))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let bad = |reason: String| BadSlotRow { line, reason };
        let Some(slot_id) = cell(Some(id_col)) else {
            out.bad.push(bad(format!("`{}` is empty", c.slot_id)));
            continue;
        };
        if !seen.insert(slot_id.to_owned()) {
            out.bad
                .push(bad(format!("`{}` repeats an earlier row's", c.slot_id)));
            continue;
        }
        let Some(start) =
            cell(Some(start_col)).and_then(|v| parse_instant(&profile.datetime_format, v, zone))
        else {
            out.bad.push(bad(format!(
                "`{}` is not a time in the format `{}`",
                c.start, profile.datetime_format
            )));
            continue;
        };
        let end = match (end_col, minutes_col) {
            (Some(e), _) => {
                cell(Some(e)).and_then(|v| parse_instant(&profile.datetime_format, v, zone))
            }
            (None, Some(m)) => cell(Some(m))
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|m| (1..=24 * 60).contains(m))
                .map(|m| start + SignedDuration::from_mins(m)),
            (None, None) => None,
        };
        let Some(end) = end.filter(|e| *e > start) else {
            out.bad.push(bad(format!(
                "`{}` is not a time after the start (or a length of 1 to 1440 minutes)",
                c.end
                    .as_ref()
                    .or(c.duration_minutes.as_ref())
                    .map_or("end", |v| v)
            )));
            continue;
        };
        out.slots.push(OpenSlot {
            source: source.to_owned(),
            slot_id: slot_id.to_owned(),
            site: cell(site_col).unwrap_or(default_site).to_owned(),
            practitioner: cell(practitioner_col).map(str::to_owned),
            service_type: cell(service_col).map(|v| Phi::new(v.to_owned())),
            location: cell(location_col).map(str::to_owned),
            start,
            end,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> SlotProfile {
        toml::from_str(
            r#"
            datetime_format = "%m/%d/%Y %I:%M %p"
            [columns]
            slot_id = "Slot ID"
            start = "Start"
            duration_minutes = "Minutes"
            practitioner = "Provider"
            service_type = "Visit Type"
            location = "Room"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn the_sample_export_reads_into_open_slots_and_bad_rows_name_line_and_column_only() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/csv/openemr_open_slots.csv");
        let zone = TimeZone::get("America/New_York").unwrap();
        let p = profile();
        p.validate().unwrap();
        let file = read_slots(&path, &p, "openemr", "newyork", &zone).unwrap();
        assert_eq!(file.slots.len(), 4, "{:?}", file.bad);
        let first = &file.slots[0];
        assert_eq!(first.slot_id, "SL-9001");
        assert_eq!(first.site, "newyork");
        // 12/03/2026 09:00 AM in New York (EST) is 14:00Z; 20 minutes long.
        assert_eq!(first.start, "2026-12-03T14:00:00Z".parse().unwrap());
        assert_eq!(first.end, first.start + SignedDuration::from_mins(20));
        assert_eq!(first.practitioner.as_deref(), Some("Placeholder, Jane"));
        let lines: Vec<u64> = file.bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [6, 7, 8]);
        let reasons: String = file.bad.iter().map(|b| b.reason.clone()).collect();
        assert!(reasons.contains("`Start` is not a time"), "{reasons}");
        assert!(reasons.contains("`Minutes`"), "{reasons}");
        assert!(reasons.contains("repeats"), "{reasons}");
        assert!(!reasons.contains("13/45"), "no cell value in a reason");
    }

    #[test]
    fn a_header_without_a_profile_column_is_refused_whole() {
        let zone = TimeZone::UTC;
        let err = read_slots_from(
            b"Slot ID,Start\nS1,12/03/2026 09:00 AM\n",
            &profile(),
            "x",
            "s",
            &zone,
        )
        .unwrap_err();
        assert!(
            matches!(err, SlotFileError::MissingColumn(ref c) if c == "Minutes"),
            "{err}"
        );
        let mut both = profile();
        both.columns.end = Some("End".into());
        assert!(both.validate().is_err());
    }
}
