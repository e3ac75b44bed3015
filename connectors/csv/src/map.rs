//! One CSV row -> one canonical [`Appointment`], or a status change when a row that is not booked
//! has no start.
//!
//! Civil dates and times are placed in the profile's (or site's) zone with jiff's compatible
//! disambiguation: a time in a spring-forward gap moves forward by the gap (02:30 -> 03:30) and is
//! reported as a warning (or rejected, per `dst_gap`), a time in a fall-back fold takes the earlier
//! instant. A day-only start (a date column alone, or the profile's `time_unknown_at` placeholder)
//! is the first instant of that local day with `time_unknown` set. Error and warning reasons name
//! the column and what was expected, never the cell value; the values of code columns (status,
//! opt-in, protection) are tallied for the report's summary, which lists them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use csv::ByteRecord;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::phone::{PhoneError, normalize_e164};
use medrelay_mapping::{
    Appointment, AppointmentKey, AppointmentStatus, ContactPhone, Patient, Phi, PhoneUse,
};
use std::cell::RefCell;
use std::collections::HashMap;

use crate::config::{
    CsvProfile, DstGap, Encoding, NameOrder, parse_date, parse_hh_mm, parse_instant, parse_time,
    place_civil, read_datetime,
};
use crate::report::CodeValues;
use crate::source::{CsvError, ImportOptions};

/// Why a row cannot be mapped: the header of the offending column and the reason, no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellError {
    pub column: Option<String>,
    pub reason: String,
}

/// Decodes one field in the profile's encoding; `None` when the bytes are not valid in it.
pub(crate) fn decode(encoding: Encoding, bytes: &[u8]) -> Option<Cow<'_, str>> {
    match encoding {
        Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
        Encoding::Windows1252 => {
            encoding_rs::WINDOWS_1252.decode_without_bom_handling_and_without_replacement(bytes)
        }
        Encoding::Latin1 => Some(match std::str::from_utf8(bytes) {
            // ASCII-only text is the same in both: skip the copy.
            Ok(s) if s.is_ascii() => Cow::Borrowed(s),
            _ => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        }),
    }
}

/// A resolved column: its position in the row and its header text (for error messages).
#[derive(Clone, Debug)]
struct Col {
    idx: usize,
    header: String,
}

/// How the start instant is read.
#[derive(Clone, Debug)]
enum When {
    DateTime(Col),
    Split {
        date: Col,
        time: Col,
    },
    /// A day without a time: the appointment's time is unknown.
    DateOnly(Col),
}

/// What one row means. Not boxed, like [`crate::RowResult`]: one row at a time.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Mapped {
    /// A full appointment.
    Appointment(Appointment),
    /// A row whose status is not `booked` and whose start is empty: a status change.
    Status {
        key: AppointmentKey,
        placer_id: Option<String>,
        status: AppointmentStatus,
    },
}

/// A problem with a row that was still imported (a civil time in a daylight-saving gap). Like a
/// [`CellError`], it names the column and never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellWarning {
    pub column: Option<String>,
    pub reason: String,
}

/// The start as read from a row.
struct Start {
    at: Timestamp,
    date: jiff::civil::Date,
    time_unknown: bool,
}

/// Distinct values of one code column tallied before the rest are only counted: a column with more
/// distinct unknown values than this does not hold codes, and its values are never listed.
const TALLY_MAX: usize = 64;

/// Unknown values seen in one code column (status, opt-in, protection).
#[derive(Debug, Default)]
struct Tally {
    values: BTreeMap<String, u64>,
    /// Rows whose value was not tallied because [`TALLY_MAX`] distinct values were already seen.
    untallied: u64,
}

impl Tally {
    fn add(&mut self, value: &str) {
        if let Some(n) = self.values.get_mut(value) {
            *n += 1;
        } else if self.values.len() < TALLY_MAX {
            self.values.insert(value.to_string(), 1);
        } else {
            self.untallied += 1;
        }
    }
}

/// What the mapper counted over a whole file.
#[derive(Debug, Default)]
struct Stats {
    appointments: u64,
    status_changes: u64,
    without_phone: u64,
    status: Tally,
    opt_in: Tally,
    protection: Tally,
}

