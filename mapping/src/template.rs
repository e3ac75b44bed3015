//! What a WhatsApp template may say about a patient.
//!
//! A template body parameter is chosen from a closed allow-list of canonical fields ([`TemplateField`]).
//! Anything else (a family name, a diagnosis, a reason for visit, a free-text note) is rejected when the
//! configuration is loaded, so an over-revealing message cannot even be configured.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::model::Appointment;

/// A canonical field a template parameter may render.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateField {
    /// The patient's given name only.
    GivenName,
    /// The appointment date in the site's zone, formatted with the site's date format.
    LocalDate,
    /// The appointment time in the site's zone. Not renderable for an appointment whose time is
    /// unknown (a day-only export): no message shows a made-up time.
    LocalTime,
    /// The display name of the location.
    Location,
    /// The site's public phone number (from config, not from the patient record).
    SitePhone,
    /// The practitioner's display name (only at the `standard` PHI level).
    Practitioner,
}

/// Fields that describe the patient's condition or private notes: never renderable, named here so
/// that the config error can say why rather than "unknown field".
pub const NEVER_RENDERABLE: &[&str] = &[
    "diagnosis",
    "reason",
    "notes",
    "comment",
    "service_type",
    "appointment_type",
    "department",
    "family_name",
    "last_name",
    "birth_date",
    "patient_id",
    "phone",
];

/// How much a message may reveal, per site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhiLevel {
    /// Given name, date, time, location, site phone.
    #[default]
    Minimal,
    /// Minimal plus the practitioner's name.
    Standard,
}

/// Why a template parameter list is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateFieldError {
    #[error(
        "template parameter `{0}` can never be rendered (it would reveal clinical or identifying data)"
    )]
    Forbidden(String),
    #[error(
        "unknown template parameter `{0}` (allowed: given_name, local_date, local_time, location, site_phone, practitioner)"
    )]
    Unknown(String),
    #[error("template parameter `{0}` is not allowed at PHI level `{1}`")]
    AboveLevel(String, &'static str),
}

impl TemplateField {
    /// Parses a configured field name against the allow-list and the site's PHI level.
    pub fn parse(name: &str, level: PhiLevel) -> Result<Self, TemplateFieldError> {
        let lower = name.trim().to_ascii_lowercase();
        if NEVER_RENDERABLE.contains(&lower.as_str()) {
            return Err(TemplateFieldError::Forbidden(name.to_string()));
        }
        let field = match lower.as_str() {
            "given_name" | "first_name" => Self::GivenName,
            "local_date" | "date" => Self::LocalDate,
            "local_time" | "time" => Self::LocalTime,
            "location" => Self::Location,
            "site_phone" => Self::SitePhone,
            "practitioner" => Self::Practitioner,
            _ => return Err(TemplateFieldError::Unknown(name.to_string())),
        };
        if field == Self::Practitioner && level == PhiLevel::Minimal {
            return Err(TemplateFieldError::AboveLevel(name.to_string(), "minimal"));
        }
        Ok(field)
    }
}

/// Site facts a template may render, from configuration.
#[derive(Clone, Debug)]
pub struct SiteFacts {
    pub phone: Option<String>,
    /// `jiff::fmt::strtime` format for dates, e.g. `%d/%m/%Y`.
    pub date_format: String,
    /// `jiff::fmt::strtime` format for times, e.g. `%H:%M`.
    pub time_format: String,
}

/// Why a parameter could not be rendered for one appointment (no PHI in the text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("appointment has no {0} to render")]
    Missing(&'static str),
    #[error("unknown time zone `{0}`")]
    TimeZone(String),
    #[error("date or time format is invalid")]
    Format,
    /// The source gave the day only (`Appointment::time_unknown`): a time would be made up.
    #[error(
        "the appointment's time is unknown (the source gives only the day): use a template without local_time"
    )]
    TimeUnknown,
}

