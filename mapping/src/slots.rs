//! Open slots: the free times a patient who asks for another time may be offered (issue 14), and
//! the one rule that decides which of them fit the appointment being replaced.
//!
//! A slot comes from the EHR (a FHIR `Slot` with `status = free`, a row of a CSV "open slots"
//! export). It fits an appointment when it is at the same site and for the same service type, with
//! the same practitioner unless the site allows any, starts after now + `min_lead` and within the
//! window, and is not a time the patient already has. Pure: the store keeps slots and holds, the
//! conversation renders the offers.

use jiff::{SignedDuration, Timestamp};

use crate::model::Appointment;
use crate::phi::Phi;

/// A free time in the EHR's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSlot {
    /// The scheduling system the slot belongs to (as `AppointmentKey::source`).
    pub source: String,
    /// The EHR's id of the slot (FHIR `Slot.id`, the export's slot id column).
    pub slot_id: String,
    pub site: String,
    pub practitioner: Option<String>,
    /// The appointment type the slot is for. PHI like the appointment's: never logged.
    pub service_type: Option<Phi<String>>,
    pub location: Option<String>,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// Which slots may be offered in place of an appointment (per site).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRules {
    /// Only slots starting within this long from now (default 14 days).
    pub window: SignedDuration,
    /// Any practitioner of the service will do (default: the same practitioner only).
    pub any_practitioner: bool,
    /// No slot starting sooner than this (the site's `min_lead`).
    pub min_lead: SignedDuration,
    /// At most this many offers (a WhatsApp list holds 10 rows; one is "None of these").
    pub max_offers: usize,
}

impl Default for SlotRules {
    fn default() -> Self {
        SlotRules {
            window: SignedDuration::from_hours(14 * 24),
            any_practitioner: false,
            min_lead: SignedDuration::from_mins(30),
            max_offers: 9,
        }
    }
}

/// Why a slot does not fit (no PHI: the reasons name fields, never values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    #[error("another scheduling system")]
    OtherSystem,
    #[error("another site")]
    OtherSite,
    #[error("another service type")]
    OtherServiceType,
    #[error("another practitioner")]
    OtherPractitioner,
    #[error("starts too soon (in the past or inside min_lead)")]
    TooSoon,
    #[error("starts beyond the offer window")]
    TooLate,
    #[error("the patient already has an appointment at that time")]
    PatientBusy,
    #[error("ends before it starts")]
    Malformed,
}

fn same_text(a: Option<&str>, b: Option<&str>) -> bool {
    let norm = |s: &str| s.trim().to_lowercase();
    match (a, b) {
        (Some(a), Some(b)) => norm(a) == norm(b),
        (None, None) => true,
        _ => false,
    }
}

/// Whether `slot` may be offered instead of `appointment` at `now`; `busy` are the starts and
/// ends of the patient's other booked appointments (a slot overlapping one is not offered).
// PHI: the service types are compared, never returned or logged.
#[allow(clippy::disallowed_methods)]
pub fn fits(
    appointment: &Appointment,
    slot: &OpenSlot,
    busy: &[(Timestamp, Timestamp)],
    now: Timestamp,
    rules: &SlotRules,
) -> Result<(), Misfit> {
    if slot.end <= slot.start {
        return Err(Misfit::Malformed);
    }
    if slot.source != appointment.key.source {
        return Err(Misfit::OtherSystem);
    }
    if slot.site != appointment.site {
        return Err(Misfit::OtherSite);
    }
    if !same_text(
        slot.service_type.as_ref().map(|s| s.expose().as_str()),
        appointment
            .service_type
            .as_ref()
            .map(|s| s.expose().as_str()),
    ) {
        return Err(Misfit::OtherServiceType);
    }
    if !rules.any_practitioner
        && !same_text(
            slot.practitioner.as_deref(),
            appointment.practitioner.as_deref(),
        )
    {
        return Err(Misfit::OtherPractitioner);
    }
    if slot.start < now + rules.min_lead {
        return Err(Misfit::TooSoon);
    }
    if slot.start > now + rules.window {
        return Err(Misfit::TooLate);
    }
    if slot.start == appointment.start || busy.iter().any(|&(s, e)| slot.start < e && s < slot.end)
    {
        return Err(Misfit::PatientBusy);
    }
    Ok(())
}

