//! Reminder plans: when each step of an appointment's message plan is due, in the site's time zone.
//!
//! Pure functions over (appointment times, site zone, now, policy). Offsets are exact durations (48 h
//! before is 48 real hours, also across a DST change); quiet hours are local wall-clock times; every
//! step gets an expiry so that a message delayed by an outage can never arrive too late.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use serde::{Deserialize, Serialize};

use crate::consent::Purpose;

/// The kinds of step a plan can contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// Sent as soon as the booking is known.
    Confirmation,
    /// Sent `offset` before the start.
    Reminder,
    /// Sent `offset` after the end.
    FollowUp,
}

impl StepKind {
    /// The consent purpose a step of this kind needs.
    pub fn purpose(self) -> Purpose {
        match self {
            Self::Confirmation | Self::Reminder => Purpose::Logistics,
            Self::FollowUp => Purpose::FollowUp,
        }
    }
}

/// One configured step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// Unique step name, e.g. `reminder_48h`; part of the idempotency key of its message.
    pub name: String,
    pub kind: StepKind,
    /// Before the start (reminders) or after the end (follow-ups); ignored for confirmations.
    pub offset: SignedDuration,
    /// Configured template key.
    pub template: String,
}

impl StepSpec {
    /// Priority lane under a backlog: nearer-term messages first (lower is sooner).
    pub fn lane(&self) -> i64 {
        match self.kind {
            StepKind::Reminder => (self.offset.as_secs() / 60).clamp(0, 1_000_000),
            StepKind::Confirmation => 1_000_001,
            StepKind::FollowUp => 1_000_002,
        }
    }
}

/// Local quiet hours, e.g. 21:00-08:00 (may wrap midnight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start: Time,
    pub end: Time,
}

impl QuietHours {
    fn contains(&self, t: Time) -> bool {
        if self.start <= self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// Site policy for planning.
#[derive(Clone, Debug)]
pub struct PlanPolicy {
    pub quiet_hours: Option<QuietHours>,
    /// A reminder must arrive at least this long before the start, or it is dropped.
    pub min_lead: SignedDuration,
    /// How late (relative to its intended time) a step may still be planned.
    pub late_grace: SignedDuration,
    /// Assumed duration when the source gives no end time.
    pub default_duration: SignedDuration,
}

impl Default for PlanPolicy {
    fn default() -> Self {
        PlanPolicy {
            quiet_hours: None,
            min_lead: SignedDuration::from_mins(30),
            late_grace: SignedDuration::from_mins(15),
            default_duration: SignedDuration::from_mins(30),
        }
    }
}

/// The planned outcome of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// Send at `due`, never after `expires`. `note` explains a move (quiet hours).
    Due {
        due: Timestamp,
        expires: Timestamp,
        note: Option<String>,
    },
    /// Not sent, with the reason shown by `medrelay explain`.
    Dropped(String),
}

/// Plans one step for an appointment starting at `start` (ending at `end`) in `zone`.
pub fn plan_step(
    spec: &StepSpec,
    start: Timestamp,
    end: Option<Timestamp>,
    zone: &TimeZone,
    now: Timestamp,
    policy: &PlanPolicy,
) -> StepOutcome {
    let end = end.unwrap_or_else(|| start + policy.default_duration);
    let (intended, expires) = match spec.kind {
        StepKind::Confirmation => (now, start - policy.min_lead),
        StepKind::Reminder => (start - spec.offset, start - policy.min_lead),
        StepKind::FollowUp => {
            let due = end + spec.offset;
            (due, due + SignedDuration::from_hours(24))
        }
    };
    let useful = |t: Timestamp| t >= now - policy.late_grace && t < expires;
    if spec.kind != StepKind::FollowUp && now >= start {
        return StepOutcome::Dropped("the appointment has already started".into());
    }
    if !useful(intended) {
        return StepOutcome::Dropped(if intended >= expires {
            format!(
                "less than the minimum lead of {} before the start",
                fmt_duration(policy.min_lead)
            )
        } else {
            "its time had already passed when the appointment was planned".into()
        });
    }
    // Confirmations that were due a moment ago go now, not in the past.
    let intended = intended.max(now);
    let Some(quiet) = policy.quiet_hours else {
        return StepOutcome::Due {
            due: intended,
            expires,
            note: None,
        };
    };
    let local = intended.to_zoned(zone.clone());
    if !quiet.contains(local.time()) {
        return StepOutcome::Due {
            due: intended,
            expires,
            note: None,
        };
    }
    // The quiet window containing `intended`: it began today, or yesterday if it wraps midnight and
    // we are in its morning part.
    let began_yesterday = quiet.start > quiet.end && local.time() < quiet.end;
    let start_date = if began_yesterday {
        local.date().yesterday().unwrap_or(local.date())
    } else {
        local.date()
    };
    let end_date = if quiet.start > quiet.end {
        start_date.tomorrow().unwrap_or(start_date)
    } else {
        start_date
    };
    let window_start = start_date.to_datetime(quiet.start).to_zoned(zone.clone());
    let window_end = end_date.to_datetime(quiet.end).to_zoned(zone.clone());
    let (Ok(window_start), Ok(window_end)) = (window_start, window_end) else {
        return StepOutcome::Due {
            due: intended,
            expires,
            note: None,
        };
    };
    let before = window_start
        .checked_sub(1.minute())
        .map(|z| z.timestamp())
        .unwrap_or(intended);
    let after = window_end.timestamp();
    let mut candidates: Vec<(Timestamp, &str)> = [(before, "before"), (after, "after")]
        .into_iter()
        .filter(|(t, _)| useful(*t) && *t >= now)
        .collect();
    candidates.sort_by_key(|(t, which)| (t.duration_since(intended).abs(), *which != "before"));
    match candidates.first() {
        Some((due, which)) => StepOutcome::Due {
            due: *due,
            expires,
            note: Some(format!(
                "moved {which} quiet hours ({}-{} local)",
                quiet.start.strftime("%H:%M"),
                quiet.end.strftime("%H:%M")
            )),
        },
        None => StepOutcome::Dropped(
            "falls in quiet hours and no allowed moment is early enough".into(),
        ),
    }
}

/// Formats a duration as `48h`, `90m` or `2h30m` for humans.
pub fn fmt_duration(d: SignedDuration) -> String {
    let mins = d.as_secs() / 60;
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m}m"),
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m}m"),
    }
}

