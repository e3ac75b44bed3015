//! The CSV profile: how one EHR's export maps onto the canonical appointment.
//!
//! Every export differs (delimiter, encoding, header names, date formats, status vocabulary), so the
//! layout is configuration, loaded from TOML by the cli and checked once by [`CsvProfile::validate`]
//! before any file is read. Nothing here ever holds a cell value.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::fmt::strtime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use medrelay_mapping::AppointmentStatus;
use serde::Deserialize;

/// How one EHR export is laid out: delimiter, encoding, which header holds which field, and how to
/// read dates, statuses and opt-in flags.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvProfile {
    /// Field separator (`,` in most locales, `;` in European ones). Must be ASCII.
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Quote character. Must be ASCII.
    #[serde(default = "default_quote")]
    pub quote: char,
    /// Character encoding of the file: hospital exports are often Windows-1252.
    #[serde(default)]
    pub encoding: Encoding,
    /// Canonical field -> header text.
    pub columns: ColumnMap,
    /// `jiff` strptime format of date-only columns (`start_date`, `end_date`). The format language
    /// is described with examples in `samples/README.md`.
    #[serde(default = "default_date_format")]
    pub date_format: String,
    /// `jiff` strptime format of time-only columns (`start_time`, `end_time`).
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// `jiff` strptime format of single datetime columns (`start`, `end`).
    #[serde(default = "default_datetime_format")]
    pub datetime_format: String,
    /// Format of the `updated_at` column; when unset, RFC 3339 is tried, then `datetime_format`.
    #[serde(default)]
    pub updated_at_format: Option<String>,
    /// IANA zone the export's civil times are in; when unset, the site's zone is used.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// A start time (`HH:MM`) that the export writes when it knows only the day, e.g. `"00:00"`
    /// for a timestamp whose time part is a placeholder midnight. A start at this local time is
    /// an appointment on that day at an unknown time: it gets day-level reminders and no message
    /// shows the made-up time. (A `start_date` column without `start_time` is always day-only.)
    #[serde(default)]
    pub time_unknown_at: Option<String>,
    /// What to do with a local time that does not exist because the clocks jumped forward at a
    /// daylight-saving change (02:30 on a spring-forward night): `warn` (default) reads it as the
    /// same time after the jump (03:30) and lists a warning in the row report; `reject` makes the
    /// row bad, so the export is fixed instead.
    #[serde(default)]
    pub dst_gap: DstGap,
    /// Source status value (trimmed, case-insensitive) -> FHIR status code. An unmapped non-empty
    /// value is a bad row, so a new status in the EHR is noticed instead of guessed.
    #[serde(default)]
    pub status_map: BTreeMap<String, String>,
    /// FHIR status used when there is no status column or the cell is empty.
    #[serde(default = "default_status")]
    pub default_status: String,
    /// Opt-in cell values meaning "yes" (case-insensitive).
    #[serde(default = "default_opt_in_yes")]
    pub opt_in_yes: Vec<String>,
    /// Opt-in cell values meaning "no" (case-insensitive). Any other value is no signal.
    #[serde(default = "default_opt_in_no")]
    pub opt_in_no: Vec<String>,
    /// Protection-indicator values that protect the patient (HL7 PD1-12 `Y`, case-insensitive): a
    /// protected patient is never messaged, whatever else says yes.
    #[serde(default = "default_protection_yes")]
    pub protection_yes: Vec<String>,
    /// Protection-indicator values that do not (HL7 `N`). Any other non-empty value is a bad row:
    /// a privacy flag is never guessed.
    #[serde(default = "default_protection_no")]
    pub protection_no: Vec<String>,
    /// Publicity-code values meaning "no publicity" (HL7 PD1-11, user table 0215 `N`): recorded as an
    /// EHR opt-out (a WhatsApp message is a disclosure: lock screens show previews). It beats the
    /// opt-in column of the same row; a later staff grant or patient START can lift it.
    #[serde(default = "default_publicity_opt_out")]
    pub publicity_opt_out: Vec<String>,
}

/// The character encodings exports come in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    /// UTF-8; a leading byte order mark is stripped. Invalid bytes make the row bad.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// Windows-1252 (what Excel on Windows writes in Western locales).
    #[serde(rename = "windows-1252")]
    Windows1252,
    /// ISO-8859-1: every byte is the code point of the same value.
    #[serde(rename = "latin-1")]
    Latin1,
}