/// How the end is read.
#[derive(Clone, Debug)]
enum End {
    None,
    DateTime(Col),
    Split {
        date: Col,
        time: Col,
    },
    /// An end time on the start's date.
    TimeOnly(Col),
    Duration(Col),
}

/// The profile compiled against one file's header row.
#[derive(Debug)]
pub(crate) struct Mapper {
    encoding: Encoding,
    options: ImportOptions,
    tz: TimeZone,
    tz_name: String,
    date_format: String,
    time_format: String,
    datetime_format: String,
    updated_at_format: Option<String>,
    status_map: BTreeMap<String, AppointmentStatus>,
    default_status: AppointmentStatus,
    yes: Vec<String>,
    no: Vec<String>,
    name_order: NameOrder,

    filler_id: Col,
    placer_id: Option<Col>,
    status: Option<Col>,
    start: When,
    end: End,
    patient_id: Option<Col>,
    given_name: Option<Col>,
    family_name: Option<Col>,
    full_name: Option<Col>,
    phones: Vec<(Col, PhoneUse, u32)>,
    language: Option<Col>,
    location: Option<Col>,
    practitioner: Option<Col>,
    service_type: Option<Col>,
    reason: Option<Col>,
    opt_in: Option<Col>,
    protection: Option<Col>,
    protects: Vec<String>,
    does_not_protect: Vec<String>,
    publicity: Option<Col>,
    no_publicity: Vec<String>,
    updated_at: Option<Col>,
    site: Option<Col>,
    time_unknown_at: Option<jiff::civil::Time>,
    dst_gap: DstGap,
    stats: RefCell<Stats>,
    /// Normalised numbers by raw cell text: an export repeats a patient's number on every one of their
    /// appointments, and libphonenumber parsing is the most expensive step of a row. Bounded.
    phone_cache: RefCell<HashMap<String, Result<String, PhoneError>>>,
}

/// Entries kept in the phone cache before it is cleared (about 10 MB at most).
const PHONE_CACHE_MAX: usize = 100_000;

