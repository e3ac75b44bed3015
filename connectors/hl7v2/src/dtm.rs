//! HL7 DTM values (`YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`), parsed by us: hl7-parser
//! panics converting impossible dates, reads offset-less times as UTC, drops two-digit offsets and
//! mis-scales fractions. A time without an offset is civil time in the site's zone.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{Offset, TimeZone};

/// How much of a DTM was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// A parsed DTM: the instant (offset applied, or the site zone) and how precise it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dtm {
    pub at: Timestamp,
    pub precision: Precision,
}

fn num(s: &str) -> Option<i32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a DTM; `None` when it is not one (the caller reports the field, never the value).
pub fn parse(value: &str, zone: &TimeZone) -> Option<Dtm> {
    let value = value.trim();
    let (body, offset) = match value.find(['+', '-']) {
        Some(i) => (&value[..i], Some(&value[i..])),
        None => (value, None),
    };
    let (digits, fraction) = match body.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (body, None),
    };
    if !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let part = |from: usize, len: usize, default: i32| -> Option<i32> {
        if digits.len() >= from + len {
            num(&digits[from..from + len])
        } else {
            Some(default)
        }
    };
    let precision = match digits.len() {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        _ => Precision::Second,
    };
    let year = i16::try_from(part(0, 4, 0)?).ok()?;
    let month = i8::try_from(part(4, 2, 1)?).ok()?;
    let day = i8::try_from(part(6, 2, 1)?).ok()?;
    let hour = i8::try_from(part(8, 2, 0)?).ok()?;
    let minute = i8::try_from(part(10, 2, 0)?).ok()?;
    let second = i8::try_from(part(12, 2, 0)?).ok()?;
    let nanos = match fraction {
        None => 0,
        Some(f) if precision == Precision::Second && (1..=4).contains(&f.len()) => {
            num(f)? * 10i32.pow(9 - f.len() as u32)
        }
        Some(_) => return None,
    };
    let date = Date::new(year, month, day).ok()?;
    let time = Time::new(hour, minute, second, nanos).ok()?;
    let civil = DateTime::from_parts(date, time);
    let at = match offset {
        None => zone.to_ambiguous_timestamp(civil).compatible().ok()?,
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let d = &o[1..];
            let (h, m) = match d.len() {
                2 => (num(d)?, 0),
                4 => (num(&d[..2])?, num(&d[2..])?),
                _ => return None,
            };
            if h > 23 || m > 59 {
                return None;
            }
            let secs = sign * (h * 3600 + m * 60);
            // An offset is an exact duration, not a zone rule.
            Offset::from_seconds(secs).ok()?.to_timestamp(civil).ok()?
        }
    };
    Some(Dtm { at, precision })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp() -> TimeZone {
        TimeZone::get("America/Sao_Paulo").unwrap()
    }

    #[test]
    fn offsets_fractions_and_civil_times() {
        let d = parse("202108181130+0215", &sp()).unwrap();
        assert_eq!(d.at.to_string(), "2021-08-18T09:15:00Z");
        assert_eq!(d.precision, Precision::Minute);
        assert_eq!(
            parse("20261201093000-03", &sp()).unwrap().at.to_string(),
            "2026-12-01T12:30:00Z"
        );
        assert_eq!(
            parse("20261201093000.25", &sp()).unwrap().at.to_string(),
            "2026-12-01T12:30:00.25Z"
        );
        // No offset: civil time in the site's zone (UTC-3).
        assert_eq!(
            parse("202612010930", &sp()).unwrap().at.to_string(),
            "2026-12-01T12:30:00Z"
        );
        assert_eq!(parse("20261201", &sp()).unwrap().precision, Precision::Day);
    }

    #[test]
    fn impossible_or_malformed_values_are_none_not_panics() {
        for bad in [
            "20250231",
            "2025023",
            "20251301",
            "202512012460",
            "2025x201",
            "20251201+99",
            "20251201.5",
            "",
            "20251201123000.12345",
        ] {
            assert!(parse(bad, &sp()).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_civil_time_in_the_dst_gap_moves_forward() {
        let ny = TimeZone::get("America/New_York").unwrap();
        // 2026-03-08 02:30 does not exist in New York: it becomes 03:30 EDT.
        assert_eq!(
            parse("202603080230", &ny).unwrap().at.to_string(),
            "2026-03-08T07:30:00Z"
        );
    }
}
