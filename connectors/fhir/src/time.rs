//! FHIR times as jiff values: fhir-model's `time`-crate values (R4B models) and FHIR's own text
//! forms (the R5 reader), into one representation the mapping decides on.

use fhir_sdk::r4b::types::Period;
use fhir_sdk::{Date, DateTime, Instant};
use jiff::civil;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// The largest UTC offset FHIR's `instant` and `dateTime` allow (their regex ends in
/// `(Z|(+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))`). fhir-model and jiff read offsets up to 25:59, so a
/// time written `+18:00` would otherwise be taken as a real instant hours away from the intended one.
pub const MAX_OFFSET_SECONDS: i32 = 14 * 3600;

/// Whether an offset of `seconds` east of UTC is one FHIR allows.
pub fn offset_allowed(seconds: i32) -> bool {
    seconds.unsigned_abs() <= MAX_OFFSET_SECONDS.unsigned_abs()
}

/// An instant as a jiff timestamp (nanosecond exact).
pub fn instant(i: &Instant) -> Timestamp {
    Timestamp::from_nanosecond(i.0.unix_timestamp_nanos()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// [`instant`], or `None` when its offset is beyond what FHIR allows (see [`MAX_OFFSET_SECONDS`]).
pub fn checked_instant(i: &Instant) -> Option<Timestamp> {
    offset_allowed(i.0.offset().whole_seconds()).then(|| instant(i))
}

/// A FHIR `instant` in its JSON text form (`2026-12-02T09:00:00-03:00`, fractions allowed; the
/// offset is required and at most 14:00 either way).
pub fn parse_instant(text: &str) -> Option<Timestamp> {
    // jiff also reads `2026-12-02T09:00-03:00`; FHIR requires the seconds.
    let time = text.split_once('T')?.1;
    if time.len() < 8 || time.as_bytes()[5] != b':' {
        return None;
    }
    if !text_offset_allowed(time) {
        return None;
    }
    text.parse().ok()
}

/// Whether the offset that ends a FHIR time text (`Z` or `+HH:MM` / `-HH:MM`) is within 14:00.
fn text_offset_allowed(time: &str) -> bool {
    if time.ends_with(['Z', 'z']) {
        return true;
    }
    let Some(tail) = time.len().checked_sub(6).and_then(|at| time.get(at..)) else {
        return false;
    };
    let b = tail.as_bytes();
    let digits = |s: &str| s.parse::<i32>().ok();
    match (b[0], digits(&tail[1..3]), b[3], digits(&tail[4..6])) {
        (b'+' | b'-', Some(h), b':', Some(m)) if m < 60 => offset_allowed(h * 3600 + m * 60),
        _ => false,
    }
}

/// A FHIR `date` or `dateTime`: a point in time, or whole civil days whose instants depend on the
/// site's zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    At(Timestamp),
    /// The first day covered and the day after the last.
    Days(civil::Date, civil::Date),
}

impl When {
    /// From fhir-model's value.
    pub fn from_sdk(dt: &DateTime) -> Option<When> {
        match dt {
            DateTime::DateTime(i) => checked_instant(i).map(When::At),
            DateTime::Date(d) => {
                let (first, last) = match d {
                    Date::Year(y) => year(*y)?,
                    Date::YearMonth(y, m) => month(*y, *m as i8)?,
                    Date::Date(d) => {
                        let c = civil::Date::new(
                            i16::try_from(d.year()).ok()?,
                            d.month() as i8,
                            i8::try_from(d.day()).ok()?,
                        )
                        .ok()?;
                        (c, c)
                    }
                };
                Some(When::Days(first, last.tomorrow().ok()?))
            }
        }
    }

    /// From the JSON text of a FHIR `date` (`2026`, `2026-12`, `2026-12-01`) or `dateTime` (a date,
    /// or a time with seconds and an offset). `None` when the text is neither.
    pub fn parse(text: &str) -> Option<When> {
        if text.contains('T') {
            return parse_instant(text).map(When::At);
        }
        let parts: Vec<&str> = text.split('-').collect();
        let num = |s: &str, len: usize| {
            (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<i32>().ok())
                .flatten()
        };
        let (first, last) = match parts.as_slice() {
            [y] => year(num(y, 4)?)?,
            [y, m] => month(num(y, 4)?, i8::try_from(num(m, 2)?).ok()?)?,
            [y, m, d] => {
                let c = civil::Date::new(
                    i16::try_from(num(y, 4)?).ok()?,
                    i8::try_from(num(m, 2)?).ok()?,
                    i8::try_from(num(d, 2)?).ok()?,
                )
                .ok()?;
                (c, c)
            }
            _ => return None,
        };
        Some(When::Days(first, last.tomorrow().ok()?))
    }

    /// The span `[from, until)` it covers: an instant is a point; days are whole days in `zone`.
    pub fn span(&self, zone: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        match *self {
            When::At(t) => Some((t, t + SignedDuration::from_nanos(1))),
            When::Days(first, after) => {
                let from = zone.to_ambiguous_timestamp(first.to_datetime(civil::Time::midnight()));
                let until = zone.to_ambiguous_timestamp(after.to_datetime(civil::Time::midnight()));
                Some((from.compatible().ok()?, until.compatible().ok()?))
            }
        }
    }

    /// A sortable moment (start of its span).
    pub fn moment(&self, zone: &TimeZone) -> Option<Timestamp> {
        self.span(zone).map(|(from, _)| from)
    }
}

fn year(y: i32) -> Option<(civil::Date, civil::Date)> {
    let y = i16::try_from(y).ok()?;
    Some((
        civil::Date::new(y, 1, 1).ok()?,
        civil::Date::new(y, 12, 31).ok()?,
    ))
}

fn month(y: i32, m: i8) -> Option<(civil::Date, civil::Date)> {
    let first = civil::Date::new(i16::try_from(y).ok()?, m, 1).ok()?;
    Some((first, first.last_of_month()))
}

/// A FHIR `Period`; an open end is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: Option<When>,
    pub end: Option<When>,
}