/// What to do with a civil time inside a daylight-saving gap (see [`CsvProfile::dst_gap`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DstGap {
    /// Read it as the time after the jump (jiff's compatible disambiguation) and warn in the report.
    #[default]
    Warn,
    /// The row is bad.
    Reject,
}

impl Encoding {
    /// The name as written in a profile.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Windows1252 => "windows-1252",
            Encoding::Latin1 => "latin-1",
        }
    }
}

/// How a single full-name column is split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameOrder {
    /// `Family, Given` (split at the first comma; no comma means the whole text is the given name).
    #[default]
    FamilyCommaGiven,
    /// `Given Family` (the first word is the given name, the rest the family name).
    GivenFamily,
}

/// Canonical field -> header name (exact header text after decoding and trimming).
///
/// Only `filler_id` and a start (`start`, `start_date` + `start_time`, or `start_date` alone for
/// exports that carry the day only) are required. A row whose status is not `booked` may leave
/// the start empty: it is a status change (a cancellation needs only the appointment's id).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnMap {
    /// The appointment id assigned by the scheduling system: the key of every event.
    pub filler_id: String,
    /// The placer's (order) id, kept as an alias.
    #[serde(default)]
    pub placer_id: Option<String>,
    /// Status column, read through `status_map`.
    #[serde(default)]
    pub status: Option<String>,
    /// A single start datetime column (`datetime_format`).
    #[serde(default)]
    pub start: Option<String>,
    /// Start date column (`date_format`), with `start_time`; alone, the appointments have a day
    /// and no time (day-level reminders, no time in messages).
    #[serde(default)]
    pub start_date: Option<String>,
    /// Start time column (`time_format`), with `start_date`.
    #[serde(default)]
    pub start_time: Option<String>,
    /// A single end datetime column.
    #[serde(default)]
    pub end: Option<String>,
    /// End date column; needs `end_time`.
    #[serde(default)]
    pub end_date: Option<String>,
    /// End time column; alone, it is on the start's date.
    #[serde(default)]
    pub end_time: Option<String>,
    /// Duration in whole minutes, when the export gives no end.
    #[serde(default)]
    pub duration_minutes: Option<String>,
    /// The patient's identifier (MRN), for write-back matching.
    #[serde(default)]
    pub patient_id: Option<String>,
    /// Given (first) name column.
    #[serde(default)]
    pub given_name: Option<String>,
    /// Family (last) name column.
    #[serde(default)]
    pub family_name: Option<String>,
    /// One column holding the whole name, split per `full_name_order`; fills whichever of given and
    /// family name is still empty.
    #[serde(default)]
    pub full_name: Option<String>,
    /// How `full_name` is written.
    #[serde(default)]
    pub full_name_order: NameOrder,
    /// Phone columns, preferred first (rank 1, 2, ...), used as "other" numbers.
    #[serde(default)]
    pub phones: Vec<String>,
    /// A column known to hold a mobile number: preferred over every `phones` column (rank 0).
    #[serde(default)]
    pub mobile_phone: Option<String>,
    /// BCP-47 language tag column.
    #[serde(default)]
    pub language: Option<String>,
    /// Location display name column.
    #[serde(default)]
    pub location: Option<String>,
    /// Practitioner display name column.
    #[serde(default)]
    pub practitioner: Option<String>,
    /// Appointment type column (sensitive: kept as PHI).
    #[serde(default)]
    pub service_type: Option<String>,
    /// A comment / diagnosis column: kept as PHI only to be filtered, never rendered.
    #[serde(default)]
    pub reason: Option<String>,
    /// WhatsApp opt-in column, read through `opt_in_yes` / `opt_in_no`.
    #[serde(default)]
    pub opt_in: Option<String>,
    /// Protection-indicator column (HL7 PD1-12 style), read through `protection_yes` / `protection_no`.
    #[serde(default)]
    pub protection: Option<String>,
    /// Publicity-code column (HL7 PD1-11 style), read through `publicity_opt_out`.
    #[serde(default)]
    pub publicity: Option<String>,
    /// Last-updated column, the event's source version.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// Site name column, overriding the configured site when not empty.
    #[serde(default)]
    pub site: Option<String>,
}

