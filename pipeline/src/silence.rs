//! Feeds that go quiet. A nightly export that did not arrive, or an interface engine that stopped
//! sending, looks exactly like a quiet day, and tomorrow's patients get no reminder. A feed can be
//! expected to deliver every so often (`every`) or each day by a local time (`daily_by`); when it
//! does not, one `feed_silent` alert fires for it, and it recovers when input arrives.

use std::collections::HashMap;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use tracing::{info, warn};

use crate::store::{Store, StoreResult};

/// Alert kind for a feed that delivered nothing when it was expected to.
pub const FEED_SILENT_ALERT: &str = "feed_silent";

/// When a feed is expected to deliver.
#[derive(Clone, Debug)]
pub enum Expectation {
    /// At least once in any period of this length (an MLLP stream, a FHIR subscription).
    Every(SignedDuration),
    /// At least once each day before this local time, counted from the same time the day before
    /// (the nightly CSV: due by 06:00).
    DailyBy { time: Time, zone: TimeZone },
}

impl Expectation {
    /// The instant since which an input must have arrived, judged at `now`.
    pub fn required_since(&self, now: Timestamp) -> Timestamp {
        match self {
            Expectation::Every(d) => now - *d,
            Expectation::DailyBy { time, zone } => {
                let local = now.to_zoned(zone.clone());
                let at = |date: jiff::civil::Date| {
                    zone.to_ambiguous_zoned(date.to_datetime(*time))
                        .compatible()
                        .map(|z| z.timestamp())
                        .unwrap_or(now)
                };
                // The latest deadline that has passed, then the one a day before it.
                let today = at(local.date());
                let latest = if now >= today {
                    local.date()
                } else {
                    local.date().yesterday().unwrap_or(local.date())
                };
                latest
                    .checked_sub(1.day())
                    .map(at)
                    .unwrap_or(now - SignedDuration::from_hours(24))
            }
        }
    }

    /// In words, for the alert.
    pub fn describe(&self) -> String {
        match self {
            Expectation::Every(d) => {
                format!(
                    "expected at least every {}",
                    medrelay_mapping::plan::fmt_duration(*d)
                )
            }
            Expectation::DailyBy { time, zone } => format!(
                "expected each day by {} {}",
                time.strftime("%H:%M"),
                zone.iana_name().unwrap_or("UTC")
            ),
        }
    }
}

/// One feed and when it should deliver.
#[derive(Clone, Debug)]
pub struct FeedWatch {
    /// The connector's name (how its inputs are recorded).
    pub feed: String,
    pub expect: Expectation,
}

/// Whether a feed whose last input was `last` is overdue at `now`. A feed that never delivered
/// counts from `watching_since` (the service start), so a new installation is not alarmed at once.
pub fn overdue(
    expect: &Expectation,
    last: Option<Timestamp>,
    watching_since: Timestamp,
    now: Timestamp,
) -> bool {
    last.unwrap_or(watching_since) < expect.required_since(now)
}

/// Raises or resolves the `feed_silent` alert of every watched feed; returns how many are silent.
pub async fn check(
    store: &Store,
    watches: &[FeedWatch],
    watching_since: Timestamp,
    now: Timestamp,
) -> StoreResult<usize> {
    if watches.is_empty() {
        return Ok(0);
    }
    let last: HashMap<String, Timestamp> = store.last_inputs().await?;
    let mut silent = 0;
    for w in watches {
        let key = format!("feed {}", w.feed);
        let seen = last.get(&w.feed).copied();
        if overdue(&w.expect, seen, watching_since, now) {
            silent += 1;
            let since = match seen {
                Some(t) => format!("no input since {t}"),
                None => format!("no input at all (watched since {watching_since})"),
            };
            let fired = store
                .raise_incident(
                    FEED_SILENT_ALERT,
                    &key,
                    &format!("{key}: {since}; {}", w.expect.describe()),
                    now,
                )
                .await?;
            if fired {
                warn!(feed = %w.feed, "feed silent past its expected time (alert feed_silent)");
            }
        } else if store.resolve_incident(FEED_SILENT_ALERT, &key, now).await? > 0 {
            info!(feed = %w.feed, "feed delivered again (alert feed_silent resolved)");
        }
    }
    Ok(silent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nightly_export_due_by_six_counts_from_six_the_day_before() {
        let e = Expectation::DailyBy {
            time: Time::constant(6, 0, 0, 0),
            zone: TimeZone::get("America/Sao_Paulo").unwrap(),
        };
        let start = ts("2026-11-01T00:00:00Z");
        // 06:00 in São Paulo is 09:00Z. At 08:59Z on the 3rd, yesterday's deadline rules: an
        // export that arrived at 02:00 local on the 2nd (05:00Z) is fine.
        assert_eq!(
            e.required_since(ts("2026-12-03T08:59:00Z")),
            ts("2026-12-01T09:00:00Z")
        );
        assert!(!overdue(
            &e,
            Some(ts("2026-12-02T05:00:00Z")),
            start,
            ts("2026-12-03T08:59:00Z")
        ));
        // From 06:00 local on the 3rd, the export of the night of the 3rd is needed.
        assert!(overdue(
            &e,
            Some(ts("2026-12-02T05:00:00Z")),
            start,
            ts("2026-12-03T09:00:00Z")
        ));
        assert!(!overdue(
            &e,
            Some(ts("2026-12-03T05:00:00Z")),
            start,
            ts("2026-12-03T09:00:00Z")
        ));
        assert!(e.describe().contains("06:00 America/Sao_Paulo"));
    }

    #[test]
    fn stream_expected_every_two_hours_and_a_new_installation_gets_its_grace() {
        let e = Expectation::Every(SignedDuration::from_hours(2));
        let now = ts("2026-12-03T12:00:00Z");
        assert!(overdue(
            &e,
            Some(ts("2026-12-03T09:59:00Z")),
            ts("2026-11-01T00:00:00Z"),
            now
        ));
        assert!(!overdue(
            &e,
            Some(ts("2026-12-03T10:01:00Z")),
            ts("2026-11-01T00:00:00Z"),
            now
        ));
        // Never delivered, but the service started an hour ago: not yet.
        assert!(!overdue(&e, None, ts("2026-12-03T11:00:00Z"), now));
        assert!(overdue(&e, None, ts("2026-12-03T09:00:00Z"), now));
        // A restart grants no grace to a feed that did deliver: its silence is still silence.
        assert!(overdue(
            &e,
            Some(ts("2026-12-01T00:00:00Z")),
            ts("2026-12-03T11:00:00Z"),
            now
        ));
    }
}
