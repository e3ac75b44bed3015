//! The staff inbox's rules: when a staff answer is due (the reply SLA counted in the site's
//! opening hours), what a reply may be (a text inside WhatsApp's 24 h customer service window, a
//! configured re-engagement template outside it), and the pass that sends queued staff replies
//! exactly once.
//!
//! Conversations themselves are stored by `store::inbox`; the inbound handler files patient
//! messages into them, the console and `medrelay inbox` read and answer them.

use std::sync::Arc;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use tracing::{info, warn};

use crate::clock::Clock;
use crate::store::inbox::{INBOX_SLA_ALERT, sla_key};
use crate::store::{Store, StoreResult};
use crate::whatsapp::{TemplateMessage, WhatsAppTransport, text_message};

/// WhatsApp's customer service window: free-form messages are allowed for 24 h after the
/// patient's last message (Meta, "Customer service windows").
pub const SERVICE_WINDOW: SignedDuration = SignedDuration::from_hours(24);

/// A send that has not returned after this long is treated as interrupted (the process died):
/// the reply is marked `unknown`, never sent again by itself.
pub const SENDING_GRACE: SignedDuration = SignedDuration::from_mins(10);

/// Staff replies sent per pass.
const REPLIES_PER_PASS: i64 = 50;

/// A site's opening hours, per weekday (local time), e.g. `Mon-Fri 08:00-18:00; Sat 09:00-12:00`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpeningHours {
    /// Monday first: the open intervals of each weekday, in minutes after midnight.
    days: [Vec<(u16, u16)>; 7],
}

fn weekday(s: &str) -> Option<usize> {
    let days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let s = s.trim().to_ascii_lowercase();
    days.iter().position(|d| s.starts_with(d) && s.len() >= 3)
}

fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
}

impl OpeningHours {
    /// Parses `Mon-Fri 08:00-18:00; Sat 09:00-12:00` (days and ranges separated by `;`, several
    /// ranges of one day by `,`, e.g. `Mon-Fri 08:00-12:00,13:00-17:00`).
    pub fn parse(s: &str) -> Option<OpeningHours> {
        let mut days: [Vec<(u16, u16)>; 7] = Default::default();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (which, ranges) = part.split_once(' ')?;
            let (from, to) = match which.split_once('-') {
                Some((a, b)) => (weekday(a)?, weekday(b)?),
                None => (weekday(which)?, weekday(which)?),
            };
            let mut intervals = Vec::new();
            for r in ranges.split(',') {
                let (a, b) = r.trim().split_once('-')?;
                let (a, b) = (minutes(a)?, minutes(b)?);
                if a >= b {
                    return None;
                }
                intervals.push((a, b));
            }
            let mut d = from;
            loop {
                days[d].extend(intervals.iter().copied());
                days[d].sort_unstable();
                if d == to {
                    break;
                }
                d = (d + 1) % 7;
            }
        }
        days.iter()
            .any(|d| !d.is_empty())
            .then_some(OpeningHours { days })
    }

    /// Whether the site is open at `at`.
    pub fn is_open(&self, at: Timestamp, zone: &TimeZone) -> bool {
        let local = at.to_zoned(zone.clone());
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        self.of(local.weekday())
            .iter()
            .any(|&(a, b)| a <= minute && minute < b)
    }

    fn of(&self, day: Weekday) -> &[(u16, u16)] {
        &self.days[usize::from(day.to_monday_zero_offset() as u8)]
    }
}

/// When a staff answer to a message received at `received` is due: `sla` of opening time later
/// (every hour counts without `hours`). A message that arrives at night is due `sla` after the
/// site opens.
pub fn reply_due(
    received: Timestamp,
    sla: SignedDuration,
    hours: Option<&OpeningHours>,
    zone: &TimeZone,
) -> Timestamp {
    let Some(hours) = hours else {
        return received + sla;
    };
    let mut remaining = sla;
    let local = received.to_zoned(zone.clone());
    let mut date = local.date();
    // Opening hours exist (parse refuses none), so two weeks always hold enough open time for
    // any SLA shorter than a week; a longer one simply ends at the horizon.
    for _ in 0..21 {
        for &(a, b) in hours.of(date.weekday()) {
            let at = |m: u16| {
                let t = if m >= 24 * 60 {
                    date.tomorrow()
                        .ok()
                        .and_then(|d| d.to_zoned(zone.clone()).ok())
                } else {
                    date.to_datetime(Time::constant((m / 60) as i8, (m % 60) as i8, 0, 0))
                        .to_zoned(zone.clone())
                        .ok()
                };
                t.map(|z| z.timestamp())
            };
            let (Some(start), Some(end)) = (at(a), at(b)) else {
                continue;
            };
            if end <= received {
                continue;
            }
            let from = start.max(received);
            let open = end.duration_since(from);
            if open >= remaining {
                return from + remaining;
            }
            remaining -= open;
        }
        match date.tomorrow() {
            Ok(d) => date = d,
            Err(_) => break,
        }
    }
    received + sla
}