impl Mapper {
    /// Resolves every mapped header against the file's header row (decoded and trimmed).
    pub(crate) fn new(
        profile: &CsvProfile,
        headers: &[String],
        options: ImportOptions,
    ) -> Result<Self, CsvError> {
        let find = |name: &str| -> Result<Col, CsvError> {
            headers
                .iter()
                .position(|h| h == name.trim())
                .map(|idx| Col {
                    idx,
                    header: name.trim().to_string(),
                })
                .ok_or_else(|| CsvError::MissingHeader {
                    header: name.trim().to_string(),
                })
        };
        let opt = |name: &Option<String>| -> Result<Option<Col>, CsvError> {
            name.as_deref().map(find).transpose()
        };
        let c = &profile.columns;

        let start = match (&c.start, &c.start_date, &c.start_time) {
            (Some(s), _, _) => When::DateTime(find(s)?),
            (None, Some(d), Some(t)) => When::Split {
                date: find(d)?,
                time: find(t)?,
            },
            (None, Some(d), None) => When::DateOnly(find(d)?),
            _ => {
                return Err(CsvError::Profile(vec![
                    "columns: start (or start_date + start_time) is required".into(),
                ]));
            }
        };
        let end = match (&c.end, &c.end_date, &c.end_time, &c.duration_minutes) {
            (Some(e), _, _, _) => End::DateTime(find(e)?),
            (None, Some(d), Some(t), _) => End::Split {
                date: find(d)?,
                time: find(t)?,
            },
            (None, None, Some(t), _) => End::TimeOnly(find(t)?),
            (None, None, None, Some(m)) => End::Duration(find(m)?),
            _ => End::None,
        };

        let mut phones = Vec::new();
        if let Some(m) = &c.mobile_phone {
            phones.push((find(m)?, PhoneUse::Mobile, 0));
        }
        for (i, p) in c.phones.iter().enumerate() {
            phones.push((find(p)?, PhoneUse::Other, i as u32 + 1));
        }

        let tz_name = profile
            .time_zone
            .clone()
            .unwrap_or_else(|| options.site_time_zone.clone());
        let tz = TimeZone::get(&tz_name)
            .map_err(|_| CsvError::Profile(vec![format!("unknown time zone \"{tz_name}\"")]))?;

        let mut status_map = BTreeMap::new();
        for (k, v) in &profile.status_map {
            let s = AppointmentStatus::from_code(v).ok_or_else(|| {
                CsvError::Profile(vec![format!("status_map: \"{v}\" is not a FHIR status")])
            })?;
            status_map.insert(k.trim().to_lowercase(), s);
        }
        let default_status = AppointmentStatus::from_code(&profile.default_status)
            .ok_or_else(|| CsvError::Profile(vec!["default_status is not a FHIR status".into()]))?;
        let norm = |v: &Vec<String>| v.iter().map(|s| s.trim().to_lowercase()).collect();

        Ok(Mapper {
            encoding: profile.encoding,
            tz,
            tz_name,
            date_format: profile.date_format.clone(),
            time_format: profile.time_format.clone(),
            datetime_format: profile.datetime_format.clone(),
            updated_at_format: profile.updated_at_format.clone(),
            status_map,
            default_status,
            yes: norm(&profile.opt_in_yes),
            no: norm(&profile.opt_in_no),
            name_order: c.full_name_order,
            filler_id: find(&c.filler_id)?,
            placer_id: opt(&c.placer_id)?,
            status: opt(&c.status)?,
            start,
            end,
            patient_id: opt(&c.patient_id)?,
            given_name: opt(&c.given_name)?,
            family_name: opt(&c.family_name)?,
            full_name: opt(&c.full_name)?,
            phones,
            language: opt(&c.language)?,
            location: opt(&c.location)?,
            practitioner: opt(&c.practitioner)?,
            service_type: opt(&c.service_type)?,
            reason: opt(&c.reason)?,
            opt_in: opt(&c.opt_in)?,
            protection: opt(&c.protection)?,
            protects: norm(&profile.protection_yes),
            does_not_protect: norm(&profile.protection_no),
            publicity: opt(&c.publicity)?,
            no_publicity: norm(&profile.publicity_opt_out),
            updated_at: opt(&c.updated_at)?,
            site: opt(&c.site)?,
            time_unknown_at: profile.time_unknown_at.as_deref().and_then(parse_hh_mm),
            dst_gap: profile.dst_gap,
            stats: RefCell::new(Stats::default()),
            phone_cache: RefCell::new(HashMap::new()),
            options,
        })
    }

    /// The options this file is imported with.
    pub(crate) fn options(&self) -> &ImportOptions {
        &self.options
    }

    /// The trimmed cell of `col`; `Ok(None)` when empty or past the end of a short row.
    fn cell(&self, rec: &ByteRecord, col: &Col) -> Result<Option<String>, CellError> {
        let Some(bytes) = rec.get(col.idx) else {
            return Ok(None);
        };
        let text = decode(self.encoding, bytes).ok_or_else(|| CellError {
            column: Some(col.header.clone()),
            reason: match self.encoding {
                Encoding::Utf8 => "value is not valid UTF-8".to_string(),
                _ => "value cannot be decoded in the configured encoding".to_string(),
            },
        })?;
        let t = text.trim();
        Ok((!t.is_empty()).then(|| t.to_string()))
    }

    fn opt_cell(&self, rec: &ByteRecord, col: &Option<Col>) -> Result<Option<String>, CellError> {
        match col {
            Some(c) => self.cell(rec, c),
            None => Ok(None),
        }
    }

    fn required(&self, rec: &ByteRecord, col: &Col) -> Result<String, CellError> {
        self.cell(rec, col)?.ok_or_else(|| CellError {
            column: Some(col.header.clone()),
            reason: "required value is empty".to_string(),
        })
    }

    /// The filler id if that cell is readable and not empty, for snapshot sweeps of bad rows.
    pub(crate) fn filler_id(&self, rec: &ByteRecord) -> Option<String> {
        self.cell(rec, &self.filler_id).ok().flatten()
    }

    fn bad_format(col: &Col, what: &str, fmt: &str) -> CellError {
        CellError {
            column: Some(col.header.clone()),
            reason: format!("value does not match {what} format {fmt}"),
        }
    }