fn default_delimiter() -> char {
    ','
}
fn default_quote() -> char {
    '"'
}
fn default_date_format() -> String {
    "%Y-%m-%d".to_string()
}
fn default_time_format() -> String {
    "%H:%M".to_string()
}
fn default_datetime_format() -> String {
    "%Y-%m-%d %H:%M".to_string()
}
fn default_status() -> String {
    "booked".to_string()
}
fn default_opt_in_yes() -> Vec<String> {
    ["y", "yes", "1", "true", "sim", "si", "oui"]
        .map(String::from)
        .to_vec()
}
fn default_protection_yes() -> Vec<String> {
    ["y", "yes", "1", "true"].map(String::from).to_vec()
}
fn default_protection_no() -> Vec<String> {
    ["n", "no", "0", "false"].map(String::from).to_vec()
}
fn default_publicity_opt_out() -> Vec<String> {
    vec!["n".to_string()]
}
fn default_opt_in_no() -> Vec<String> {
    ["n", "no", "0", "false", "nao", "não"]
        .map(String::from)
        .to_vec()
}

/// The values of `no` that are also in `yes` (trimmed, case-insensitive): a cell cannot mean both.
fn overlapping<'a>(yes: &[String], no: &'a [String]) -> Vec<&'a String> {
    let yes: Vec<String> = yes.iter().map(|s| s.trim().to_lowercase()).collect();
    no.iter()
        .filter(|n| yes.contains(&n.trim().to_lowercase()))
        .collect()
}

/// A datetime cell read with a format: the instant, and the civil date and time written in the
/// text (before any offset was applied), which tell a placeholder midnight from a real time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Read {
    /// The instant the text stands for.
    pub at: Timestamp,
    /// The date and time as written.
    pub civil: DateTime,
    /// Whether the civil time fell in a daylight-saving gap of the zone (only for texts without an
    /// offset): it was moved forward by the gap.
    pub in_gap: bool,
}

/// The directives that parse a UTC offset, with the text of a zero offset in each one's form.
const OFFSET_DIRECTIVES: [(&str, &str); 4] = [
    ("%:::z", "+00"),
    ("%::z", "+00:00:00"),
    ("%:z", "+00:00"),
    ("%z", "+0000"),
];

/// `s` with a `Z` (UTC designator, as in RFC 3339) written as the zero offset `fmt`'s offset
/// directive expects, when `fmt` has one and `s` has exactly one `Z` right after a digit; jiff's
/// `%z` reads only numeric offsets.
fn zulu_as_offset(fmt: &str, s: &str) -> Option<String> {
    let zero = OFFSET_DIRECTIVES
        .iter()
        .find(|(d, _)| fmt.contains(d))
        .map(|(_, z)| *z)?;
    let bytes = s.as_bytes();
    let mut at = None;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(b, b'Z' | b'z') && i > 0 && bytes[i - 1].is_ascii_digit() {
            if at.is_some() {
                return None;
            }
            at = Some(i);
        }
    }
    let i = at?;
    Some(format!("{}{zero}{}", &s[..i], &s[i + 1..]))
}

/// Parses a datetime in `fmt`: an offset in the text wins (`%z` also takes `Z`), otherwise the
/// civil time is placed in `tz` with compatible disambiguation (a gap moves forward, a fold takes
/// the earlier instant).
pub(crate) fn read_datetime(fmt: &str, s: &str, tz: &TimeZone) -> Option<Read> {
    let tm = match strtime::parse(fmt, s) {
        Ok(tm) => tm,
        Err(_) => strtime::parse(fmt, zulu_as_offset(fmt, s)?).ok()?,
    };
    let civil = tm.to_datetime().ok()?;
    if tm.offset().is_some() {
        return Some(Read {
            at: tm.to_timestamp().ok()?,
            civil,
            in_gap: false,
        });
    }
    let (at, in_gap) = place_civil(civil, tz)?;
    Some(Read { at, civil, in_gap })
}

/// Parses an instant in `fmt` (see [`read_datetime`]).
pub(crate) fn parse_instant(fmt: &str, s: &str, tz: &TimeZone) -> Option<Timestamp> {
    read_datetime(fmt, s, tz).map(|r| r.at)
}

