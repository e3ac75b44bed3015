//! The canonical appointment model every connector maps into.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::phi::Phi;

/// Identifies an appointment across events: the source (connector name) plus the filler's id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppointmentKey {
    /// The connector that owns the appointment (its configured name).
    pub source: String,
    /// The filler (scheduling system) appointment id, e.g. HL7 SCH-2 or a CSV id column.
    pub id: String,
}

impl fmt::Display for AppointmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source, self.id)
    }
}

/// Appointment status, the FHIR R4 `AppointmentStatus` value set, which every source maps into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppointmentStatus {
    Proposed,
    Pending,
    Booked,
    Arrived,
    CheckedIn,
    Fulfilled,
    Cancelled,
    Noshow,
    EnteredInError,
    Waitlist,
}

impl AppointmentStatus {
    /// Every status, for config validation and help text.
    pub const ALL: [AppointmentStatus; 10] = [
        Self::Proposed,
        Self::Pending,
        Self::Booked,
        Self::Arrived,
        Self::CheckedIn,
        Self::Fulfilled,
        Self::Cancelled,
        Self::Noshow,
        Self::EnteredInError,
        Self::Waitlist,
    ];

    /// The FHIR code, which is also how the status is stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proposed => "proposed",
            Self::Pending => "pending",
            Self::Booked => "booked",
            Self::Arrived => "arrived",
            Self::CheckedIn => "checked-in",
            Self::Fulfilled => "fulfilled",
            Self::Cancelled => "cancelled",
            Self::Noshow => "noshow",
            Self::EnteredInError => "entered-in-error",
            Self::Waitlist => "waitlist",
        }
    }

    /// Parses a FHIR code.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == code)
    }

    /// Whether the appointment is still going to happen, so reminders make sense.
    pub fn is_upcoming(self) -> bool {
        matches!(self, Self::Booked)
    }

    /// Whether the appointment is over for good (no reminder can ever be right again).
    pub fn is_withdrawn(self) -> bool {
        matches!(self, Self::Cancelled | Self::Noshow | Self::EnteredInError)
    }
}

/// Orders events about one appointment: an older event arriving late never overwrites a newer one.
///
/// `at` is the source's own clock (HL7 MSH-7, FHIR `meta.lastUpdated`, CSV snapshot time or an update
/// column); `seq` breaks ties within one source batch (the CSV line number, a FHIR version id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceVersion {
    pub at: Timestamp,
    pub seq: i64,
}

/// How a phone number is used, ranked for choosing the WhatsApp contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhoneUse {
    Mobile,
    Home,
    Work,
    Other,
}

/// A phone number as given by the source, already normalised to E.164 when possible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactPhone {
    /// E.164 number (`+5511...`) when normalisation succeeded.
    pub e164: Option<Phi<String>>,
    /// Why the number cannot be used, when it cannot (no PHI in the text).
    pub unusable: Option<String>,
    pub use_: PhoneUse,
    /// Lower is preferred (FHIR `ContactPoint.rank`); ties keep source order.
    pub rank: u32,
}

/// The patient as far as messaging needs it. Every field is PHI.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Patient {
    /// The source's patient identifier (MRN), used for write-back matching only.
    pub id: Option<Phi<String>>,
    pub given_name: Option<Phi<String>>,
    pub family_name: Option<Phi<String>>,
    pub phones: Vec<ContactPhone>,
    /// BCP-47 language tag (`pt-BR`, `es`), when the source knows it.
    pub preferred_language: Option<String>,
    /// EHR protection indicator (HL7 PD1-12 = Y, a confidential flag): never message this patient.
    /// `None` when the source says nothing (no PD1, no protection column, a blank cell): the
    /// stored flag then stays as another feed of the same system set it.
    pub protected: Option<bool>,
}

impl Patient {
    /// The best number to message: usable, mobile before other uses, then by rank.
    pub fn best_phone(&self) -> Option<&Phi<String>> {
        let mut usable: Vec<&ContactPhone> =
            self.phones.iter().filter(|p| p.e164.is_some()).collect();
        usable.sort_by_key(|p| (p.use_ != PhoneUse::Mobile, p.rank));
        usable.first().and_then(|p| p.e164.as_ref())
    }

    /// Why no number can be used (the first reason given), when none can.
    pub fn phone_problem(&self) -> Option<String> {
        if self.best_phone().is_some() {
            return None;
        }
        Some(
            self.phones
                .iter()
                .find_map(|p| p.unusable.clone())
                .unwrap_or_else(|| "no phone number on record".to_string()),
        )
    }
}

/// An opt-in (or opt-out) signal carried by the source record itself (a CSV opt-in column, a FHIR
/// Consent, HL7 PD1-11/12). Combined with other sources by [`crate::consent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EhrConsent {
    OptIn,
    OptOut,
}

