//! FHIR R5 Appointment, Patient and Consent, read element by element: only the elements medrelay
//! uses are declared, so only they are checked (a wrong type or code in one of them rejects the
//! entry with its path; an element medrelay does not read can never cost a cancellation).
//!
//! Why not fhir-sdk's `r5` models: enabling them adds the R5 model crate and their serde code to
//! the slowest crate of the build (BENCHMARKS.md, "FHIR R5"), for the dozen elements read here.
//!
//! What differs from R4B, and how it is read:
//! - `Appointment.serviceType` and `reason` are CodeableReferences: the concept's text, else the
//!   reference's display or the referenced HealthcareService in the Bundle;
//! - `Appointment.subject` names the patient (the participants are the fallback);
//! - `participant.required` is a boolean, `patientInstruction` CodeableReferences, `class` and
//!   `virtualService` are new: not read, so not checked;
//! - `Consent`: `subject` (R4 `patient`), `date` (R4 `dateTime`), `decision` (R4 `provision.type`),
//!   `period` (R4 `provision.period`), `regulatoryBasis` (R4 `policyRule`), `provision` a list,
//!   status `not-done` (R4 `rejected`) and `unknown`;
//! - Patient: the elements read are the same as R4's.

use std::num::NonZeroU32;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::outcome::Issue;
use crate::r4b::policy_decision;
use crate::time::{Span, When, parse_instant};
use crate::view::{
    AppointmentView, Code, ConsentStatus, ConsentView, Name, Named, Participant, PatientIdentifier,
    PatientView, Telecom,
};

#[derive(Deserialize)]
struct Coding {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
}

impl Coding {
    fn code(&self) -> Code {
        Code {
            system: self.system.clone(),
            code: self.code.clone(),
        }
    }
}

#[derive(Deserialize)]
struct CodeableConcept {
    #[serde(default)]
    coding: Vec<Coding>,
    text: Option<String>,
}

impl CodeableConcept {
    /// As R4B's: the text, else the first coding's display or code.
    fn text(&self) -> Option<String> {
        self.text
            .clone()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| {
                self.coding
                    .iter()
                    .find_map(|c| c.display.clone().or_else(|| c.code.clone()))
            })
    }
}

#[derive(Deserialize)]
struct Reference {
    reference: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    display: Option<String>,
}

impl Reference {
    fn participant(&self) -> Participant {
        Participant {
            reference: self.reference.clone(),
            kind: self.kind.clone(),
            display: self.display.clone(),
        }
    }
}

#[derive(Deserialize)]
struct CodeableReference {
    concept: Option<CodeableConcept>,
    reference: Option<Reference>,
}

impl CodeableReference {
    fn named(&self) -> Named {
        Named {
            text: self
                .concept
                .as_ref()
                .and_then(CodeableConcept::text)
                .or_else(|| self.reference.as_ref().and_then(|r| r.display.clone())),
            reference: self.reference.as_ref().and_then(|r| r.reference.clone()),
        }
    }
}

#[derive(Deserialize)]
struct Identifier {
    system: Option<String>,
    value: Option<String>,
    #[serde(rename = "type")]
    kind: Option<CodeableConcept>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    #[serde(default)]
    security: Vec<Coding>,
}

#[derive(Deserialize)]
struct AppointmentParticipant {
    actor: Option<Reference>,
}

