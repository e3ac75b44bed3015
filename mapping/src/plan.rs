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
use crate::model::AppointmentStatus;

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
    /// A post-visit survey, sent `offset` after the end: a template with rating buttons (Good /
    /// OK / Poor), then, inside the window the answer opens, a 0-10 list and a comment.
    Survey,
    /// Sent `offset` after the end of a missed appointment, once the EHR marks it a no-show (to offer
    /// a new slot); withdrawn if the status changes again.
    NoShow,
    /// Sent as soon as a booked appointment moves to another location (a room, a clinic) at the
    /// same time: the patient must hear about it, not find the old room empty. Planned once per
    /// change (a newer change supersedes a pending one); valid until the start, not `min_lead`
    /// before it, since a room change just before the visit is when it matters most.
    LocationChange,
}

impl StepKind {
    /// The consent purpose a step of this kind needs. A no-show follow-up is about rebooking the
    /// missed slot: logistics, not care follow-up.
    pub fn purpose(self) -> Purpose {
        match self {
            Self::Confirmation | Self::Reminder | Self::NoShow | Self::LocationChange => {
                Purpose::Logistics
            }
            Self::FollowUp | Self::Survey => Purpose::FollowUp,
        }
    }

    /// The stored name (the outbox `kind` column), so that sender and scheduler agree on it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmation => "confirmation",
            Self::Reminder => "reminder",
            Self::FollowUp => "follow_up",
            Self::Survey => "survey",
            Self::NoShow => "no_show",
            Self::LocationChange => "location_change",
        }
    }

    /// Back from the stored name; `None` for a name this build does not know.
    pub fn from_name(s: &str) -> Option<StepKind> {
        Some(match s {
            "confirmation" => Self::Confirmation,
            "reminder" => Self::Reminder,
            "follow_up" => Self::FollowUp,
            "survey" => Self::Survey,
            "no_show" => Self::NoShow,
            "location_change" => Self::LocationChange,
            _ => return None,
        })
    }

    /// Whether an appointment in `status` should get (or still get) a step of this kind. The one
    /// rule the scheduler plans by and the sender re-checks at send time, so they cannot disagree.
    pub fn wanted_for(self, status: AppointmentStatus) -> bool {
        use AppointmentStatus as S;
        match self {
            Self::Confirmation | Self::Reminder | Self::LocationChange => status == S::Booked,
            Self::FollowUp | Self::Survey => {
                matches!(status, S::Booked | S::Arrived | S::CheckedIn | S::Fulfilled)
            }
            Self::NoShow => status == S::Noshow,
        }
    }

    /// Whether the step is timed from the end of the visit (it is about a visit that happened or
    /// was missed, so "the appointment has already started" is no reason to drop it).
    pub fn after_the_visit(self) -> bool {
        matches!(self, Self::FollowUp | Self::Survey | Self::NoShow)
    }
}

/// One configured step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// Unique step name, e.g. `reminder_48h`; part of the idempotency key of its message.
    pub name: String,
    /// What the step is about, which decides its timing and the statuses it is sent for.
    pub kind: StepKind,
    /// Before the start (reminders) or after the end (follow-ups); ignored for confirmations.
    pub offset: SignedDuration,
    /// Configured template key.
    pub template: String,
    /// Only appointments of these sites get the step (empty: every site). Plans differ per site.
    pub sites: Vec<String>,
    /// Only appointments whose service type is one of these (compared case-insensitively; empty:
    /// every appointment). Stored lower-case. The service type is PHI: never log what matched.
    pub service_types: Vec<String>,
}

impl StepSpec {
    /// A step for every site and appointment type (filters are added with struct update syntax).
    pub fn new(name: &str, kind: StepKind, offset: SignedDuration, template: &str) -> Self {
        StepSpec {
            name: name.to_string(),
            kind,
            offset,
            template: template.to_string(),
            sites: Vec::new(),
            service_types: Vec::new(),
        }
    }