/// Places a civil datetime in `tz` with compatible disambiguation; says whether it was in a gap.
pub(crate) fn place_civil(dt: DateTime, tz: &TimeZone) -> Option<(Timestamp, bool)> {
    let ambiguous = tz.to_ambiguous_zoned(dt);
    let in_gap = matches!(ambiguous.offset(), AmbiguousOffset::Gap { .. });
    let at = ambiguous.compatible().ok()?.timestamp();
    Some((at, in_gap))
}

/// Parses an `HH:MM` time of the profile (such as `time_unknown_at`).
pub(crate) fn parse_hh_mm(s: &str) -> Option<Time> {
    Time::strptime("%H:%M", s.trim()).ok()
}

/// Parses a date-only value.
pub(crate) fn parse_date(fmt: &str, s: &str) -> Option<Date> {
    Date::strptime(fmt, s).ok()
}

/// Parses a time-only value.
pub(crate) fn parse_time(fmt: &str, s: &str) -> Option<Time> {
    Time::strptime(fmt, s).ok()
}

impl CsvProfile {
    /// Things that are valid but probably not meant, for `medrelay check`: listed, not failed.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.columns.mobile_phone.is_none() && self.columns.phones.is_empty() {
            w.push(
                "no phone column is mapped (columns.mobile_phone / columns.phones): nothing will be sent to the patients of this export"
                    .to_string(),
            );
        }
        w
    }

    /// Whether the appointments of this profile carry a day and no time (`start_date` alone).
    pub fn date_only(&self) -> bool {
        let c = &self.columns;
        c.start.is_none() && c.start_time.is_none() && c.start_date.is_some()
    }

    /// Checks everything that can be checked without a file, so a typo in the profile fails at
    /// startup with every problem listed rather than as thousands of bad rows.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        let c = &self.columns;

        if !self.delimiter.is_ascii() {
            errs.push("delimiter must be an ASCII character".to_string());
        }
        if !self.quote.is_ascii() {
            errs.push("quote must be an ASCII character".to_string());
        }
        if self.delimiter == self.quote {
            errs.push("delimiter and quote must differ".to_string());
        }
        if matches!(self.delimiter, '\r' | '\n') || matches!(self.quote, '\r' | '\n') {
            errs.push("delimiter and quote cannot be line terminators".to_string());
        }
        if c.filler_id.trim().is_empty() {
            errs.push("columns.filler_id must name a header".to_string());
        }

        // Start: exactly one of `start`, `start_date` + `start_time`, or `start_date` alone.
        let split_start = c.start_date.is_some() || c.start_time.is_some();
        match (c.start.is_some(), split_start) {
            (true, true) => errs.push(
                "columns: use either start or start_date (+ start_time), not both".to_string(),
            ),
            (false, false) => errs.push(
                "columns: start (or start_date + start_time, or start_date alone) is required"
                    .to_string(),
            ),
            (false, true) if c.start_date.is_none() => {
                errs.push("columns: start_time needs start_date".to_string())
            }
            _ => {}
        }
        let date_only = self.date_only();
        if date_only && (c.end_time.is_some() || c.end_date.is_some()) {
            errs.push(
                "columns: a day-only start (start_date without start_time) cannot have an end time"
                    .to_string(),
            );
        }
        if let Some(t) = &self.time_unknown_at {
            if parse_hh_mm(t).is_none() {
                errs.push(format!("time_unknown_at \"{t}\" is not a time as HH:MM"));
            }
            if date_only {
                errs.push(
                    "time_unknown_at has no effect without a start time (start_date alone is already day-only)"
                        .to_string(),
                );
            }
        }
        // End: at most one way.
        let end_ways = [
            c.end.is_some(),
            c.end_date.is_some() || c.end_time.is_some(),
            c.duration_minutes.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if end_ways > 1 {
            errs.push(
                "columns: use only one of end, end_date/end_time, duration_minutes".to_string(),
            );
        }
        if c.end_date.is_some() && c.end_time.is_none() {
            errs.push("columns: end_date needs end_time".to_string());
        }
        if c.end_time.is_some() && c.end_date.is_none() && c.start_date.is_none() {
            errs.push(
                "columns: end_time without end_date needs start_date + start_time".to_string(),
            );
        }

        // Formats: format a fixed instant and parse it back, which proves both directives and
        // completeness (a date format without a day cannot be read back).
        let sample = jiff::civil::date(2026, 12, 31)
            .at(13, 45, 0, 0)
            .to_zoned(TimeZone::UTC)
            .expect("fixed sample datetime is valid in UTC");
        let uses_datetime = c.start.is_some() || c.end.is_some();
        let uses_date = c.start_date.is_some() || c.end_date.is_some();
        let uses_time = c.start_time.is_some() || c.end_time.is_some();
        let mut check = |name: &str, fmt: &str, kind: u8| {
            let text = match strtime::format(fmt, &sample) {
                Ok(t) => t,
                Err(_) => {
                    errs.push(format!("{name} \"{fmt}\" is not a valid strftime format"));
                    return;
                }
            };
            let ok = match kind {
                0 => parse_instant(fmt, &text, &TimeZone::UTC).is_some(),
                1 => parse_date(fmt, &text).is_some(),
                _ => parse_time(fmt, &text).is_some(),
            };
            if !ok {
                errs.push(format!(
                    "{name} \"{fmt}\" cannot be read back (is a field missing?)"
                ));
            }
        };
        if uses_datetime {
            check("datetime_format", &self.datetime_format, 0);
        }
        if uses_date {
            check("date_format", &self.date_format, 1);
        }
        if uses_time {
            check("time_format", &self.time_format, 2);
        }
        if let Some(f) = &self.updated_at_format {
            check("updated_at_format", f, 0);
        }

        if let Some(tz) = &self.time_zone
            && TimeZone::get(tz).is_err()
        {
            errs.push(format!("time_zone \"{tz}\" is not a known IANA time zone"));
        }

        if AppointmentStatus::from_code(&self.default_status).is_none() {
            errs.push(format!(
                "default_status \"{}\" is not a FHIR appointment status",
                self.default_status
            ));
        }
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (k, v) in &self.status_map {
            if AppointmentStatus::from_code(v).is_none() {
                errs.push(format!(
                    "status_map: \"{v}\" is not a FHIR appointment status"
                ));
            }
            let key = k.trim().to_lowercase();
            if let Some(prev) = seen.insert(key, v)
                && prev != v
            {
                errs.push(format!(
                    "status_map: \"{k}\" is mapped twice (keys are case-insensitive)"
                ));
            }
        }

        for n in overlapping(&self.opt_in_yes, &self.opt_in_no) {
            errs.push(format!("opt_in: \"{n}\" is both a yes and a no value"));
        }
        for n in overlapping(&self.protection_yes, &self.protection_no) {
            errs.push(format!(
                "protection: \"{n}\" is both a protecting and a non-protecting value"
            ));
        }

        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> CsvProfile {
        toml::from_str(
            r#"
            columns = { filler_id = "id", start = "when" }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_are_applied() {
        let p = minimal();
        assert_eq!(p.delimiter, ',');
        assert_eq!(p.quote, '"');
        assert_eq!(p.encoding, Encoding::Utf8);
        assert_eq!(p.default_status, "booked");
        assert!(p.opt_in_no.contains(&"não".to_string()));
        p.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<CsvProfile, _> =
            toml::from_str("delimter = ';'\ncolumns = { filler_id = \"id\", start = \"s\" }");
        assert!(r.is_err());
        let r: Result<CsvProfile, _> =
            toml::from_str("columns = { filler_id = \"id\", start = \"s\", strat = \"x\" }");
        assert!(r.is_err());
    }

    #[test]
    fn validate_lists_every_problem() {
        let mut p = minimal();
        p.delimiter = '§';
        p.columns.start_date = Some("d".into());
        p.datetime_format = "%Y-%m".into();
        p.time_zone = Some("Mars/Olympus_Mons".into());
        p.status_map.insert("X".into(), "canceled".into());
        p.default_status = "nope".into();
        p.columns.end_date = Some("e".into());
        let errs = p.validate().unwrap_err();
        let all = errs.join("\n");
        for needle in [
            "delimiter must be an ASCII",
            "either start or start_date",
            "datetime_format",
            "Mars/Olympus_Mons",
            "\"canceled\" is not a FHIR",
            "default_status",
            "end_date needs end_time",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    #[test]
    fn formats_are_checked_by_round_trip() {
        let mut p = minimal();
        p.datetime_format = "%m/%d/%Y %I:%M %p".into();
        p.validate().unwrap();
        p.datetime_format = "%Q%!".into();
        assert!(p.validate().is_err());
        p.datetime_format = "%H:%M".into();
        assert!(p.validate().is_err());
    }
}