/// A duration as a patient reads it: `60 minutes`, `2 hours`, `1 hour 30 minutes`, `1 day`.
pub fn spoken_duration(d: SignedDuration) -> String {
    let mins = d.as_mins().max(1);
    let plural = |n: i64, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    if mins <= 90 {
        return plural(mins, "minute");
    }
    if mins % (24 * 60) == 0 {
        return plural(mins / (24 * 60), "day");
    }
    match (mins / 60, mins % 60) {
        (h, 0) => plural(h, "hour"),
        (h, m) => format!("{} {}", plural(h, "hour"), plural(m, "minute")),
    }
}

/// Whether a patient who last wrote at `last_inbound` may get a free-form message at `now`.
pub fn window_open(last_inbound: Option<Timestamp>, now: Timestamp) -> bool {
    last_inbound.is_some_and(|at| now < at + SERVICE_WINDOW)
}

/// The template staff may send outside the customer service window (a utility template without
/// parameters asking the patient to write back, e.g. "We have an answer to your message: reply to
/// this message to read it").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReengageTemplate {
    pub name: String,
    pub language: String,
}

/// What a staff member's answer turns into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyPlan {
    /// A free-form text (inside the window).
    Text,
    /// Outside the window: only the re-engagement template may go.
    TemplateOnly(ReengageTemplate),
    /// Outside the window and no template is configured: nothing may go.
    Refused,
}

/// Decides how staff may answer a contact who last wrote at `last_inbound`.
pub fn reply_plan(
    last_inbound: Option<Timestamp>,
    now: Timestamp,
    template: Option<&ReengageTemplate>,
) -> ReplyPlan {
    if window_open(last_inbound, now) {
        ReplyPlan::Text
    } else {
        match template {
            Some(t) => ReplyPlan::TemplateOnly(t.clone()),
            None => ReplyPlan::Refused,
        }
    }
}

/// What one inbox pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxReport {
    pub sent: u64,
    pub failed: u64,
    pub sla_alerts: u64,
}

/// Sends queued staff replies and raises the reply-SLA alerts (run by the instance holding the
/// outbound lease, after the outbox pass).
pub struct StaffInbox {
    store: Store,
    transport: Arc<dyn WhatsAppTransport>,
    clock: Arc<dyn Clock>,
}

impl StaffInbox {
    /// The inbox sending through `transport` (the paced one when sending is paced).
    pub fn new(store: Store, transport: Arc<dyn WhatsAppTransport>, clock: Arc<dyn Clock>) -> Self {
        StaffInbox {
            store,
            transport,
            clock,
        }
    }