    /// Priority lane under a backlog: nearer-term messages first (lower is sooner).
    pub fn lane(&self) -> i64 {
        match self.kind {
            // A room change is the most urgent news there is: ahead of every reminder.
            StepKind::LocationChange => -1,
            StepKind::Reminder => (self.offset.as_secs() / 60).clamp(0, 1_000_000),
            StepKind::Confirmation => 1_000_001,
            StepKind::NoShow => 1_000_002,
            StepKind::FollowUp => 1_000_003,
            StepKind::Survey => 1_000_004,
        }
    }

    /// Whether this step belongs to the plan of an appointment at `site` with `service_type`
    /// (per-site and per-appointment-type plans). An appointment without a service type matches
    /// only steps without a service-type filter.
    pub fn applies_to(&self, site: &str, service_type: Option<&str>) -> bool {
        let site_ok = self.sites.is_empty() || self.sites.iter().any(|s| s == site);
        let type_ok = self.service_types.is_empty()
            || service_type.is_some_and(|t| {
                let t = t.trim().to_lowercase();
                self.service_types.iter().any(|w| w.to_lowercase() == t)
            });
        site_ok && type_ok
    }
}

/// Local quiet hours, e.g. 21:00-08:00 (may wrap midnight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    /// Local time the quiet window begins (inclusive).
    pub start: Time,
    /// Local time it ends (exclusive); earlier than `start` when the window wraps midnight.
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
    /// Local hours in which no message is sent (patients asleep); `None`: any time.
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

/// When an appointment is: an exact slot, or a day whose time the source does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The start; for a day whose time is unknown, the first instant of that local day.
    pub start: Timestamp,
    /// The end, when the source gives one (never for a time-unknown day).
    pub end: Option<Timestamp>,
    /// Only the day is known ([`crate::model::Appointment::time_unknown`]).
    pub time_unknown: bool,
}

/// The first instant a step can be planned around: 1900-01-01T00:00:00Z.
pub const PLANNABLE_FROM: Timestamp = Timestamp::constant(-2_208_988_800, 0);
/// The end of the plannable years: 2200-01-01T00:00:00Z.
pub const PLANNABLE_UNTIL: Timestamp = Timestamp::constant(7_258_118_400, 0);

/// Local time of day-level steps that go in the morning when the site has no quiet hours (with
/// quiet hours they go when the quiet hours end).
pub const DAY_STEP_MORNING: Time = Time::constant(8, 0, 0, 0);
/// Local time, the evening before, of day-level reminders whose offset is under a day.
pub const DAY_STEP_EVENING: Time = Time::constant(18, 0, 0, 0);

/// Plans one step for an appointment starting at `start` (ending at `end`) in `zone`.
pub fn plan_step(
    spec: &StepSpec,
    start: Timestamp,
    end: Option<Timestamp>,
    zone: &TimeZone,
    now: Timestamp,
    policy: &PlanPolicy,
) -> StepOutcome {
    plan_slot(
        spec,
        Slot {
            start,
            end,
            time_unknown: false,
        },
        zone,
        now,
        policy,
    )
}