/// The canonical appointment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appointment {
    pub key: AppointmentKey,
    /// The placer's id (HL7 SCH-1, an order number), kept as an alias to link feeds.
    pub placer_id: Option<String>,
    pub status: AppointmentStatus,
    /// The start; when `time_unknown`, the first instant of the local day.
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// The source knows the day and not the time (a date-only CSV column, a placeholder midnight):
    /// reminders are planned per day and no message shows a time.
    pub time_unknown: bool,
    /// The configured site this appointment belongs to.
    pub site: String,
    /// IANA time zone of the site, e.g. `America/Sao_Paulo`.
    pub time_zone: String,
    /// Display name of the location (a clinic, not a room code when avoidable).
    pub location: Option<String>,
    /// Display name of the practitioner.
    pub practitioner: Option<String>,
    /// Appointment / service type; sensitive (it can reveal a condition), so it is PHI.
    pub service_type: Option<Phi<String>>,
    /// Reason and notes are kept only to be filtered: they are never renderable.
    pub reason: Option<Phi<String>>,
    pub patient: Patient,
    pub ehr_consent: Option<EhrConsent>,
}

/// One change to one appointment, as a connector saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppointmentEvent {
    pub appointment: Appointment,
    pub version: SourceVersion,
    /// Where the raw input is (file and line, MLLP message control id): never PHI.
    pub raw_ref: String,
    /// The sender's identity of the message that carried the event (HL7 `MSH-3^MSH-4^MSH-10`), when
    /// it has one: a message sent again is recognised as a repeat whenever it arrives, which is what
    /// lets a stream apply in arrival order without a re-sent old message undoing a newer one.
    pub message_id: Option<String>,
}

impl AppointmentEvent {
    /// The appointment key.
    pub fn key(&self) -> &AppointmentKey {
        &self.appointment.key
    }
}

/// A change of status that names the appointment and nothing else: a FHIR `cancelled` Appointment
/// without `start` (FHIR's app-3 allows it), an HL7 S15 without timing, a CSV cancel row without a
/// time. It updates a stored appointment's status and never creates one, so a cancellation is never
/// lost for want of a start it does not need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub key: AppointmentKey,
    /// The placer's id, to find the appointment when the filler id is not known under this system.
    pub placer_id: Option<String>,
    /// Never [`AppointmentStatus::Booked`]: a booking needs its time.
    pub status: AppointmentStatus,
    pub version: SourceVersion,
    /// Where the raw input is (no PHI).
    pub raw_ref: String,
    /// As [`AppointmentEvent::message_id`].
    pub message_id: Option<String>,
}

/// What a connector produced for one appointment: a full description or a status change alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Appointment(Box<AppointmentEvent>),
    Status(StatusChange),
}

impl Change {
    /// The appointment key.
    pub fn key(&self) -> &AppointmentKey {
        match self {
            Change::Appointment(e) => e.key(),
            Change::Status(s) => &s.key,
        }
    }

    /// The status the change sets.
    pub fn status(&self) -> AppointmentStatus {
        match self {
            Change::Appointment(e) => e.appointment.status,
            Change::Status(s) => s.status,
        }
    }

    /// Where the raw input is, to be set by a caller that knows it better than the mapper.
    pub fn raw_ref_mut(&mut self) -> &mut String {
        match self {
            Change::Appointment(e) => &mut e.raw_ref,
            Change::Status(s) => &mut s.raw_ref,
        }
    }

    /// The version the change carries.
    pub fn version(&self) -> SourceVersion {
        match self {
            Change::Appointment(e) => e.version,
            Change::Status(s) => s.version,
        }
    }

    /// The full event, when the change is one (tests and tools that read the mapped appointment).
    pub fn as_event(&self) -> Option<&AppointmentEvent> {
        match self {
            Change::Appointment(e) => Some(e),
            Change::Status(_) => None,
        }
    }
}

impl From<AppointmentEvent> for Change {
    fn from(e: AppointmentEvent) -> Self {
        Change::Appointment(Box::new(e))
    }
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn phone(n: Option<&str>, use_: PhoneUse, rank: u32) -> ContactPhone {
        ContactPhone {
            e164: n.map(|s| Phi::new(s.to_string())),
            unusable: n.is_none().then(|| "not a valid number".to_string()),
            use_,
            rank,
        }
    }

    #[test]
    fn best_phone_prefers_usable_mobile_then_rank() {
        let p = Patient {
            phones: vec![
                phone(Some("+15550001"), PhoneUse::Home, 1),
                phone(None, PhoneUse::Mobile, 1),
                phone(Some("+15550003"), PhoneUse::Mobile, 2),
                phone(Some("+15550002"), PhoneUse::Mobile, 1),
            ],
            ..Patient::default()
        };
        assert_eq!(p.best_phone().unwrap().expose(), "+15550002");
    }

    #[test]
    fn phone_problem_is_reported_without_the_number() {
        let p = Patient {
            phones: vec![phone(None, PhoneUse::Mobile, 1)],
            ..Patient::default()
        };
        assert_eq!(p.phone_problem().unwrap(), "not a valid number");
        assert_eq!(
            Patient::default().phone_problem().unwrap(),
            "no phone number on record"
        );
    }

    #[test]
    fn status_codes_round_trip() {
        for s in AppointmentStatus::ALL {
            assert_eq!(AppointmentStatus::from_code(s.as_str()), Some(s));
        }
    }
}