    fn read_datetime(
        &self,
        rec: &ByteRecord,
        col: &Col,
    ) -> Result<Option<crate::config::Read>, CellError> {
        let Some(v) = self.cell(rec, col)? else {
            return Ok(None);
        };
        read_datetime(&self.datetime_format, &v, &self.tz)
            .map(Some)
            .ok_or_else(|| Self::bad_format(col, "datetime", &self.datetime_format))
    }

    fn read_date(
        &self,
        rec: &ByteRecord,
        col: &Col,
    ) -> Result<Option<jiff::civil::Date>, CellError> {
        let Some(v) = self.cell(rec, col)? else {
            return Ok(None);
        };
        parse_date(&self.date_format, &v)
            .map(Some)
            .ok_or_else(|| Self::bad_format(col, "date", &self.date_format))
    }

    fn read_time(
        &self,
        rec: &ByteRecord,
        col: &Col,
    ) -> Result<Option<jiff::civil::Time>, CellError> {
        let Some(v) = self.cell(rec, col)? else {
            return Ok(None);
        };
        parse_time(&self.time_format, &v)
            .map(Some)
            .ok_or_else(|| Self::bad_format(col, "time", &self.time_format))
    }

    /// Places a civil datetime in the zone; a time in a daylight-saving gap is a warning or an
    /// error, per `dst_gap`.
    fn place(
        &self,
        dt: jiff::civil::DateTime,
        col: &Col,
        warnings: &mut Vec<CellWarning>,
    ) -> Result<Timestamp, CellError> {
        let (at, in_gap) = place_civil(dt, &self.tz).ok_or_else(|| CellError {
            column: Some(col.header.clone()),
            reason: "date and time are out of range in the time zone".to_string(),
        })?;
        if in_gap {
            self.gap(col, warnings)?;
        }
        Ok(at)
    }

    /// A civil time that does not exist in the zone (the clocks jumped over it).
    fn gap(&self, col: &Col, warnings: &mut Vec<CellWarning>) -> Result<(), CellError> {
        match self.dst_gap {
            DstGap::Warn => {
                warnings.push(CellWarning {
                    column: Some(col.header.clone()),
                    reason: format!(
                        "warning: the local time does not exist in {} (the clocks jump forward there at a daylight-saving change); read as the time after the jump (dst_gap = \"warn\")",
                        self.tz_name
                    ),
                });
                Ok(())
            }
            DstGap::Reject => Err(CellError {
                column: Some(col.header.clone()),
                reason: format!(
                    "the local time does not exist in {} (the clocks jump forward there at a daylight-saving change); dst_gap = \"reject\"",
                    self.tz_name
                ),
            }),
        }
    }

    /// The first instant of a local day (midnight, or the first time after a gap at midnight).
    fn day_start(&self, date: jiff::civil::Date, col: &Col) -> Result<Timestamp, CellError> {
        date.to_zoned(self.tz.clone())
            .map(|z| z.timestamp())
            .map_err(|_| CellError {
                column: Some(col.header.clone()),
                reason: "date is out of range in the time zone".to_string(),
            })
    }

    /// A start at the placeholder time is a start at an unknown time of that day.
    fn is_placeholder(&self, t: jiff::civil::Time) -> bool {
        self.time_unknown_at == Some(t)
    }