/// Plans one step for a slot. A day whose time is unknown gets day-level steps, since "2 hours
/// before" a time nobody knows means nothing: a reminder of `offset` >= 24 h goes that many whole
/// days before the day, in the morning (when quiet hours end; 08:00 without them), one under 24 h
/// the evening before (18:00); a confirmation goes as usual. All of them expire when the day
/// begins (the sender re-checks the slot against its start, the first instant of the day), so
/// none arrives on the day itself, when it could be after the visit. Follow-ups and no-show
/// messages are timed from the end of the day.
pub fn plan_slot(
    spec: &StepSpec,
    slot: Slot,
    zone: &TimeZone,
    now: Timestamp,
    policy: &PlanPolicy,
) -> StepOutcome {
    // Times from a feed can be anything a parser accepts (year 9999); the offsets below would
    // overflow near the end of time, so nothing outside the plannable years is planned.
    let plannable = PLANNABLE_FROM..PLANNABLE_UNTIL;
    if !plannable.contains(&slot.start) || slot.end.is_some_and(|e| !plannable.contains(&e)) {
        return StepOutcome::Dropped(
            "the appointment's time is outside the years 1900-2199; nothing is planned".into(),
        );
    }
    if slot.time_unknown {
        return plan_day(spec, slot.start, zone, now, policy);
    }
    let Slot { start, end, .. } = slot;
    let end = end.unwrap_or_else(|| start + policy.default_duration);
    let (intended, expires) = match spec.kind {
        StepKind::Confirmation => (now, start - policy.min_lead),
        StepKind::LocationChange => (now, start),
        StepKind::Reminder => (start - spec.offset, start - policy.min_lead),
        StepKind::FollowUp | StepKind::Survey => {
            let due = end + spec.offset;
            (due, due + SignedDuration::from_hours(24))
        }
        StepKind::NoShow => {
            // The EHR often records a no-show hours after the slot: within the day after the
            // intended moment, the message still helps the patient rebook, so it goes now.
            let due = end + spec.offset;
            let expires = due + SignedDuration::from_hours(24);
            (if now < expires { due.max(now) } else { due }, expires)
        }
    };
    if !spec.kind.after_the_visit() && now >= start {
        return StepOutcome::Dropped("the appointment has already started".into());
    }
    place(intended, expires, zone, now, policy, false)
}

/// Day-level planning of [`plan_slot`] for a day whose time is unknown; `day_start` is the first
/// instant of that local day.
fn plan_day(
    spec: &StepSpec,
    day_start: Timestamp,
    zone: &TimeZone,
    now: Timestamp,
    policy: &PlanPolicy,
) -> StepOutcome {
    let day = day_start.to_zoned(zone.clone()).date();
    let at = |date: jiff::civil::Date, time: Time| {
        zone.to_ambiguous_zoned(date.to_datetime(time))
            .compatible()
            .map(|z| z.timestamp())
            .unwrap_or(day_start)
    };
    let day_end = day
        .tomorrow()
        .ok()
        .and_then(|d| d.to_zoned(zone.clone()).ok())
        .map(|z| z.timestamp())
        .unwrap_or(day_start + SignedDuration::from_hours(24));
    let morning = policy.quiet_hours.map_or(DAY_STEP_MORNING, |q| q.end);
    let (intended, expires) = match spec.kind {
        StepKind::Confirmation | StepKind::LocationChange => (now, day_start),
        StepKind::Reminder => {
            let days = spec.offset.as_secs() / 86_400;
            let (date, time) = if days >= 1 {
                (day.checked_sub(jiff::Span::new().days(days)).ok(), morning)
            } else {
                (day.yesterday().ok(), DAY_STEP_EVENING)
            };
            match date {
                Some(date) => (at(date, time), day_start),
                None => {
                    return StepOutcome::Dropped("the appointment's day is out of range".into());
                }
            }
        }
        StepKind::FollowUp | StepKind::Survey => {
            let due = day_end + spec.offset;
            (due, due + SignedDuration::from_hours(24))
        }
        StepKind::NoShow => {
            let due = day_end + spec.offset;
            let expires = due + SignedDuration::from_hours(24);
            (if now < expires { due.max(now) } else { due }, expires)
        }
    };
    if !spec.kind.after_the_visit() && now >= day_start {
        return StepOutcome::Dropped(
            "the appointment's day has begun (its time is unknown, so nothing is sent on the day)"
                .into(),
        );
    }
    place(intended, expires, zone, now, policy, true)
}

