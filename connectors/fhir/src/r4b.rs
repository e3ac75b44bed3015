//! fhir-sdk's R4B models (R4 servers are wire-compatible) into the release-neutral views. Parsing
//! with the models checks every element of the resource, as before.

use fhir_sdk::r4b::resources::{Appointment, Consent, ConsentProvision, Patient};
use fhir_sdk::r4b::types::{CodeableConcept, Reference};

use crate::outcome::Issue;
use crate::time::{Span, When, checked_instant, instant};
use crate::view::{
    AppointmentView, Code, ConsentStatus, ConsentView, Name, Named, Participant, PatientIdentifier,
    PatientView, Telecom,
};

/// A CodeableConcept's text, else its first coding's display or code.
fn text_of(cc: &CodeableConcept) -> Option<String> {
    cc.text
        .clone()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| {
            cc.coding
                .iter()
                .flatten()
                .find_map(|c| c.display.clone().or_else(|| c.code.clone()))
        })
}

fn concept(cc: &CodeableConcept) -> Named {
    Named {
        text: text_of(cc),
        reference: None,
    }
}

fn participant(r: &Reference) -> Participant {
    Participant {
        reference: r.reference.clone(),
        kind: r.r#type.clone(),
        display: r.display.clone(),
    }
}

/// An instant element, or the issue naming it when its offset is beyond what FHIR allows.
fn instant_at(
    i: Option<&fhir_sdk::Instant>,
    expression: &str,
) -> Result<Option<jiff::Timestamp>, Issue> {
    i.map(|i| checked_instant(i).ok_or_else(|| crate::r5::invalid(expression)))
        .transpose()
}

/// The Appointment's elements medrelay uses; an issue when a time's offset is beyond +-14:00
/// (fhir-model reads up to 25:59, FHIR allows 14:00).
pub fn appointment(a: &Appointment) -> Result<AppointmentView, Issue> {
    let meta = a.meta.as_ref();
    Ok(AppointmentView {
        id: a.id.clone(),
        identifiers: a
            .identifier
            .iter()
            .flatten()
            .map(|i| (i.system.clone(), i.value.clone()))
            .collect(),
        status: AsRef::<str>::as_ref(&a.status).to_owned(),
        start: instant_at(a.start.as_ref(), "Appointment.start")?,
        end: instant_at(a.end.as_ref(), "Appointment.end")?,
        minutes_duration: a.minutes_duration.map(|m| m.get()),
        subject: None,
        participants: a
            .participant
            .iter()
            .flatten()
            .filter_map(|p| p.actor.as_ref().map(participant))
            .collect(),
        service_types: a.service_type.iter().flatten().map(concept).collect(),
        appointment_type: a.appointment_type.as_ref().and_then(text_of),
        reasons: a.reason_code.iter().flatten().map(concept).collect(),
        description: a.description.clone(),
        last_updated: instant_at(
            meta.and_then(|m| m.last_updated.as_ref()),
            "Appointment.meta.lastUpdated",
        )?,
        version_id: meta.and_then(|m| m.version_id.clone()),
    })
}

/// The Patient's elements medrelay uses.
pub fn patient(p: &Patient) -> PatientView {
    PatientView {
        id: p.id.clone(),
        identifiers: p
            .identifier
            .iter()
            .flatten()
            .map(|i| PatientIdentifier {
                mr: i.r#type.as_ref().is_some_and(|t| {
                    t.coding
                        .iter()
                        .flatten()
                        .any(|c| c.code.as_deref() == Some("MR"))
                }),
                value: i.value.clone(),
            })
            .collect(),
        names: p
            .name
            .iter()
            .flatten()
            .map(|n| Name {
                use_: n.r#use.as_ref().map(|u| u.as_ref().to_owned()),
                family: n.family.clone(),
                given: n.given.iter().flatten().next().cloned(),
            })
            .collect(),
        telecom: p
            .telecom
            .iter()
            .flatten()
            .map(|t| Telecom {
                system: t.system.as_ref().map(|s| s.as_ref().to_owned()),
                use_: t.r#use.as_ref().map(|u| u.as_ref().to_owned()),
                value: t.value.clone(),
                rank: t.rank.map(|r| r.get()),
            })
            .collect(),
        languages: p
            .communication
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.preferred,
                    c.language
                        .coding
                        .iter()
                        .flatten()
                        .find_map(|c| c.code.clone()),
                )
            })
            .collect(),
        security: p
            .meta
            .iter()
            .flat_map(|m| m.security.iter().flatten())
            .map(|c| Code {
                system: c.system.clone(),
                code: c.code.clone(),
            })
            .collect(),
    }
}

fn provision_codes(p: &ConsentProvision, out: &mut Vec<Code>) {
    out.extend(p.purpose.iter().flatten().map(|c| Code {
        system: c.system.clone(),
        code: c.code.clone(),
    }));
    for cc in p.action.iter().flatten() {
        out.extend(cc.coding.iter().flatten().map(|c| Code {
            system: c.system.clone(),
            code: c.code.clone(),
        }));
    }
    for n in p.provision.iter().flatten() {
        provision_codes(n, out);
    }
}

/// OPTIN / OPTOUT codes of a policy rule (v3 ActCode).
pub fn policy_decision<'a>(codes: impl IntoIterator<Item = Option<&'a str>>) -> Option<bool> {
    codes.into_iter().find_map(|c| match c {
        Some("OPTIN" | "OPTINR") => Some(true),
        Some("OPTOUT" | "OPTOUTE") => Some(false),
        _ => None,
    })
}

/// The Consent's elements medrelay uses.
pub fn consent(c: &Consent) -> ConsentView {
    use fhir_sdk::r4b::codes::{ConsentProvisionType, ConsentState};
    let mut codes = Vec::new();
    for cc in c.category.iter().flatten() {
        codes.extend(cc.coding.iter().flatten().map(|x| Code {
            system: x.system.clone(),
            code: x.code.clone(),
        }));
    }
    if let Some(p) = &c.provision {
        provision_codes(p, &mut codes);
    }
    let permit = match c.provision.as_ref().and_then(|p| p.r#type) {
        Some(t) => Some(matches!(t, ConsentProvisionType::Permit)),
        None => c
            .policy_rule
            .as_ref()
            .and_then(|r| policy_decision(r.coding.iter().flatten().map(|x| x.code.as_deref()))),
    };
    ConsentView {
        patient: c.patient.as_ref().and_then(|p| p.reference.clone()),
        status: match c.status {
            ConsentState::Draft => ConsentStatus::Draft,
            ConsentState::Proposed => ConsentStatus::Proposed,
            ConsentState::Active => ConsentStatus::Active,
            ConsentState::Inactive => ConsentStatus::Inactive,
            ConsentState::Rejected => ConsentStatus::Rejected,
            ConsentState::EnteredInError => ConsentStatus::EnteredInError,
        },
        recorded: c.date_time.as_ref().and_then(When::from_sdk).or_else(|| {
            c.meta
                .as_ref()?
                .last_updated
                .as_ref()
                .map(|i| When::At(instant(i)))
        }),
        permit,
        period: c
            .provision
            .as_ref()
            .and_then(|p| p.period.as_ref())
            .map(Span::from_sdk),
        codes,
    }
}