    /// Reads the start: `Ok(Err(col))` names the first empty start column (a status change may
    /// have no start; a booking may not).
    fn read_start(
        &self,
        rec: &ByteRecord,
        warnings: &mut Vec<CellWarning>,
    ) -> Result<Result<Start, Col>, CellError> {
        match &self.start {
            When::DateTime(col) => {
                let Some(r) = self.read_datetime(rec, col)? else {
                    return Ok(Err(col.clone()));
                };
                let date = r.civil.date();
                if self.is_placeholder(r.civil.time()) {
                    return Ok(Ok(Start {
                        at: self.day_start(date, col)?,
                        date,
                        time_unknown: true,
                    }));
                }
                if r.in_gap {
                    self.gap(col, warnings)?;
                }
                Ok(Ok(Start {
                    at: r.at,
                    date,
                    time_unknown: false,
                }))
            }
            When::Split { date, time } => {
                let (Some(d), Some(t)) = (self.read_date(rec, date)?, self.read_time(rec, time)?)
                else {
                    let empty = if self.cell(rec, date)?.is_none() {
                        date
                    } else {
                        time
                    };
                    return Ok(Err(empty.clone()));
                };
                if self.is_placeholder(t) {
                    return Ok(Ok(Start {
                        at: self.day_start(d, date)?,
                        date: d,
                        time_unknown: true,
                    }));
                }
                Ok(Ok(Start {
                    at: self.place(d.to_datetime(t), time, warnings)?,
                    date: d,
                    time_unknown: false,
                }))
            }
            When::DateOnly(col) => {
                let Some(d) = self.read_date(rec, col)? else {
                    return Ok(Err(col.clone()));
                };
                Ok(Ok(Start {
                    at: self.day_start(d, col)?,
                    date: d,
                    time_unknown: true,
                }))
            }
        }
    }

    fn missing(col: &Col) -> CellError {
        CellError {
            column: Some(col.header.clone()),
            reason: "required value is empty".to_string(),
        }
    }