/// The common end of planning: drop a step that cannot be useful, else move it out of quiet hours.
fn place(
    intended: Timestamp,
    expires: Timestamp,
    zone: &TimeZone,
    now: Timestamp,
    policy: &PlanPolicy,
    day_level: bool,
) -> StepOutcome {
    let useful = |t: Timestamp| t >= now - policy.late_grace && t < expires;
    if !useful(intended) {
        return StepOutcome::Dropped(if intended >= expires && day_level {
            "the appointment's time is unknown, and there is no day left before it for a day-level message".into()
        } else if intended >= expires {
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
        StepSpec::new(
            &format!("reminder_{h}h"),
            StepKind::Reminder,
            SignedDuration::from_hours(h),
            "reminder",
        )
    }

    fn due_of(out: StepOutcome) -> (Timestamp, Option<String>) {
        match out {
            StepOutcome::Due { due, note, .. } => (due, note),
            other => panic!("{other:?}"),
        }
    }

    fn ny() -> TimeZone {
        TimeZone::get("America/New_York").unwrap()
    }

    #[test]
    fn a_0230_appointment_on_the_spring_forward_day_is_0330_and_reminded_exactly() {
        // 2026-03-08 02:30 does not exist in New York (02:00 EST jumps to 03:00 EDT): the civil
        // time resolves to 03:30 EDT = 07:30Z, as the connectors read it.
        let start = jiff::civil::datetime(2026, 3, 8, 2, 30, 0, 0)
            .to_zoned(ny())
            .unwrap()
            .timestamp();
        assert_eq!(start, ts("2026-03-08T07:30:00Z"));
        assert_eq!(start.to_zoned(ny()).time(), Time::constant(3, 30, 0, 0));
        let now = ts("2026-03-01T00:00:00Z");
        // Without quiet hours the 2 h reminder is two real hours earlier: 00:30 EST.
        let (due, note) = due_of(plan_step(
            &reminder(2),
            start,
            None,
            &ny(),
            now,
            &PlanPolicy::default(),
        ));
        assert_eq!(due, ts("2026-03-08T05:30:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(0, 30, 0, 0));
        assert!(note.is_none());
        // With 21:00-08:00 quiet hours, 00:30 is quiet; 08:00 EDT is after the start, so the
        // reminder moves to 20:59 EST the evening before.
        let (due, note) = due_of(plan_step(
            &reminder(2),
            start,
            None,
            &ny(),
            now,
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-03-08T01:59:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(20, 59, 0, 0));
        assert!(note.unwrap().contains("before quiet hours"));
        // The 48 h reminder is 48 real hours earlier: 02:30 EST on 6 March, quiet; 08:00 EST that
        // morning is nearer than 20:59 the evening before.
        let (due, _) = due_of(plan_step(
            &reminder(48),
            start,
            None,
            &ny(),
            now,
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-03-06T13:00:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(8, 0, 0, 0));
    }

    #[test]
    fn location_change_goes_now_and_stays_valid_until_the_start_not_min_lead() {
        let spec = StepSpec::new(
            "location_change",
            StepKind::LocationChange,
            SignedDuration::ZERO,
            "moved",
        );
        let start = ts("2026-12-20T13:00:00Z");
        // Ten minutes before the start (inside the 30 min minimum lead): still worth telling.
        let now = ts("2026-12-20T12:50:00Z");
        let policy = PlanPolicy::default();
        match plan_step(&spec, start, None, &TimeZone::UTC, now, &policy) {
            StepOutcome::Due { due, expires, .. } => {
                assert_eq!(due, now);
                assert_eq!(expires, start);
            }
            other => panic!("{other:?}"),
        }
        // A confirmation at the same moment is dropped (min lead): the kinds differ on purpose.
        let confirmation = StepSpec::new("c", StepKind::Confirmation, SignedDuration::ZERO, "c");
        assert!(matches!(
            plan_step(&confirmation, start, None, &TimeZone::UTC, now, &policy),
            StepOutcome::Dropped(_)
        ));
        // Once the visit has started, a room change is not announced.
        assert!(matches!(
            plan_step(&spec, start, None, &TimeZone::UTC, start, &policy),
            StepOutcome::Dropped(_)
        ));
        assert_eq!(
            StepKind::from_name("location_change"),
            Some(StepKind::LocationChange)
        );
        assert!(spec.lane() < reminder(0).lane(), "ahead of every reminder");
        assert_eq!(StepKind::LocationChange.purpose(), Purpose::Logistics);
    }

    #[test]
    fn reminder_48h_is_exact_hours_across_spring_forward() {
        // 10:00 EDT on 9 March (14:00Z); 48 real hours earlier is 09:00 EST on the 7th.
        let out = plan_step(
            &reminder(48),
            ts("2026-03-09T14:00:00Z"),
            None,
            &ny(),
            ts("2026-03-01T00:00:00Z"),
            &quiet_policy(),
        );
        let (due, note) = due_of(out);
        assert_eq!(due, ts("2026-03-07T14:00:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(9, 0, 0, 0));
        assert!(note.is_none());
    }

    #[test]
    fn quiet_hours_end_at_local_0800_on_the_spring_forward_day() {
        // The quiet night of 7-8 March starts at 21:00 EST (02:00Z) and ends at 08:00 EDT (12:00Z):
        // 10 real hours. A 5 h reminder for 10:00 EDT (14:00Z) is due 05:00 EDT (09:00Z), quiet;
        // it moves to 08:00 EDT, which is 12:00Z (not 13:00Z as with the winter offset).
        let (due, note) = due_of(plan_step(
            &reminder(5),
            ts("2026-03-08T14:00:00Z"),
            None,
            &ny(),
            ts("2026-03-01T00:00:00Z"),
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-03-08T12:00:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(8, 0, 0, 0));
        assert!(note.unwrap().contains("after quiet hours"));
        // An 8 h reminder (06:00Z = 01:00 EST) is nearer to 20:59 EST the evening before (01:59Z).
        let (due, _) = due_of(plan_step(
            &reminder(8),
            ts("2026-03-08T14:00:00Z"),
            None,
            &ny(),
            ts("2026-03-01T00:00:00Z"),
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-03-08T01:59:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(20, 59, 0, 0));
    }

    #[test]
    fn quiet_hours_on_the_fall_back_day() {
        // 1 November: 02:00 EDT falls back to 01:00 EST at 06:00Z; the quiet night of 31 Oct - 1
        // Nov runs 21:00 EDT (01:00Z) to 08:00 EST (13:00Z): 12 real hours.
        let start = ts("2026-11-01T15:00:00Z"); // 10:00 EST
        // 9 h before is 06:00Z = 01:00 EST (the second 01:00): nearer to 20:59 EDT (00:59Z).
        let (due, _) = due_of(plan_step(
            &reminder(9),
            start,
            None,
            &ny(),
            ts("2026-10-20T00:00:00Z"),
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-11-01T00:59:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(20, 59, 0, 0));
        // 5 h before is 10:00Z = 05:00 EST: moved to 08:00 EST = 13:00Z (not 12:00Z).
        let (due, note) = due_of(plan_step(
            &reminder(5),
            start,
            None,
            &ny(),
            ts("2026-10-20T00:00:00Z"),
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-11-01T13:00:00Z"));
        assert_eq!(due.to_zoned(ny()).time(), Time::constant(8, 0, 0, 0));
        assert!(note.unwrap().contains("after quiet hours"));
        // An ambiguous 01:30 appointment (the first, EDT one = 05:30Z): its 2 h reminder at
        // 03:30Z = 23:30 EDT is quiet; 08:00 is after the start, so 20:59 EDT (00:59Z).
        let start = jiff::civil::datetime(2026, 11, 1, 1, 30, 0, 0)
            .to_zoned(ny())
            .unwrap()
            .timestamp();
        assert_eq!(start, ts("2026-11-01T05:30:00Z"));
        let (due, _) = due_of(plan_step(
            &reminder(2),
            start,
            None,
            &ny(),
            ts("2026-10-20T00:00:00Z"),
            &quiet_policy(),
        ));
        assert_eq!(due, ts("2026-11-01T00:59:00Z"));
    }

    #[test]
    fn a_no_show_follow_up_is_timed_from_the_end_and_survives_a_late_status() {
        let spec = StepSpec::new(
            "no_show_2h",
            StepKind::NoShow,
            SignedDuration::from_hours(2),
            "rebook",
        );
        let start = ts("2026-06-10T14:00:00Z");
        let end = Some(ts("2026-06-10T14:30:00Z"));
        // Marked a no-show right after the visit: due 2 h after the end.
        let (due, _) = due_of(plan_step(
            &spec,
            start,
            end,
            &TimeZone::UTC,
            ts("2026-06-10T15:00:00Z"),
            &PlanPolicy::default(),
        ));
        assert_eq!(due, ts("2026-06-10T16:30:00Z"));
        // Marked the next morning: sent now, not dropped.
        let now = ts("2026-06-11T09:00:00Z");
        let (due, _) = due_of(plan_step(
            &spec,
            start,
            end,
            &TimeZone::UTC,
            now,
            &PlanPolicy::default(),
        ));
        assert_eq!(due, now);
        // Two days later it is no use any more.
        let out = plan_step(
            &spec,
            start,
            end,
            &TimeZone::UTC,
            ts("2026-06-13T09:00:00Z"),
            &PlanPolicy::default(),
        );
        assert!(matches!(out, StepOutcome::Dropped(_)), "{out:?}");
        assert!(StepKind::NoShow.wanted_for(AppointmentStatus::Noshow));
        assert!(!StepKind::NoShow.wanted_for(AppointmentStatus::Booked));
        assert!(!StepKind::Reminder.wanted_for(AppointmentStatus::Noshow));
    }

    #[test]
    fn step_filters_match_site_and_service_type_case_insensitively() {
        let mut s = reminder(2);
        assert!(s.applies_to("any", None));
        s.sites = vec!["newyork".into()];
        s.service_types = vec!["telehealth".into()];
        assert!(s.applies_to("newyork", Some(" TeleHealth ")));
        assert!(!s.applies_to("newyork", Some("Office Visit")));
        assert!(!s.applies_to("newyork", None));
        assert!(!s.applies_to("saopaulo", Some("telehealth")));
        for k in [
            StepKind::Confirmation,
            StepKind::Reminder,
            StepKind::FollowUp,
            StepKind::Survey,
            StepKind::NoShow,
        ] {
            assert_eq!(StepKind::from_name(k.as_str()), Some(k));
        }
    }

    fn day(start: &str) -> Slot {
        Slot {
            start: ts(start),
            end: None,
            time_unknown: true,
        }
    }

    #[test]
    fn a_day_whose_time_is_unknown_gets_day_level_steps_never_on_the_day() {
        // 3 December 2026 in New York, time unknown: its first instant is 05:00Z.
        let slot = day("2026-12-03T05:00:00Z");
        // 13:00 EST, outside quiet hours.
        let now = ts("2026-11-25T18:00:00Z");
        let plan = |spec: &StepSpec, now: Timestamp, policy: &PlanPolicy| {
            plan_slot(spec, slot, &ny(), now, policy)
        };
        // 48 h: two days before, in the morning (08:00 EST), expiring as the day begins.
        for policy in [PlanPolicy::default(), quiet_policy()] {
            assert_eq!(
                plan(&reminder(48), now, &policy),
                StepOutcome::Due {
                    due: ts("2026-12-01T13:00:00Z"),
                    expires: ts("2026-12-03T05:00:00Z"),
                    note: None
                }
            );
        }
        // 2 h before a time nobody knows: the evening before (18:00 EST), not "22:00 the day before".
        assert_eq!(
            plan(&reminder(2), now, &quiet_policy()),
            StepOutcome::Due {
                due: ts("2026-12-02T23:00:00Z"),
                expires: ts("2026-12-03T05:00:00Z"),
                note: None
            }
        );
        // A confirmation goes now; on the day itself, nothing before the visit is sent.
        let confirmation = StepSpec::new(
            "confirmation",
            StepKind::Confirmation,
            SignedDuration::ZERO,
            "booked",
        );
        assert!(matches!(
            plan(&confirmation, now, &quiet_policy()),
            StepOutcome::Due { due, .. } if due == now
        ));
        let on_the_day = ts("2026-12-03T14:00:00Z");
        for spec in [&confirmation, &reminder(2), &reminder(48)] {
            match plan(spec, on_the_day, &quiet_policy()) {
                StepOutcome::Dropped(r) => assert!(r.contains("day has begun"), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        // The evening before at 18:30: the 2 h reminder's moment has passed.
        assert!(matches!(
            plan(
                &reminder(2),
                ts("2026-12-02T23:30:00Z"),
                &PlanPolicy::default()
            ),
            StepOutcome::Dropped(_)
        ));
        // Follow-ups are timed from the end of the day.
        let follow_up = StepSpec::new(
            "follow_up",
            StepKind::FollowUp,
            SignedDuration::from_hours(24),
            "follow_up",
        );
        assert!(matches!(
            plan(&follow_up, now, &PlanPolicy::default()),
            StepOutcome::Due { due, .. } if due == ts("2026-12-05T05:00:00Z")
        ));
        // With the time known, the same start is an appointment at 00:00, planned to the hour.
        let exact = Slot {
            time_unknown: false,
            ..slot
        };
        assert!(matches!(
            plan_slot(&reminder(2), exact, &ny(), now, &PlanPolicy::default()),
            StepOutcome::Due { due, .. } if due == ts("2026-12-03T03:00:00Z")
        ));
    }

    #[test]
    fn day_level_reminders_across_spring_forward_use_local_mornings() {
        // 8 March 2026 begins at 00:00 EST (05:00Z); 6 March 08:00 is EST, 7 March 18:00 too.
        let slot = day("2026-03-08T05:00:00Z");
        let now = ts("2026-03-01T00:00:00Z");
        let due = |h| match plan_slot(&reminder(h), slot, &ny(), now, &quiet_policy()) {
            StepOutcome::Due { due, .. } => due,
            other => panic!("{other:?}"),
        };
        assert_eq!(due(48), ts("2026-03-06T13:00:00Z"));
        assert_eq!(due(24), ts("2026-03-07T13:00:00Z"));
        assert_eq!(due(2), ts("2026-03-07T23:00:00Z"));
    }

    /// Found by `cargo fuzz`: feeds accept years up to 9999, and a follow-up 24 h after an end in
    /// 9999-12-31 overflowed the timestamp (a panic in the scheduler, on every pass).
    #[test]
    fn fuzz_overflow_an_appointment_at_the_end_of_time_is_dropped_not_a_panic() {
        let end_of_time = Timestamp::MAX - SignedDuration::from_hours(1);
        let follow_up = StepSpec::new(
            "follow_up",
            StepKind::FollowUp,
            SignedDuration::from_hours(24),
            "follow_up",
        );
        for slot in [
            Slot {
                start: end_of_time,
                end: None,
                time_unknown: false,
            },
            Slot {
                start: ts("2026-12-03T05:00:00Z"),
                end: Some(end_of_time),
                time_unknown: false,
            },
            Slot {
                start: Timestamp::MIN,
                end: None,
                time_unknown: true,
            },
        ] {
            for spec in [&follow_up, &reminder(48)] {
                match plan_slot(
                    spec,
                    slot,
                    &ny(),
                    ts("2026-11-25T18:00:00Z"),
                    &PlanPolicy::default(),
                ) {
                    StepOutcome::Dropped(r) => assert!(r.contains("1900-2199"), "{r}"),
                    other => panic!("{other:?}"),
                }
            }
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