    /// One pass: SLA breaches alerted once each, then queued replies sent once each.
    pub async fn run_once(&self) -> StoreResult<InboxReport> {
        let mut report = InboxReport::default();
        let now = self.clock.now();
        for (id, site) in self.store.take_overdue_conversations(now).await? {
            let site = site.map(|s| format!(" (site {s})")).unwrap_or_default();
            warn!(conversation = id, "inbox conversation past its reply SLA");
            self.store
                .raise_incident(
                    INBOX_SLA_ALERT,
                    &sla_key(id),
                    &format!(
                        "{}{site} has waited past its reply SLA without a staff answer; open it in the console",
                        sla_key(id)
                    ),
                    now,
                )
                .await?;
            report.sla_alerts += 1;
        }
        let claimed = self
            .store
            .claim_staff_replies(REPLIES_PER_PASS, SENDING_GRACE, now)
            .await?;
        for r in claimed {
            let body = match r.kind.as_str() {
                "template" => TemplateMessage {
                    to: r.phone_e164.clone(),
                    template: r.body.clone(),
                    language: r.language.clone().unwrap_or_else(|| "en_US".into()),
                    body: Vec::new(),
                    header: None,
                    quick_replies: Vec::new(),
                    callback: format!("reply:{}", r.id),
                }
                .to_json(),
                _ => {
                    let mut v = text_message(&r.phone_e164, &r.body, None);
                    v["biz_opaque_callback_data"] = format!("reply:{}", r.id).into();
                    v
                }
            };
            match self.transport.send(&body).await {
                Ok(accepted) => {
                    self.store
                        .staff_reply_result(r.id, Ok(&accepted.wamid), self.clock.now())
                        .await?;
                    info!(
                        conversation = r.conversation_id,
                        message = r.id,
                        "staff reply sent"
                    );
                    report.sent += 1;
                }
                Err(e) => {
                    // The error names codes only (SendError carries no PHI).
                    warn!(conversation = r.conversation_id, message = r.id, error = %e, "staff reply refused");
                    self.store
                        .staff_reply_result(r.id, Err(&e.to_string()), self.clock.now())
                        .await?;
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }
}

/// The staff reply a `reply:<id>` callback names.
pub fn callback_reply(callback: Option<&str>) -> Option<i64> {
    callback
        .and_then(|c| c.strip_prefix("reply:"))
        .and_then(|id| id.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> TimeZone {
        TimeZone::get("Europe/Berlin").unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse::<jiff::Zoned>().unwrap().timestamp()
    }

    #[test]
    fn opening_hours_parse_days_ranges_and_refuse_nonsense() {
        let h = OpeningHours::parse("Mon-Fri 08:00-12:00,13:00-17:00; Sat 09:00-12:00").unwrap();
        assert_eq!(h.of(Weekday::Monday), &[(480, 720), (780, 1020)]);
        assert_eq!(h.of(Weekday::Saturday), &[(540, 720)]);
        assert!(h.of(Weekday::Sunday).is_empty());
        for bad in [
            "",
            "Mon 18:00-08:00",
            "Funday 08:00-10:00",
            "Mon 8-10",
            "Mon 25:00-26:00",
        ] {
            assert_eq!(OpeningHours::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_sla_clock_runs_only_in_opening_hours() {
        let h = OpeningHours::parse("Mon-Fri 08:00-18:00").unwrap();
        let sla = SignedDuration::from_mins(60);
        // Inside hours: an hour later.
        assert_eq!(
            reply_due(
                at("2026-12-02T10:15[Europe/Berlin]"),
                sla,
                Some(&h),
                &zone()
            ),
            at("2026-12-02T11:15[Europe/Berlin]")
        );
        // 17:30 on a Wednesday: 30 minutes today, 30 tomorrow from 08:00.
        assert_eq!(
            reply_due(
                at("2026-12-02T17:30[Europe/Berlin]"),
                sla,
                Some(&h),
                &zone()
            ),
            at("2026-12-03T08:30[Europe/Berlin]")
        );
        // Friday night: Monday 09:00.
        assert_eq!(
            reply_due(
                at("2026-12-04T22:00[Europe/Berlin]"),
                sla,
                Some(&h),
                &zone()
            ),
            at("2026-12-07T09:00[Europe/Berlin]")
        );
        // Without hours, every minute counts.
        assert_eq!(
            reply_due(at("2026-12-04T22:00[Europe/Berlin]"), sla, None, &zone()),
            at("2026-12-04T23:00[Europe/Berlin]")
        );
    }

    #[test]
    fn durations_read_as_a_patient_says_them() {
        let m = SignedDuration::from_mins;
        assert_eq!(spoken_duration(m(60)), "60 minutes");
        assert_eq!(spoken_duration(m(1)), "1 minute");
        assert_eq!(spoken_duration(m(120)), "2 hours");
        assert_eq!(spoken_duration(m(150)), "2 hours 30 minutes");
        assert_eq!(spoken_duration(m(24 * 60)), "1 day");
        let h = OpeningHours::parse("Mon-Fri 08:00-18:00").unwrap();
        assert!(h.is_open(at("2026-12-02T08:00[Europe/Berlin]"), &zone()));
        assert!(!h.is_open(at("2026-12-02T18:00[Europe/Berlin]"), &zone()));
        assert!(!h.is_open(at("2026-12-05T10:00[Europe/Berlin]"), &zone()));
    }

    #[test]
    fn replies_are_text_inside_the_window_and_the_template_or_nothing_outside() {
        let now = at("2026-12-02T10:00[Europe/Berlin]");
        let t = ReengageTemplate {
            name: "reply_waiting".into(),
            language: "en_US".into(),
        };
        let inside = Some(now - SignedDuration::from_hours(23));
        let outside = Some(now - SignedDuration::from_hours(25));
        assert_eq!(reply_plan(inside, now, Some(&t)), ReplyPlan::Text);
        assert_eq!(
            reply_plan(outside, now, Some(&t)),
            ReplyPlan::TemplateOnly(t.clone())
        );
        assert_eq!(reply_plan(outside, now, None), ReplyPlan::Refused);
        assert_eq!(reply_plan(None, now, None), ReplyPlan::Refused);
    }
}
