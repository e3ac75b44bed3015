//! Sensitive services: appointments whose mere existence reveals a condition (psychiatry, HIV,
//! oncology, reproductive health...). For them a site either sends nothing on WhatsApp or only a
//! neutral template that names no department, provider or reason.

use serde::Deserialize;

use crate::model::Appointment;
use crate::template::TemplateField;

/// What to do with a sensitive appointment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensitiveAction {
    /// No WhatsApp message at all.
    #[default]
    Suppress,
    /// Only the neutral template (date, time, first name, site phone).
    Neutral,
}

/// The deny-list. Terms match case-insensitively as substrings (`hiv` matches `HIV clinic`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensitivePolicy {
    #[serde(default)]
    pub service_types: Vec<String>,
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub practitioners: Vec<String>,
    #[serde(default)]
    pub action: SensitiveAction,
    /// Template key used when `action = "neutral"`.
    #[serde(default)]
    pub neutral_template: Option<String>,
}

/// Why an appointment is sensitive (names the field, never the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    Ordinary,
    Sensitive(&'static str),
}

fn matches(terms: &[String], value: Option<&str>) -> bool {
    let Some(v) = value else { return false };
    let v = v.to_lowercase();
    terms
        .iter()
        .any(|t| !t.trim().is_empty() && v.contains(&t.trim().to_lowercase()))
}

/// Fields a neutral template may render: nothing that names a place, a person or a service.
pub const NEUTRAL_FIELDS: &[TemplateField] = &[
    TemplateField::GivenName,
    TemplateField::LocalDate,
    TemplateField::LocalTime,
    TemplateField::SitePhone,
];

impl SensitivePolicy {
    /// Classifies an appointment against the deny-list.
    // PHI: the service type is compared with the deny-list, never returned or logged.
    #[allow(clippy::disallowed_methods)]
    pub fn classify(&self, a: &Appointment) -> Sensitivity {
        if matches(
            &self.service_types,
            a.service_type.as_ref().map(|s| s.expose().as_str()),
        ) {
            return Sensitivity::Sensitive("service type");
        }
        if matches(&self.locations, a.location.as_deref()) {
            return Sensitivity::Sensitive("location");
        }
        if matches(&self.practitioners, a.practitioner.as_deref()) {
            return Sensitivity::Sensitive("practitioner");
        }
        Sensitivity::Ordinary
    }
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::phi::Phi;

    fn appt(service: &str, location: &str) -> Appointment {
        Appointment {
            key: AppointmentKey {
                source: "s".into(),
                id: "1".into(),
            },
            placer_id: None,
            status: AppointmentStatus::Booked,
            start: "2026-12-01T10:00:00Z".parse().unwrap(),
            end: None,
            time_unknown: false,
            site: "main".into(),
            time_zone: "UTC".into(),
            location: Some(location.into()),
            practitioner: Some("Dr. Who".into()),
            service_type: Some(Phi::new(service.into())),
            reason: None,
            patient: Patient::default(),
            ehr_consent: None,
        }
    }

    #[test]
    fn deny_list_matches_service_location_and_practitioner() {
        let p = SensitivePolicy {
            service_types: vec!["Psychiatry".into(), "HIV".into()],
            locations: vec!["oncology center".into()],
            practitioners: vec!["dr. who".into()],
            ..SensitivePolicy::default()
        };
        assert_eq!(
            p.classify(&appt("Adult psychiatry intake", "Main")),
            Sensitivity::Sensitive("service type")
        );
        assert_eq!(
            p.classify(&appt("Office visit", "Oncology Center East")),
            Sensitivity::Sensitive("location")
        );
        assert_eq!(
            p.classify(&appt("Office visit", "Main")),
            Sensitivity::Sensitive("practitioner")
        );
        let none = SensitivePolicy::default();
        assert_eq!(
            none.classify(&appt("HIV follow-up", "Main")),
            Sensitivity::Ordinary
        );
    }
}