#[derive(Deserialize)]
struct Appointment {
    id: Option<String>,
    meta: Option<Meta>,
    #[serde(default)]
    identifier: Vec<Identifier>,
    status: String,
    start: Option<String>,
    end: Option<String>,
    #[serde(rename = "minutesDuration")]
    minutes_duration: Option<NonZeroU32>,
    subject: Option<Reference>,
    #[serde(default)]
    participant: Vec<AppointmentParticipant>,
    #[serde(rename = "serviceType", default)]
    service_type: Vec<CodeableReference>,
    #[serde(rename = "appointmentType")]
    appointment_type: Option<CodeableConcept>,
    #[serde(default)]
    reason: Vec<CodeableReference>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct HumanName {
    #[serde(rename = "use")]
    use_: Option<String>,
    family: Option<String>,
    #[serde(default)]
    given: Vec<Option<String>>,
}

#[derive(Deserialize)]
struct ContactPoint {
    system: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    value: Option<String>,
    rank: Option<NonZeroU32>,
}

#[derive(Deserialize)]
struct Communication {
    language: CodeableConcept,
    preferred: Option<bool>,
}

#[derive(Deserialize)]
struct Patient {
    id: Option<String>,
    meta: Option<Meta>,
    #[serde(default)]
    identifier: Vec<Identifier>,
    #[serde(default)]
    name: Vec<HumanName>,
    #[serde(default)]
    telecom: Vec<ContactPoint>,
    #[serde(default)]
    communication: Vec<Communication>,
}

#[derive(Deserialize)]
struct Period {
    start: Option<String>,
    end: Option<String>,
}

#[derive(Deserialize)]
struct Provision {
    #[serde(default)]
    purpose: Vec<Coding>,
    #[serde(default)]
    action: Vec<CodeableConcept>,
    #[serde(default)]
    provision: Vec<Provision>,
}

#[derive(Deserialize)]
struct Consent {
    meta: Option<Meta>,
    status: String,
    #[serde(default)]
    category: Vec<CodeableConcept>,
    subject: Option<Reference>,
    date: Option<String>,
    period: Option<Period>,
    #[serde(rename = "regulatoryBasis", default)]
    regulatory_basis: Vec<CodeableConcept>,
    decision: Option<String>,
    #[serde(default)]
    provision: Vec<Provision>,
}

/// The issue of an element whose value is not valid, naming the element, never the value.
pub(crate) fn invalid(expression: &str) -> Issue {
    Issue::error(
        "value",
        "invalid value (wrong type, format or code)",
        Some(expression.to_owned()),
    )
}

/// A FHIR instant element, or the issue naming it.
fn instant_at(text: Option<&str>, expression: &str) -> Result<Option<jiff::Timestamp>, Issue> {
    text.map(|t| parse_instant(t).ok_or_else(|| invalid(expression)))
        .transpose()
}

/// A FHIR date / dateTime element, or the issue naming it.
fn when_at(text: Option<&str>, expression: &str) -> Result<Option<When>, Issue> {
    text.map(|t| When::parse(t).ok_or_else(|| invalid(expression)))
        .transpose()
}

const APPOINTMENT_STATUS: [&str; 10] = [
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
];

/// An R5 Appointment's elements medrelay uses.
pub fn appointment(json: &str) -> Result<AppointmentView, Issue> {
    let a: Appointment = crate::map::parse(json, "Appointment")?;
    if !APPOINTMENT_STATUS.contains(&a.status.as_str()) {
        return Err(invalid("Appointment.status"));
    }
    let meta = a.meta.as_ref();
    Ok(AppointmentView {
        start: instant_at(a.start.as_deref(), "Appointment.start")?,
        end: instant_at(a.end.as_deref(), "Appointment.end")?,
        last_updated: instant_at(
            meta.and_then(|m| m.last_updated.as_deref()),
            "Appointment.meta.lastUpdated",
        )?,
        version_id: meta.and_then(|m| m.version_id.clone()),
        identifiers: a
            .identifier
            .iter()
            .map(|i| (i.system.clone(), i.value.clone()))
            .collect(),
        minutes_duration: a.minutes_duration.map(NonZeroU32::get),
        subject: a.subject.as_ref().map(Reference::participant),
        participants: a
            .participant
            .iter()
            .filter_map(|p| p.actor.as_ref().map(Reference::participant))
            .collect(),
        service_types: a
            .service_type
            .iter()
            .map(CodeableReference::named)
            .collect(),
        appointment_type: a.appointment_type.as_ref().and_then(CodeableConcept::text),
        reasons: a.reason.iter().map(CodeableReference::named).collect(),
        description: a.description,
        id: a.id,
        status: a.status,
    })
}

/// An R5 Patient's elements medrelay uses.
pub fn patient(json: &str) -> Result<PatientView, Issue> {
    let p: Patient = crate::map::parse(json, "Patient")?;
    Ok(PatientView {
        identifiers: p
            .identifier
            .iter()
            .map(|i| PatientIdentifier {
                mr: i
                    .kind
                    .as_ref()
                    .is_some_and(|t| t.coding.iter().any(|c| c.code.as_deref() == Some("MR"))),
                value: i.value.clone(),
            })
            .collect(),
        names: p
            .name
            .into_iter()
            .map(|n| Name {
                use_: n.use_,
                family: n.family,
                given: n.given.into_iter().flatten().next(),
            })
            .collect(),
        telecom: p
            .telecom
            .into_iter()
            .map(|t| Telecom {
                system: t.system,
                use_: t.use_,
                value: t.value,
                rank: t.rank.map(NonZeroU32::get),
            })
            .collect(),
        languages: p
            .communication
            .iter()
            .map(|c| {
                (
                    c.preferred,
                    c.language.coding.iter().find_map(|c| c.code.clone()),
                )
            })
            .collect(),
        security: p
            .meta
            .iter()
            .flat_map(|m| m.security.iter().map(Coding::code))
            .collect(),
        id: p.id,
    })
}

fn provision_codes(p: &Provision, out: &mut Vec<Code>) {
    out.extend(p.purpose.iter().map(Coding::code));
    for cc in &p.action {
        out.extend(cc.coding.iter().map(Coding::code));
    }
    for n in &p.provision {
        provision_codes(n, out);
    }
}

/// An R5 Consent's elements medrelay uses.
pub fn consent(json: &str) -> Result<ConsentView, Issue> {
    let c: Consent = crate::map::parse(json, "Consent")?;
    let status = match c.status.as_str() {
        "draft" => ConsentStatus::Draft,
        "active" => ConsentStatus::Active,
        "inactive" => ConsentStatus::Inactive,
        "not-done" => ConsentStatus::Rejected,
        "entered-in-error" => ConsentStatus::EnteredInError,
        "unknown" => ConsentStatus::Unknown,
        _ => return Err(invalid("Consent.status")),
    };
    let permit = match c.decision.as_deref() {
        Some("permit") => Some(true),
        Some("deny") => Some(false),
        Some(_) => return Err(invalid("Consent.decision")),
        None => policy_decision(
            c.regulatory_basis
                .iter()
                .flat_map(|cc| cc.coding.iter().map(|x| x.code.as_deref())),
        ),
    };
    let period = match &c.period {
        Some(p) => Some(Span {
            start: when_at(p.start.as_deref(), "Consent.period.start")?,
            end: when_at(p.end.as_deref(), "Consent.period.end")?,
        }),
        None => None,
    };
    let recorded = match when_at(c.date.as_deref(), "Consent.date")? {
        Some(w) => Some(w),
        None => instant_at(
            c.meta.as_ref().and_then(|m| m.last_updated.as_deref()),
            "Consent.meta.lastUpdated",
        )?
        .map(When::At),
    };
    let mut codes: Vec<Code> = c
        .category
        .iter()
        .flat_map(|cc| cc.coding.iter().map(Coding::code))
        .collect();
    for p in &c.provision {
        provision_codes(p, &mut codes);
    }
    Ok(ConsentView {
        patient: c.subject.and_then(|s| s.reference),
        status,
        recorded,
        permit,
        period,
        codes,
    })
}

/// The elements whose presence (or shape) only R5 has, in an Appointment or a Consent: one of
/// them makes the whole Bundle R5. R4 has none of these names; for R5 resources without any of
/// them, the R4B reading of the elements medrelay uses is the same.
#[derive(Deserialize)]
struct Probe<'a> {
    // Appointment
    subject: Option<IgnoredAny>,
    reason: Option<IgnoredAny>,
    class: Option<IgnoredAny>,
    #[serde(rename = "virtualService")]
    virtual_service: Option<IgnoredAny>,
    #[serde(rename = "serviceType", default)]
    service_type: Vec<ServiceTypeProbe>,
    #[serde(default)]
    participant: Vec<ParticipantProbe>,
    #[serde(rename = "patientInstruction", borrow)]
    patient_instruction: Option<&'a serde_json::value::RawValue>,
    // Consent (subject above too)
    decision: Option<IgnoredAny>,
    date: Option<IgnoredAny>,
    grantor: Option<IgnoredAny>,
    grantee: Option<IgnoredAny>,
    controller: Option<IgnoredAny>,
    manager: Option<IgnoredAny>,
    #[serde(rename = "regulatoryBasis")]
    regulatory_basis: Option<IgnoredAny>,
    #[serde(rename = "policyBasis")]
    policy_basis: Option<IgnoredAny>,
    #[serde(borrow)]
    provision: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct ServiceTypeProbe {
    concept: Option<IgnoredAny>,
    reference: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct ParticipantProbe {
    required: Option<serde_json::Value>,
}

/// Whether an Appointment or Consent (raw JSON) is in R5's form. An unreadable resource is not
/// (its R4B parse reports what is wrong).
pub fn looks_r5(json: &str) -> bool {
    let Ok(p) = serde_json::from_str::<Probe<'_>>(json) else {
        return false;
    };
    let array = |r: Option<&serde_json::value::RawValue>| {
        r.is_some_and(|r| r.get().trim_start().starts_with('['))
    };
    p.subject.is_some()
        || p.reason.is_some()
        || p.class.is_some()
        || p.virtual_service.is_some()
        || p.service_type
            .iter()
            .any(|s| s.concept.is_some() || s.reference.is_some())
        || p.participant.iter().any(|x| {
            x.required
                .as_ref()
                .is_some_and(serde_json::Value::is_boolean)
        })
        || array(p.patient_instruction)
        || p.decision.is_some()
        || p.date.is_some()
        || p.grantor.is_some()
        || p.grantee.is_some()
        || p.controller.is_some()
        || p.manager.is_some()
        || p.regulatory_basis.is_some()
        || p.policy_basis.is_some()
        || array(p.provision)
}