/// Parses `48h`, `2h`, `30m`, `1d`, `2h30m` into a duration (config syntax).
pub fn parse_duration(s: &str) -> Option<SignedDuration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = 0i64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(SignedDuration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn reminder(h: i64) -> StepSpec {
        StepSpec {
            name: format!("reminder_{h}h"),
            kind: StepKind::Reminder,
            offset: SignedDuration::from_hours(h),
            template: "reminder".into(),
        }
    }

    fn quiet_policy() -> PlanPolicy {
        PlanPolicy {
            quiet_hours: Some(QuietHours {
                start: Time::constant(21, 0, 0, 0),
                end: Time::constant(8, 0, 0, 0),
            }),
            min_lead: SignedDuration::from_hours(1),
            ..PlanPolicy::default()
        }
    }

    #[test]
    fn reminder_48h_is_exact_hours_across_fall_back() {
        // New York falls back on 2026-11-01. A 10:00 EST appointment on Nov 2 (15:00Z):
        let zone = TimeZone::get("America/New_York").unwrap();
        let out = plan_step(
            &reminder(48),
            ts("2026-11-02T15:00:00Z"),
            None,
            &zone,
            ts("2026-10-20T00:00:00Z"),
            &PlanPolicy::default(),
        );
        let StepOutcome::Due { due, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(due, ts("2026-10-31T15:00:00Z"));
        // 48 real hours earlier is 11:00 EDT local time, one hour "later" on the wall clock.
        assert_eq!(due.to_zoned(zone).time(), Time::constant(11, 0, 0, 0));
    }

    #[test]
    fn quiet_hours_move_a_late_evening_reminder_earlier() {
        // 2 h before an 08:30 appointment is 06:30, inside 21:00-08:00. 08:00 is only 30 min before
        // (less than the 1 h lead), so it moves to 20:59 the evening before.
        let zone = TimeZone::get("America/Sao_Paulo").unwrap();
        let start = ts("2026-06-10T11:30:00Z"); // 08:30 -03
        let out = plan_step(
            &reminder(2),
            start,
            None,
            &zone,
            ts("2026-06-01T00:00:00Z"),
            &quiet_policy(),
        );
        let StepOutcome::Due { due, note, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(due, ts("2026-06-09T23:59:00Z")); // 20:59 -03
        assert!(note.unwrap().contains("before quiet hours"));
    }

    #[test]
    fn quiet_hours_prefer_the_nearer_allowed_moment() {
        // 48 h before a 15:00 appointment is 15:00: fine. 24 h + 9 h before: due 06:00 -> 08:00 is nearer
        // than 20:59 the day before.
        let zone = TimeZone::get("America/Sao_Paulo").unwrap();
        let start = ts("2026-06-10T18:00:00Z"); // 15:00 -03
        let out = plan_step(
            &reminder(33),
            start,
            None,
            &zone,
            ts("2026-06-01T00:00:00Z"),
            &quiet_policy(),
        );
        let StepOutcome::Due { due, .. } = out else {
            panic!("{out:?}")
        };
        assert_eq!(due, ts("2026-06-09T11:00:00Z")); // 08:00 -03
    }

    #[test]
    fn a_step_whose_time_has_passed_is_dropped_with_a_reason() {
        let zone = TimeZone::UTC;
        let out = plan_step(
            &reminder(48),
            ts("2026-06-10T12:00:00Z"),
            None,
            &zone,
            ts("2026-06-09T12:00:00Z"),
            &PlanPolicy::default(),
        );
        assert!(matches!(out, StepOutcome::Dropped(r) if r.contains("already passed")));
        let out = plan_step(
            &reminder(2),
            ts("2026-06-10T12:00:00Z"),
            None,
            &zone,
            ts("2026-06-10T12:00:01Z"),
            &PlanPolicy::default(),
        );
        assert!(matches!(out, StepOutcome::Dropped(r) if r.contains("already started")));
    }

    #[test]
    fn every_due_step_expires_before_the_start() {
        let zone = TimeZone::UTC;
        let start = ts("2026-06-10T12:00:00Z");
        for h in [1, 2, 24, 48] {
            if let StepOutcome::Due { due, expires, .. } = plan_step(
                &reminder(h),
                start,
                None,
                &zone,
                ts("2026-06-01T00:00:00Z"),
                &PlanPolicy::default(),
            ) {
                assert!(due < expires && expires <= start);
            }
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("48h"), Some(SignedDuration::from_hours(48)));
        assert_eq!(
            parse_duration("2h30m"),
            Some(SignedDuration::from_mins(150))
        );
        assert_eq!(parse_duration("1d"), Some(SignedDuration::from_hours(24)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(fmt_duration(SignedDuration::from_mins(150)), "2h30m");
    }
}