impl Span {
    /// From fhir-model's value (an unreadable end counts as open, as before).
    pub fn from_sdk(p: &Period) -> Span {
        Span {
            start: p.start.as_ref().and_then(When::from_sdk),
            end: p.end.as_ref().and_then(When::from_sdk),
        }
    }

    /// Whether `at` falls inside (dates cover whole days in `zone`).
    pub fn contains(&self, at: Timestamp, zone: &TimeZone) -> bool {
        let after_start = self
            .start
            .and_then(|s| s.span(zone))
            .is_none_or(|(from, _)| at >= from);
        let before_end = self
            .end
            .and_then(|e| e.span(zone))
            .is_none_or(|(_, until)| at < until);
        after_start && before_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_date_and_datetime_text() {
        let d = |y, m, d| civil::date(y, m, d);
        assert_eq!(
            When::parse("2026"),
            Some(When::Days(d(2026, 1, 1), d(2027, 1, 1)))
        );
        assert_eq!(
            When::parse("2026-02"),
            Some(When::Days(d(2026, 2, 1), d(2026, 3, 1)))
        );
        assert_eq!(
            When::parse("2026-12-31"),
            Some(When::Days(d(2026, 12, 31), d(2027, 1, 1)))
        );
        assert_eq!(
            When::parse("2026-12-01T10:00:00-03:00"),
            Some(When::At("2026-12-01T13:00:00Z".parse().unwrap()))
        );
        for bad in [
            "26",
            "2026-1",
            "2026-13-01",
            "2026-12-01T10:00-03:00",
            "2026-12-01T10:00:00",
            "2026-12-01T10:00:00+14:01",
            "2026-12-01T10:00:00-18:00",
            "2026-12-01T10:00:00+25:59",
            "soon",
        ] {
            assert_eq!(When::parse(bad), None, "{bad}");
        }
        assert_eq!(
            parse_instant("2026-12-02T12:00:00.250Z").map(|t| t.to_string()),
            Some("2026-12-02T12:00:00.25Z".into())
        );
    }

    #[test]
    fn fhir_offsets_beyond_14_hours_are_refused() {
        // The extremes FHIR allows are real instants (Kiribati, Baker Island).
        assert_eq!(
            parse_instant("2026-12-02T09:00:00+14:00"),
            Some("2026-12-01T19:00:00Z".parse().unwrap())
        );
        assert_eq!(
            parse_instant("2026-12-02T09:00:00-12:00"),
            Some("2026-12-02T21:00:00Z".parse().unwrap())
        );
        for bad in [
            "2026-12-02T09:00:00+14:30",
            "2026-12-02T09:00:00-14:01",
            "2026-12-02T09:00:00+18:00",
            "2026-12-02T09:00:00+09:60",
            "2026-12-02T09:00:00+0900",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }
}