    /// Maps one record, with the warnings about it. Errors name the first offending column.
    pub(crate) fn map(&self, rec: &ByteRecord) -> Result<(Mapped, Vec<CellWarning>), CellError> {
        let mut warnings = Vec::new();
        let filler_id = self.required(rec, &self.filler_id)?;
        let placer_id = self.opt_cell(rec, &self.placer_id)?;

        let status = match &self.status {
            None => self.default_status,
            Some(col) => match self.cell(rec, col)? {
                None => self.default_status,
                Some(v) => match self.status_map.get(&v.to_lowercase()) {
                    Some(s) => *s,
                    None => {
                        self.stats.borrow_mut().status.add(&v);
                        return Err(CellError {
                            column: Some(col.header.clone()),
                            reason: "value is not in status_map".to_string(),
                        });
                    }
                },
            },
        };

        let start = match self.read_start(rec, &mut warnings)? {
            Ok(start) => start,
            // A status change needs only the appointment's identity.
            Err(_) if status != AppointmentStatus::Booked => {
                self.stats.borrow_mut().status_changes += 1;
                return Ok((
                    Mapped::Status {
                        key: AppointmentKey {
                            source: self.options.source.clone(),
                            id: filler_id,
                        },
                        placer_id,
                        status,
                    },
                    warnings,
                ));
            }
            Err(col) => {
                return Err(CellError {
                    column: Some(col.header.clone()),
                    reason: "required value is empty: a booked appointment needs a start"
                        .to_string(),
                });
            }
        };
        let time_unknown = start.time_unknown;
        let start_date = Some(start.date);
        let start = start.at;

        // The end of a day-only appointment is not read: its time would be as made up as the start's.
        let end = match &self.end {
            _ if time_unknown => None,
            End::None => None,
            End::DateTime(col) => match self.read_datetime(rec, col)? {
                None => None,
                Some(r) => {
                    if r.in_gap {
                        self.gap(col, &mut warnings)?;
                    }
                    Some(r.at)
                }
            },
            End::Split { date, time } => {
                match (self.read_date(rec, date)?, self.read_time(rec, time)?) {
                    (Some(d), Some(t)) => {
                        Some(self.place(d.to_datetime(t), time, &mut warnings)?)
                    }
                    (None, None) => None,
                    (None, Some(_)) => return Err(Self::missing(date)),
                    (Some(_), None) => return Err(Self::missing(time)),
                }
            }
            End::TimeOnly(col) => match (self.read_time(rec, col)?, start_date) {
                (Some(t), Some(d)) => Some(self.place(d.to_datetime(t), col, &mut warnings)?),
                _ => None,
            },
            End::Duration(col) => match self.cell(rec, col)? {
                None => None,
                Some(v) => {
                    let mins: u32 = v.parse().map_err(|_| CellError {
                        column: Some(col.header.clone()),
                        reason: "value is not a whole number of minutes".to_string(),
                    })?;
                    Some(
                        start
                            .checked_add(SignedDuration::from_mins(i64::from(mins)))
                            .map_err(|_| CellError {
                                column: Some(col.header.clone()),
                                reason: "duration is out of range".to_string(),
                            })?,
                    )
                }
            },
        };

        let mut given = self.opt_cell(rec, &self.given_name)?;
        let mut family = self.opt_cell(rec, &self.family_name)?;
        if let Some(full) = self.opt_cell(rec, &self.full_name)? {
            let (g, f) = split_name(&full, self.name_order);
            given = given.or(g);
            family = family.or(f);
        }

        let mut phones = Vec::new();
        for (col, use_, rank) in &self.phones {
            let Some(raw) = self.cell(rec, col)? else {
                continue;
            };
            let normalised = {
                let mut cache = self.phone_cache.borrow_mut();
                match cache.get(&raw) {
                    Some(hit) => hit.clone(),
                    None => {
                        let result = normalize_e164(&raw, &self.options.default_region);
                        if cache.len() >= PHONE_CACHE_MAX {
                            cache.clear();
                        }
                        cache.insert(raw.clone(), result.clone());
                        result
                    }
                }
            };
            phones.push(match normalised {
                Ok(e164) => ContactPhone {
                    e164: Some(Phi::new(e164)),
                    unusable: None,
                    use_: *use_,
                    rank: *rank,
                },
                Err(e) => ContactPhone {
                    e164: None,
                    unusable: Some(e.to_string()),
                    use_: *use_,
                    rank: *rank,
                },
            });
        }

        let opt_in = match self.opt_cell(rec, &self.opt_in)? {
            None => None,
            Some(v) => {
                let lower = v.to_lowercase();
                if self.yes.contains(&lower) {
                    Some(EhrConsent::OptIn)
                } else if self.no.contains(&lower) {
                    Some(EhrConsent::OptOut)
                } else {
                    // No signal, by design; but the report says which values were not understood.
                    self.stats.borrow_mut().opt_in.add(&v);
                    None
                }
            }
        };
        // "No publicity" is an EHR-side opt-out and beats the same row's opt-in.
        let no_publicity = self
            .opt_cell(rec, &self.publicity)?
            .is_some_and(|v| self.no_publicity.contains(&v.to_lowercase()));
        let ehr_consent = if no_publicity {
            Some(EhrConsent::OptOut)
        } else {
            opt_in
        };
        // No column or a blank cell says nothing: another feed's flag stays.
        let protected = match &self.protection {
            None => None,
            Some(col) => match self.cell(rec, col)? {
                None => None,
                Some(v) if self.protects.contains(&v.to_lowercase()) => Some(true),
                Some(v) if self.does_not_protect.contains(&v.to_lowercase()) => Some(false),
                Some(v) => {
                    self.stats.borrow_mut().protection.add(&v);
                    return Err(CellError {
                        column: Some(col.header.clone()),
                        reason:
                            "value is not a protection indicator (see protection_yes / protection_no)"
                                .to_string(),
                    });
                }
            },
        };

        let appointment = Appointment {
            key: AppointmentKey {
                source: self.options.source.clone(),
                id: filler_id,
            },
            placer_id,
            status,
            start,
            end,
            time_unknown,
            site: self
                .opt_cell(rec, &self.site)?
                .unwrap_or_else(|| self.options.site.clone()),
            time_zone: self.tz_name.clone(),
            location: self.opt_cell(rec, &self.location)?,
            practitioner: self.opt_cell(rec, &self.practitioner)?,
            service_type: self.opt_cell(rec, &self.service_type)?.map(Phi::new),
            reason: self.opt_cell(rec, &self.reason)?.map(Phi::new),
            patient: Patient {
                id: self.opt_cell(rec, &self.patient_id)?.map(Phi::new),
                given_name: given.map(Phi::new),
                family_name: family.map(Phi::new),
                phones,
                preferred_language: self.opt_cell(rec, &self.language)?,
                protected,
            },
            ehr_consent,
        };
        let mut stats = self.stats.borrow_mut();
        stats.appointments += 1;
        if appointment.patient.best_phone().is_none() {
            stats.without_phone += 1;
        }
        Ok((Mapped::Appointment(appointment), warnings))
    }