/// The slots to offer instead of `appointment`: those that fit, earliest first, one per start
/// time (two practitioners free at 10:00 are one choice for the patient when any will do), at
/// most `rules.max_offers`.
pub fn offers<'a>(
    appointment: &Appointment,
    slots: impl IntoIterator<Item = &'a OpenSlot>,
    busy: &[(Timestamp, Timestamp)],
    now: Timestamp,
    rules: &SlotRules,
) -> Vec<&'a OpenSlot> {
    let mut fitting: Vec<&OpenSlot> = slots
        .into_iter()
        .filter(|s| fits(appointment, s, busy, now, rules).is_ok())
        .collect();
    fitting.sort_by(|a, b| (a.start, &a.slot_id).cmp(&(b.start, &b.slot_id)));
    fitting.dedup_by_key(|s| s.start);
    fitting.truncate(rules.max_offers);
    fitting
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppointmentKey, AppointmentStatus, Patient};

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn appointment() -> Appointment {
        Appointment {
            key: AppointmentKey {
                source: "emr".into(),
                id: "A1".into(),
            },
            placer_id: None,
            status: AppointmentStatus::Booked,
            start: ts("2026-12-10T14:00:00Z"),
            end: Some(ts("2026-12-10T14:30:00Z")),
            time_unknown: false,
            site: "ny".into(),
            time_zone: "America/New_York".into(),
            location: Some("Room 1".into()),
            practitioner: Some("Dr. Who".into()),
            service_type: Some(Phi::new("Office Visit".into())),
            reason: None,
            patient: Patient::default(),
            ehr_consent: None,
        }
    }

    fn slot(id: &str, start: &str) -> OpenSlot {
        let start = ts(start);
        OpenSlot {
            source: "emr".into(),
            slot_id: id.into(),
            site: "ny".into(),
            practitioner: Some("dr. who ".into()),
            service_type: Some(Phi::new("office visit".into())),
            location: Some("Room 2".into()),
            start,
            end: start + SignedDuration::from_mins(30),
        }
    }

    #[test]
    fn a_slot_fits_only_the_same_site_service_and_practitioner_inside_the_window() {
        let now = ts("2026-12-07T14:00:00Z");
        let a = appointment();
        let rules = SlotRules::default();
        let ok = slot("S1", "2026-12-11T15:00:00Z");
        assert_eq!(fits(&a, &ok, &[], now, &rules), Ok(()));
        let misfit = |f: &dyn Fn(&mut OpenSlot)| {
            let mut s = ok.clone();
            f(&mut s);
            fits(&a, &s, &[], now, &rules).unwrap_err()
        };
        assert_eq!(misfit(&|s| s.site = "sp".into()), Misfit::OtherSite);
        assert_eq!(misfit(&|s| s.source = "lab".into()), Misfit::OtherSystem);
        assert_eq!(
            misfit(&|s| s.service_type = Some(Phi::new("Oncology".into()))),
            Misfit::OtherServiceType
        );
        assert_eq!(
            misfit(&|s| s.practitioner = Some("Dr. No".into())),
            Misfit::OtherPractitioner
        );
        assert_eq!(
            misfit(&|s| {
                s.start = now + SignedDuration::from_mins(10);
                s.end = s.start + SignedDuration::from_mins(30);
            }),
            Misfit::TooSoon,
            "inside min_lead"
        );
        assert_eq!(
            misfit(&|s| {
                s.start = ts("2026-12-01T10:00:00Z");
                s.end = s.start + SignedDuration::from_mins(30);
            }),
            Misfit::TooSoon,
            "in the past"
        );
        assert_eq!(
            misfit(&|s| {
                s.start = ts("2026-12-22T10:00:00Z");
                s.end = s.start + SignedDuration::from_mins(30);
            }),
            Misfit::TooLate
        );
        assert_eq!(
            misfit(&|s| {
                s.start = a.start;
                s.end = a.start + SignedDuration::from_mins(30);
            }),
            Misfit::PatientBusy,
            "the time the patient already holds"
        );
        assert_eq!(misfit(&|s| s.end = s.start), Misfit::Malformed);
        // Another booked appointment of the patient overlapping the slot.
        let busy = [(ts("2026-12-11T14:45:00Z"), ts("2026-12-11T15:15:00Z"))];
        assert_eq!(fits(&a, &ok, &busy, now, &rules), Err(Misfit::PatientBusy));
        // A site that allows any practitioner.
        let any = SlotRules {
            any_practitioner: true,
            ..rules
        };
        let mut other = ok.clone();
        other.practitioner = Some("Dr. No".into());
        assert_eq!(fits(&a, &other, &[], now, &any), Ok(()));
        // Errors name fields, never values.
        assert!(!Misfit::OtherServiceType.to_string().contains("Office"));
    }

    #[test]
    fn offers_are_the_earliest_fitting_times_once_each_and_at_most_the_limit() {
        let now = ts("2026-12-07T14:00:00Z");
        let a = appointment();
        let mut slots: Vec<OpenSlot> = (0..15)
            .map(|d| {
                slot(
                    &format!("S{d:02}"),
                    &format!("2026-12-{:02}T15:00:00Z", 8 + d % 12),
                )
            })
            .collect();
        slots.push(slot("X1", "2026-12-08T15:00:00Z"));
        let mut far = slot("X2", "2026-12-30T15:00:00Z");
        far.practitioner = None;
        slots.push(far);
        let rules = SlotRules {
            any_practitioner: true,
            ..SlotRules::default()
        };
        let offered = offers(&a, &slots, &[], now, &rules);
        assert_eq!(offered.len(), 9);
        let starts: Vec<Timestamp> = offered.iter().map(|s| s.start).collect();
        let mut sorted = starts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(starts, sorted, "earliest first, one per time");
        assert_eq!(
            offered[0].slot_id, "S00",
            "the lower id of two at the same time"
        );
        assert!(offered.iter().all(|s| s.start <= now + rules.window));
    }
}
