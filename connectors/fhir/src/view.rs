//! What the mapping reads from an Appointment, a Patient and a Consent, independent of the FHIR
//! release: the R4B models ([`crate::r4b`]) and the targeted R5 reader ([`crate::r5`]) both fill
//! these, so one mapping (and one consent rule) serves both, and an R5 resource maps to exactly the
//! canonical values of its R4B twin.

use jiff::Timestamp;

use crate::time::{Span, When};

/// A coding: `system` and `code`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Code {
    pub system: Option<String>,
    pub code: Option<String>,
}

/// A named thing: a CodeableConcept's text (else a coding's display or code), or a Reference's
/// display, with the reference to resolve in the Bundle when there is no text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Named {
    pub text: Option<String>,
    pub reference: Option<String>,
}

/// `Appointment.participant` (or R5 `Appointment.subject`): the actor.
#[derive(Clone, Debug, Default)]
pub struct Participant {
    pub reference: Option<String>,
    /// `Reference.type` (a resource type name).
    pub kind: Option<String>,
    pub display: Option<String>,
}

/// The elements of an Appointment medrelay uses.
#[derive(Clone, Debug, Default)]
pub struct AppointmentView {
    pub id: Option<String>,
    /// `(system, value)` of each identifier.
    pub identifiers: Vec<(Option<String>, Option<String>)>,
    /// The status code as sent (both releases have the same ten codes).
    pub status: String,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub minutes_duration: Option<u32>,
    /// R5 `subject`: the patient when the participants do not name one.
    pub subject: Option<Participant>,
    pub participants: Vec<Participant>,
    /// R4 CodeableConcepts, R5 CodeableReferences (concept, else the HealthcareService).
    pub service_types: Vec<Named>,
    pub appointment_type: Option<String>,
    /// R4 `reasonCode`, R5 `reason`.
    pub reasons: Vec<Named>,
    pub description: Option<String>,
    pub last_updated: Option<Timestamp>,
    pub version_id: Option<String>,
}

/// `Patient.identifier`: whether its type is MR (medical record number), and the value.
#[derive(Clone, Debug, Default)]
pub struct PatientIdentifier {
    pub mr: bool,
    pub value: Option<String>,
}

/// `Patient.name`: use, family and the first given name.
#[derive(Clone, Debug, Default)]
pub struct Name {
    pub use_: Option<String>,
    pub family: Option<String>,
    pub given: Option<String>,
}

/// `Patient.telecom`.
#[derive(Clone, Debug, Default)]
pub struct Telecom {
    pub system: Option<String>,
    pub use_: Option<String>,
    pub value: Option<String>,
    pub rank: Option<u32>,
}

/// The elements of a Patient medrelay uses (the same in R4, R4B and R5).
#[derive(Clone, Debug, Default)]
pub struct PatientView {
    pub id: Option<String>,
    pub identifiers: Vec<PatientIdentifier>,
    pub names: Vec<Name>,
    pub telecom: Vec<Telecom>,
    /// `(preferred, first language code)` of each `communication`.
    pub languages: Vec<(Option<bool>, Option<String>)>,
    /// `meta.security` labels.
    pub security: Vec<Code>,
}

/// `Consent.status` across releases (R5 has no `proposed` or `rejected`, R4 no `not-done` or
/// `unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentStatus {
    Draft,
    Proposed,
    Active,
    Inactive,
    /// R4 `rejected`, R5 `not-done`.
    Rejected,
    EnteredInError,
    Unknown,
}

/// The elements of a Consent medrelay uses.
#[derive(Clone, Debug)]
pub struct ConsentView {
    /// R4 `patient`, R5 `subject`.
    pub patient: Option<String>,
    pub status: ConsentStatus,
    /// R4 `dateTime`, R5 `date`, else `meta.lastUpdated`.
    pub recorded: Option<When>,
    /// permit (true) / deny (false): R4 `provision.type` or `policyRule`, R5 `decision` or
    /// `regulatoryBasis` (OPTIN / OPTOUT).
    pub permit: Option<bool>,
    /// R4 `provision.period`, R5 `period`.
    pub period: Option<Span>,
    /// Every `category`, `provision.purpose` and `provision.action` coding (nested provisions too):
    /// what selects a Consent as a messaging consent.
    pub codes: Vec<Code>,
}