/// Renders the allow-listed fields for one appointment, in order. The result is PHI by nature (it goes
/// into exactly one outbound message body) and is returned as plain strings for the message builder.
// PHI: rendering the allow-listed fields into one outbound message is this function's purpose.
#[allow(clippy::disallowed_methods)]
pub fn render_parameters(
    fields: &[TemplateField],
    appointment: &Appointment,
    site: &SiteFacts,
) -> Result<Vec<String>, RenderError> {
    let zone = TimeZone::get(&appointment.time_zone)
        .map_err(|_| RenderError::TimeZone(appointment.time_zone.clone()))?;
    fields
        .iter()
        .map(|field| match field {
            TemplateField::GivenName => appointment
                .patient
                .given_name
                .as_ref()
                .map(|n| n.expose().trim().to_string())
                .filter(|n| !n.is_empty())
                .ok_or(RenderError::Missing("given name")),
            TemplateField::LocalDate => format_local(appointment.start, &zone, &site.date_format),
            // The start of a day whose time is unknown is its first instant: never shown as a time.
            TemplateField::LocalTime if appointment.time_unknown => Err(RenderError::TimeUnknown),
            TemplateField::LocalTime => format_local(appointment.start, &zone, &site.time_format),
            TemplateField::Location => appointment
                .location
                .clone()
                .ok_or(RenderError::Missing("location")),
            TemplateField::SitePhone => {
                site.phone.clone().ok_or(RenderError::Missing("site phone"))
            }
            TemplateField::Practitioner => appointment
                .practitioner
                .clone()
                .ok_or(RenderError::Missing("practitioner")),
        })
        .collect()
}

fn format_local(at: Timestamp, zone: &TimeZone, format: &str) -> Result<String, RenderError> {
    let zoned = at.to_zoned(zone.clone());
    jiff::fmt::strtime::format(format, &zoned).map_err(|_| RenderError::Format)
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::phi::Phi;

    fn appointment() -> Appointment {
        Appointment {
            key: AppointmentKey {
                source: "csv".into(),
                id: "A1".into(),
            },
            placer_id: None,
            status: AppointmentStatus::Booked,
            start: "2026-03-08T10:30:00Z".parse().unwrap(),
            end: None,
            time_unknown: false,
            site: "main".into(),
            time_zone: "America/New_York".into(),
            location: Some("Main Street Clinic".into()),
            practitioner: Some("Dr. Who".into()),
            service_type: Some(Phi::new("Oncology".into())),
            reason: Some(Phi::new("CANARY-reason".into())),
            patient: Patient {
                given_name: Some(Phi::new("Ana".into())),
                family_name: Some(Phi::new("Silva".into())),
                ..Patient::default()
            },
            ehr_consent: None,
        }
    }

    #[test]
    fn forbidden_and_unknown_fields_are_config_errors() {
        assert!(matches!(
            TemplateField::parse("diagnosis", PhiLevel::Standard),
            Err(TemplateFieldError::Forbidden(_))
        ));
        assert!(matches!(
            TemplateField::parse("Reason", PhiLevel::Standard),
            Err(TemplateFieldError::Forbidden(_))
        ));
        assert!(matches!(
            TemplateField::parse("favourite_colour", PhiLevel::Standard),
            Err(TemplateFieldError::Unknown(_))
        ));
        assert!(matches!(
            TemplateField::parse("practitioner", PhiLevel::Minimal),
            Err(TemplateFieldError::AboveLevel(..))
        ));
        assert_eq!(
            TemplateField::parse("practitioner", PhiLevel::Standard),
            Ok(TemplateField::Practitioner)
        );
    }

    #[test]
    fn a_day_only_appointment_never_shows_a_made_up_time() {
        let site = SiteFacts {
            phone: None,
            date_format: "%d/%m/%Y".into(),
            time_format: "%H:%M".into(),
        };
        // The first instant of 8 March 2026 in New York: 00:00 EST.
        let a = Appointment {
            start: "2026-03-08T05:00:00Z".parse().unwrap(),
            time_unknown: true,
            ..appointment()
        };
        assert_eq!(
            render_parameters(
                &[TemplateField::GivenName, TemplateField::LocalDate],
                &a,
                &site
            )
            .unwrap(),
            ["Ana", "08/03/2026"]
        );
        let err = render_parameters(&[TemplateField::LocalTime], &a, &site).unwrap_err();
        assert_eq!(err, RenderError::TimeUnknown);
        assert!(!err.to_string().contains("00:00"));
    }

    #[test]
    fn renders_local_date_and_time_in_the_site_zone_across_dst() {
        // 2026-03-08 is the US spring-forward day: 10:30Z is 06:30 EDT (UTC-4).
        let site = SiteFacts {
            phone: Some("+1 555 0100".into()),
            date_format: "%d/%m/%Y".into(),
            time_format: "%H:%M".into(),
        };
        let params = render_parameters(
            &[
                TemplateField::GivenName,
                TemplateField::LocalDate,
                TemplateField::LocalTime,
                TemplateField::Location,
                TemplateField::SitePhone,
            ],
            &appointment(),
            &site,
        )
        .unwrap();
        assert_eq!(
            params,
            [
                "Ana",
                "08/03/2026",
                "06:30",
                "Main Street Clinic",
                "+1 555 0100"
            ]
        );
    }
}
