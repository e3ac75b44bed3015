//! fhir-model's `time`-crate values -> jiff (the rest of medrelay uses jiff).

use fhir_sdk::r4b::types::Period;
use fhir_sdk::{Date, DateTime, Instant};
use jiff::civil;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// An instant as a jiff timestamp (nanosecond exact).
pub fn instant(i: &Instant) -> Timestamp {
    Timestamp::from_nanosecond(i.0.unix_timestamp_nanos()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// The first civil day a FHIR date covers, and the day after the last.
fn date_span(d: &Date) -> Option<(civil::Date, civil::Date)> {
    let (first, last) = match d {
        Date::Year(y) => (
            civil::date(i16::try_from(*y).ok()?, 1, 1),
            civil::date(i16::try_from(*y).ok()?, 12, 31),
        ),
        Date::YearMonth(y, m) => {
            let first = civil::Date::new(i16::try_from(*y).ok()?, *m as i8, 1).ok()?;
            (first, first.last_of_month())
        }
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
    Some((first, last.tomorrow().ok()?))
}

/// The span `[from, until)` a FHIR dateTime covers: an instant is a point; a date is its whole
/// day(s) in `zone`.
pub fn span(dt: &DateTime, zone: &TimeZone) -> Option<(Timestamp, Timestamp)> {
    match dt {
        DateTime::DateTime(i) => {
            let t = instant(i);
            Some((t, t + SignedDuration::from_nanos(1)))
        }
        DateTime::Date(d) => {
            let (first, after) = date_span(d)?;
            let from = zone.to_ambiguous_timestamp(first.to_datetime(civil::Time::midnight()));
            let until = zone.to_ambiguous_timestamp(after.to_datetime(civil::Time::midnight()));
            Some((from.compatible().ok()?, until.compatible().ok()?))
        }
    }
}

/// Whether `at` falls inside `period` (open ends are unbounded; dates cover whole days).
pub fn period_contains(period: &Period, at: Timestamp, zone: &TimeZone) -> bool {
    let after_start = period
        .start
        .as_ref()
        .and_then(|s| span(s, zone))
        .is_none_or(|(from, _)| at >= from);
    let before_end = period
        .end
        .as_ref()
        .and_then(|e| span(e, zone))
        .is_none_or(|(_, until)| at < until);
    after_start && before_end
}

/// A sortable moment for a FHIR dateTime (start of its span).
pub fn moment(dt: &DateTime, zone: &TimeZone) -> Option<Timestamp> {
    span(dt, zone).map(|(from, _)| from)
}