    /// What was counted over the rows mapped so far: appointments, status changes, rows without a
    /// usable phone, and the unknown values of the code columns (with the allowed ones).
    pub(crate) fn summary(&self) -> crate::report::FileSummary {
        let stats = self.stats.borrow();
        let mut code_columns = Vec::new();
        let mut code = |col: &Option<Col>,
                        tally: &Tally,
                        setting: &str,
                        meaning: &str,
                        allowed: Vec<String>| {
            if let Some(col) = col
                && (!tally.values.is_empty() || tally.untallied > 0)
            {
                code_columns.push(CodeValues {
                    column: col.header.clone(),
                    setting: setting.to_string(),
                    meaning: meaning.to_string(),
                    unknown: tally.values.iter().map(|(v, n)| (v.clone(), *n)).collect(),
                    untallied: tally.untallied,
                    allowed,
                });
            }
        };
        code(
            &self.status,
            &stats.status,
            "status_map",
            "not in status_map: the rows were rejected",
            self.status_map.keys().cloned().collect(),
        );
        code(
            &self.opt_in,
            &stats.opt_in,
            "opt_in_yes / opt_in_no",
            "neither an opt-in nor an opt-out value: read as no signal",
            self.yes.iter().chain(&self.no).cloned().collect(),
        );
        code(
            &self.protection,
            &stats.protection,
            "protection_yes / protection_no",
            "not a protection indicator: the rows were rejected",
            self.protects
                .iter()
                .chain(&self.does_not_protect)
                .cloned()
                .collect(),
        );
        crate::report::FileSummary {
            appointments: stats.appointments,
            status_changes: stats.status_changes,
            without_phone: stats.without_phone,
            phone_columns: self.phones.len(),
            code_columns,
        }
    }

    /// The row's own version time, when an `updated_at` column is configured and readable.
    pub(crate) fn updated_at(&self, rec: &ByteRecord) -> Option<Timestamp> {
        let v = self.opt_cell(rec, &self.updated_at).ok()??;
        match &self.updated_at_format {
            Some(f) => parse_instant(f, &v, &self.tz),
            None => v
                .parse::<Timestamp>()
                .ok()
                .or_else(|| parse_instant(&self.datetime_format, &v, &self.tz)),
        }
    }
}

/// Splits a full name per the profile's order; empty parts are `None`.
pub(crate) fn split_name(full: &str, order: NameOrder) -> (Option<String>, Option<String>) {
    let clean = |s: &str| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    match order {
        NameOrder::FamilyCommaGiven => match full.split_once(',') {
            Some((family, given)) => (clean(given), clean(family)),
            None => (clean(full), None),
        },
        NameOrder::GivenFamily => {
            let t = full.trim();
            match t.split_once(char::is_whitespace) {
                Some((given, family)) => (clean(given), clean(family)),
                None => (clean(t), None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_per_order() {
        assert_eq!(
            split_name(" Gonçalves , João Pedro ", NameOrder::FamilyCommaGiven),
            (Some("João Pedro".into()), Some("Gonçalves".into()))
        );
        assert_eq!(
            split_name("Madonna", NameOrder::FamilyCommaGiven),
            (Some("Madonna".into()), None)
        );
        assert_eq!(
            split_name("Inês  da Silva", NameOrder::GivenFamily),
            (Some("Inês".into()), Some("da Silva".into()))
        );
        assert_eq!(split_name(" , ", NameOrder::FamilyCommaGiven), (None, None));
    }

    #[test]
    fn decoding_per_encoding() {
        assert_eq!(decode(Encoding::Utf8, "João".as_bytes()).unwrap(), "João");
        assert!(decode(Encoding::Utf8, b"Jo\xe3o").is_none());
        assert_eq!(decode(Encoding::Windows1252, b"Jo\xe3o").unwrap(), "João");
        assert_eq!(decode(Encoding::Windows1252, b"\x80").unwrap(), "€");
        assert_eq!(decode(Encoding::Latin1, b"Jo\xe3o").unwrap(), "João");
        assert_eq!(decode(Encoding::Latin1, b"\x80").unwrap(), "\u{80}");
    }
}
