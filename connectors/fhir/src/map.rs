//! A FHIR Bundle (search result, collection, Subscription notification) -> canonical changes.
//!
//! The Bundle is read as JSON and each entry parsed on its own, so one bad entry is one rejection
//! (with an [`Issue`]) and the rest keep flowing. Entries are R4 / R4B (parsed into fhir-sdk's R4B
//! models) unless one of the Bundle's Appointments or Consents has an element only R5 has: then
//! every Appointment, Patient and Consent of it is read by the targeted R5 reader (`r5.rs`).
//! Both fill the same views (`view.rs`), so a resource maps to the same canonical values in
//! either release. Where fields come from:
//! - id: the `identifier` with the configured system, else the logical id; version
//!   `meta.lastUpdated` (else the Bundle's timestamp) and `meta.versionId`;
//! - status, start, end (or `minutesDuration`). An Appointment that is not `booked` and has no
//!   `start` (a `cancelled`, `noshow` or `entered-in-error` one, which FHIR allows) is a status
//!   change alone ([`Change::Status`]): it updates the stored appointment and never creates one.
//!   A `booked` one without `start` is rejected;
//! - location, practitioner and patient from the participants (`Location/`, `Practitioner/` /
//!   `PractitionerRole/`, `Patient/` references, resolved in the Bundle when included; R5
//!   `subject` first for the patient); service type from `serviceType` (R5: its concept, else the
//!   referenced HealthcareService), else `appointmentType`; reason from `reasonCode` (R5
//!   `reason`) / `description` (kept only to be filtered);
//! - patient: MR identifier, official/usual name, phone/sms telecom, preferred language, and
//!   `meta.security` R/V (restricted, very restricted) as the protection flag;
//! - EHR consent from the patient's `Consent` resources in the Bundle: see [`crate::consent`].

use std::collections::HashMap;

use fhir_sdk::r4b::resources::{Appointment, Consent, Patient};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::phone::normalize_e164;
use medrelay_mapping::{
    Appointment as Canonical, AppointmentEvent, AppointmentKey, AppointmentStatus, Change,
    ContactPhone, Patient as CanonicalPatient, Phi, PhoneUse, SourceVersion, StatusChange,
};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::consent::{ConsentSelector, ehr_consent};
use crate::outcome::Issue;
use crate::view::{AppointmentView, ConsentView, Named, PatientView};

/// What the connector needs to map resources (from its configuration and site).
#[derive(Clone, Debug)]
pub struct FhirOptions {
    /// The system whose appointment ids the feed carries: the `source` half of every key.
    pub system: String,
    pub site: String,
    /// The site's IANA zone (date-only consent periods are days there).
    pub time_zone: String,
    /// Region for national phone numbers.
    pub default_region: String,
    /// `Appointment.identifier.system` whose value is the appointment id shared with other feeds
    /// (an EHR's own appointment number); `None`: the logical id.
    pub identifier_system: Option<String>,
    /// Which Consent resources are about messaging.
    pub consent: ConsentSelector,
}

/// An entry that could not be accepted: where, why, and its raw JSON for quarantine.
#[derive(Clone, Debug)]
pub struct RejectedEntry {
    /// `Bundle.entry[3]` plus the resource reference when readable (ids only, no PHI).
    pub location: String,
    pub issue: Issue,
    pub raw: Vec<u8>,
    pub filler_id: Option<String>,
}

/// What a Subscription notification's status (the backport `Parameters`) says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NotificationStatus {
    /// `handshake`, `heartbeat`, `event-notification`, `query-status`, `query-event`.
    pub kind: String,
    pub subscription: Option<String>,
    pub topic: Option<String>,
    /// `focus` references of the notification events (what an id-only notification points at).
    pub focus: Vec<String>,
    /// `events-since-subscription-start` (`eventsSinceSubscriptionStart`): how many events the
    /// server has sent on this Subscription so far; what a gap is measured against.
    pub events_since_start: Option<u64>,
    /// The `event-number` (`eventNumber`) of each notification event, in order.
    pub event_numbers: Vec<u64>,
}

/// A FHIR counter as servers write it: `"2"` (string, the backport's `valueString` and R4B's
/// `integer64`) or `2`.
fn counter(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

/// The first `value[x]` of a backport parameter (or part) that reads as a counter.
fn counter_value(p: &Value) -> Option<u64> {
    [
        "valueString",
        "valueInteger64",
        "valueUnsignedInt",
        "valueInteger",
        "valueDecimal",
        "valuePositiveInt",
    ]
    .iter()
    .find_map(|k| counter(&p[*k]))
}

/// The result of mapping one Bundle.
#[derive(Clone, Debug, Default)]
pub struct MappedBundle {
    pub bundle_type: String,
    pub notification: Option<NotificationStatus>,
    /// Whether the Bundle was read as FHIR R5 (one of its Appointments or Consents is in R5's form).
    pub r5: bool,
    /// In entry order: full appointments, and status changes of appointments without a start.
    pub events: Vec<Change>,
    pub rejected: Vec<RejectedEntry>,
    /// Entries without a resource (id-only notifications): their full URLs, to be read.
    pub missing: Vec<String>,
    /// Entries of other types (Location, Encounter...), counted, not used.
    pub other: usize,
}

impl MappedBundle {
    /// The Appointments an id-only notification points at (its `focus` references and the full
    /// URLs of entries without a resource), sorted and once each; empty when the Bundle carries the
    /// resources themselves or is about something else. The Subscription endpoint and the file
    /// import read these from the server, or refuse the Bundle with [`id_only_without_server`].
    pub fn id_only_references(&self) -> Vec<String> {
        if !self.events.is_empty() || !self.rejected.is_empty() {
            return Vec::new();
        }
        self.notification
            .iter()
            .flat_map(|n| n.focus.iter())
            .chain(self.missing.iter())
            .filter(|r| r.contains("Appointment/"))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// The issue for an id-only notification when the connector has no server to read it from: the
/// same words from the Subscription endpoint (422) and from a file import (quarantined, exit 3).
pub fn id_only_without_server() -> Issue {
    Issue::error(
        "not-supported",
        "id-only notifications need the connector's server settings to read the resources",
        None,
    )
}

/// `Type/id` of a reference or full URL (`https://x/fhir/Patient/1/_history/2` -> `Patient/1`);
/// `urn:uuid:` references are kept whole.
pub fn normalize_reference(r: &str) -> String {
    if r.starts_with("urn:") {
        return r.to_owned();
    }
    let parts: Vec<&str> = r.split('/').filter(|p| !p.is_empty()).collect();
    let parts = match parts.iter().position(|p| *p == "_history") {
        Some(i) => &parts[..i],
        None => &parts[..],
    };
    match parts {
        [.., t, id] => format!("{t}/{id}"),
        _ => r.to_owned(),
    }
}

/// Parses one resource, reporting only where it failed (serde's message can quote a value).
pub(crate) fn parse<T: serde::de::DeserializeOwned>(json: &str, kind: &str) -> Result<T, Issue> {
    let mut de = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let (code, what) = if inner.starts_with("missing field") {
            // "missing field `status`": an element name, no value.
            (
                "required",
                inner.split(" at line").next().unwrap_or("").to_owned(),
            )
        } else {
            (
                "value",
                "invalid value (wrong type, format or code)".to_owned(),
            )
        };
        let expression = if path == "." || path.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind}.{path}")
        };
        Issue::error(code, what, Some(expression))
    })
}

// PHI: patient fields are read into Phi values; nothing here is logged.
#[allow(clippy::disallowed_methods)]
fn map_patient(p: &PatientView, opts: &FhirOptions) -> CanonicalPatient {
    let mut out = CanonicalPatient::default();
    let mrn = p
        .identifiers
        .iter()
        .find(|i| i.mr)
        .or_else(|| p.identifiers.first())
        .and_then(|i| i.value.clone());
    out.id = mrn.or_else(|| p.id.clone()).map(Phi::new);
    let name = p
        .names
        .iter()
        .find(|n| n.use_.as_deref() == Some("official"))
        .or_else(|| {
            p.names
                .iter()
                .find(|n| matches!(n.use_.as_deref(), Some("usual") | None))
        })
        .or_else(|| p.names.first());
    if let Some(n) = name {
        out.family_name = n.family.clone().map(Phi::new);
        out.given_name = n.given.clone().map(Phi::new);
    }
    for (i, t) in p.telecom.iter().enumerate() {
        let system = t.system.as_deref();
        if !matches!(system, Some("phone" | "sms")) {
            continue;
        }
        let use_ = match t.use_.as_deref() {
            Some("mobile") => PhoneUse::Mobile,
            Some("home") => PhoneUse::Home,
            Some("work") => PhoneUse::Work,
            // An old number is not a number to message.
            Some("old") => continue,
            _ if system == Some("sms") => PhoneUse::Mobile,
            _ => PhoneUse::Other,
        };
        let Some(value) = t.value.as_deref() else {
            continue;
        };
        let (e164, unusable) = match normalize_e164(value, &opts.default_region) {
            Ok(n) => (Some(Phi::new(n)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.phones.push(ContactPhone {
            e164,
            unusable,
            use_,
            rank: t.rank.unwrap_or(i as u32 + 100),
        });
    }
    out.preferred_language = p
        .languages
        .iter()
        .find(|(preferred, _)| *preferred == Some(true))
        .or_else(|| p.languages.first())
        .and_then(|(_, code)| code.clone());
    // v3-Confidentiality R (restricted) or V (very restricted): never message.
    let restricted = p.security.iter().any(|c| {
        c.system.as_deref() == Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality")
            && matches!(c.code.as_deref(), Some("R" | "V"))
    });
    out.protected = Some(restricted);
    out
}

struct Indexed {
    /// Patients once each; `patients` maps every key (reference, full URL) to one of them.
    patient_list: Vec<PatientView>,
    patients: HashMap<String, usize>,
    consents: Vec<(String, ConsentView)>,
    displays: HashMap<String, String>,
}

fn actor_display(a: &AppointmentView, idx: &Indexed, kinds: &[&str]) -> Option<String> {
    a.participants.iter().find_map(|actor| {
        let r = actor.reference.as_deref().map(normalize_reference);
        let kind_ok = r
            .as_deref()
            .is_some_and(|r| kinds.iter().any(|k| r.starts_with(&format!("{k}/"))))
            || actor.kind.as_deref().is_some_and(|t| kinds.contains(&t));
        if !kind_ok {
            return None;
        }
        actor
            .display
            .clone()
            .or_else(|| r.and_then(|r| idx.displays.get(&r).cloned()))
    })
}

/// The text of a concept, else the display of what it references in the Bundle.
fn named_text(n: &Named, idx: &Indexed) -> Option<String> {
    n.text.clone().or_else(|| {
        n.reference
            .as_deref()
            .and_then(|r| idx.displays.get(&normalize_reference(r)).cloned())
    })
}

/// `Patient/..` (or `urn:uuid:..`) the appointment is for: R5 `subject`, else a participant.
fn patient_reference(a: &AppointmentView) -> Option<String> {
    a.subject.iter().chain(a.participants.iter()).find_map(|p| {
        p.reference
            .as_deref()
            .map(normalize_reference)
            .filter(|r| r.starts_with("Patient/") || r.starts_with("urn:uuid:"))
    })
}

// PHI: appointment fields are read into the canonical model (Phi where they are patient data).
#[allow(clippy::disallowed_methods)]
fn map_appointment(
    a: &AppointmentView,
    idx: &Indexed,
    opts: &FhirOptions,
    fallback_version: Timestamp,
) -> Result<Change, Issue> {
    let id = match &opts.identifier_system {
        Some(sys) => a
            .identifiers
            .iter()
            .find(|(s, _)| s.as_deref() == Some(sys.as_str()))
            .and_then(|(_, v)| v.clone())
            .ok_or_else(|| {
                Issue::error(
                    "required",
                    format!("no identifier with the configured system {sys}"),
                    Some("Appointment.identifier".into()),
                )
            })?,
        None => a.id.clone().ok_or_else(|| {
            Issue::error(
                "required",
                "the Appointment has no id",
                Some("Appointment.id".into()),
            )
        })?,
    };
    let status = AppointmentStatus::from_code(&a.status).ok_or_else(|| {
        Issue::error(
            "not-supported",
            "status is not an AppointmentStatus medrelay knows",
            Some("Appointment.status".into()),
        )
    })?;
    let key = AppointmentKey {
        source: opts.system.clone(),
        id,
    };
    let version = SourceVersion {
        at: a.last_updated.unwrap_or(fallback_version),
        seq: a
            .version_id
            .as_deref()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0),
    };
    let raw_ref = format!("Appointment/{}", a.id.as_deref().unwrap_or("(no id)"));
    let Some(start) = a.start else {
        if status == AppointmentStatus::Booked {
            return Err(Issue::error(
                "required",
                "a booked appointment needs a start to be reminded of",
                Some("Appointment.start".into()),
            ));
        }
        // A cancellation (no-show, entry in error...) names the appointment; that is enough.
        return Ok(Change::Status(StatusChange {
            key,
            placer_id: None,
            status,
            version,
            raw_ref,
            message_id: None,
        }));
    };
    // Checked: minutesDuration is any positive integer; near the end of time it would overflow.
    let end = match (a.end, a.minutes_duration) {
        (Some(e), _) => Some(e),
        (None, Some(m)) => Some(
            start
                .checked_add(SignedDuration::from_mins(i64::from(m)))
                .map_err(|_| {
                    Issue::error(
                        "value",
                        "minutesDuration does not end in a representable time",
                        Some("Appointment.minutesDuration".into()),
                    )
                })?,
        ),
        (None, None) => None,
    };
    if end.is_some_and(|e| e < start) {
        return Err(Issue::error(
            "invariant",
            "end is before start (app-2)",
            Some("Appointment.end".into()),
        ));
    }
    let patient_ref = patient_reference(a);
    let (patient, ehr) = match patient_ref
        .as_ref()
        .and_then(|r| idx.patients.get(r).map(|&i| (r, &idx.patient_list[i])))
    {
        Some((r, p)) => {
            let consents: Vec<&ConsentView> = idx
                .consents
                .iter()
                .filter(|(pr, _)| pr == r)
                .map(|(_, c)| c)
                .collect();
            let zone = TimeZone::get(&opts.time_zone).unwrap_or(TimeZone::UTC);
            (
                map_patient(p, opts),
                ehr_consent(&consents, &opts.consent, start, &zone),
            )
        }
        // Not included: the id is still known (for write-back matching), nothing else.
        None => (
            CanonicalPatient {
                id: patient_ref.map(|r| Phi::new(r.trim_start_matches("Patient/").to_owned())),
                ..CanonicalPatient::default()
            },
            None,
        ),
    };
    let service_type = a
        .service_types
        .iter()
        .find_map(|n| named_text(n, idx))
        .or_else(|| a.appointment_type.clone());
    let reason = a
        .reasons
        .iter()
        .find_map(|n| named_text(n, idx))
        .or_else(|| a.description.clone());
    Ok(Change::from(AppointmentEvent {
        appointment: Canonical {
            key,
            placer_id: None,
            status,
            start,
            end,
            time_unknown: false,
            site: opts.site.clone(),
            time_zone: opts.time_zone.clone(),
            location: actor_display(a, idx, &["Location"]),
            practitioner: actor_display(a, idx, &["Practitioner", "PractitionerRole"]),
            service_type: service_type.map(Phi::new),
            reason: reason.map(Phi::new),
            patient,
            ehr_consent: ehr,
        },
        version,
        raw_ref,
        message_id: None,
    }))
}

fn notification_status(params: &Value) -> NotificationStatus {
    let mut s = NotificationStatus::default();
    for p in params["parameter"].as_array().into_iter().flatten() {
        match p["name"].as_str() {
            Some("type") => s.kind = p["valueCode"].as_str().unwrap_or_default().to_owned(),
            Some("subscription") => {
                s.subscription = p["valueReference"]["reference"].as_str().map(str::to_owned)
            }
            Some("topic") => {
                s.topic = p["valueCanonical"]
                    .as_str()
                    .or(p["valueUri"].as_str())
                    .map(str::to_owned)
            }
            Some("events-since-subscription-start") => s.events_since_start = counter_value(p),
            Some("notification-event") => {
                for part in p["part"].as_array().into_iter().flatten() {
                    if part["name"] == "focus"
                        && let Some(r) = part["valueReference"]["reference"].as_str()
                    {
                        s.focus.push(r.to_owned());
                    }
                    if part["name"] == "event-number"
                        && let Some(n) = counter_value(part)
                    {
                        s.event_numbers.push(n);
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// An R4B / R5 `SubscriptionStatus` (the first entry of a native notification) as the same status.
fn subscription_status(status: &Value) -> NotificationStatus {
    NotificationStatus {
        kind: status["type"].as_str().unwrap_or_default().to_owned(),
        subscription: status["subscription"]["reference"]
            .as_str()
            .map(str::to_owned),
        topic: status["topic"].as_str().map(str::to_owned),
        focus: status["notificationEvent"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["focus"]["reference"].as_str().map(str::to_owned))
            .collect(),
        events_since_start: counter(&status["eventsSinceSubscriptionStart"]),
        event_numbers: status["notificationEvent"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| counter(&e["eventNumber"]))
            .collect(),
    }
}

/// The Bundle as read: entries borrowed from the input, each resource kept as raw JSON until it
/// is needed (a whole search page as a `serde_json::Value` costs about 25x its size).
#[derive(serde::Deserialize)]
struct RawBundle<'a> {
    #[serde(rename = "resourceType", default, borrow)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(rename = "type", default, borrow)]
    bundle_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    entry: Vec<RawEntry<'a>>,
}

#[derive(serde::Deserialize)]
struct RawEntry<'a> {
    #[serde(rename = "fullUrl", default, borrow)]
    full_url: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    resource: Option<&'a RawValue>,
}

/// The two things read from every resource before deciding what to do with it.
#[derive(serde::Deserialize)]
struct Probe<'a> {
    #[serde(rename = "resourceType", default, borrow)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

/// An entry kept for reading once the Bundle's release is known.
struct Pending<'a> {
    i: usize,
    raw: &'a RawValue,
    /// `Type/id`, else the full URL, else the type.
    reference: String,
    /// The logical id, when it may be shown (never a Patient's: it identifies the patient).
    shown_id: Option<String>,
    /// Every key the entry is found by (its reference and full URL, normalized).
    keys: Vec<String>,
}

impl Pending<'_> {
    /// The rejection of this entry (location, issue, raw JSON for quarantine).
    fn reject(&self, kind: &str, issue: Issue) -> (usize, RejectedEntry) {
        let location = match &self.shown_id {
            Some(_) => format!("Bundle.entry[{}] {}", self.i, self.reference),
            None => format!("Bundle.entry[{}] {kind}", self.i),
        };
        let filler_id = if kind == "Appointment" {
            self.shown_id.clone()
        } else {
            None
        };
        (
            self.i,
            RejectedEntry {
                location,
                issue,
                raw: self.raw.get().as_bytes().to_vec(),
                filler_id,
            },
        )
    }
}

/// Maps a Bundle's bytes. `now` stands in for `meta.lastUpdated` when neither the resource nor the
/// Bundle has a time. An input that is not a Bundle at all is one `Err` issue (then a 400 with an
/// OperationOutcome, and the raw body in quarantine).
pub fn map_bundle(bytes: &[u8], opts: &FhirOptions, now: Timestamp) -> Result<MappedBundle, Issue> {
    let not_json = |e: serde_json::Error| {
        Issue::error(
            "structure",
            format!(
                "the body is not a JSON Bundle (line {}, column {})",
                e.line(),
                e.column()
            ),
            None,
        )
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Issue::error("structure", "the body is not UTF-8", None))?;
    let bundle: RawBundle<'_> = serde_json::from_str(text).map_err(not_json)?;
    if bundle.resource_type.as_deref() != Some("Bundle") {
        return Err(Issue::error(
            "structure",
            "expected a Bundle resource",
            Some("resourceType".into()),
        ));
    }
    let mut out = MappedBundle {
        bundle_type: bundle.bundle_type.as_deref().unwrap_or_default().to_owned(),
        ..MappedBundle::default()
    };
    let fallback = bundle
        .timestamp
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let mut idx = Indexed {
        patient_list: Vec::new(),
        patients: HashMap::new(),
        consents: Vec::new(),
        displays: HashMap::new(),
    };
    let (mut appointments, mut patients, mut consents) = (Vec::new(), Vec::new(), Vec::new());
    let mut r5 = false;
    for (i, e) in bundle.entry.iter().enumerate() {
        let full_url = e.full_url.as_deref().map(str::to_owned);
        let Some(raw) = e.resource.filter(|r| r.get().trim_start().starts_with('{')) else {
            if let Some(u) = full_url {
                out.missing.push(u);
            }
            continue;
        };
        let probe: Probe<'_> = serde_json::from_str(raw.get()).unwrap_or(Probe {
            resource_type: None,
            id: None,
        });
        let kind = probe.resource_type.as_deref().unwrap_or_default();
        let id = probe.id.as_deref();
        let reference = match id {
            Some(id) => format!("{kind}/{id}"),
            None => full_url.clone().unwrap_or_else(|| kind.to_owned()),
        };
        let keys: Vec<String> = [Some(reference.clone()), full_url]
            .into_iter()
            .flatten()
            .map(|k| normalize_reference(&k))
            .collect();
        let pending = Pending {
            i,
            raw,
            reference,
            // A Patient's id identifies the patient: it names no rejected entry (quarantine
            // reasons and logs carry no patient identifier); the raw entry keeps it.
            shown_id: id.filter(|_| kind != "Patient").map(str::to_owned),
            keys,
        };
        match kind {
            "Parameters" if i == 0 => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                out.notification = Some(notification_status(&v));
            }
            "SubscriptionStatus" if i == 0 => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                out.notification = Some(subscription_status(&v));
            }
            "Appointment" | "Consent" => {
                r5 = r5 || crate::r5::looks_r5(raw.get());
                if kind == "Appointment" {
                    appointments.push(pending);
                } else {
                    consents.push(pending);
                }
            }
            "Patient" => patients.push(pending),
            "Location" | "Practitioner" | "PractitionerRole" | "HealthcareService" => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                if let Some(name) = display_name(&v) {
                    for k in pending.keys {
                        idx.displays.insert(k, name.clone());
                    }
                }
                out.other += 1;
            }
            _ => out.other += 1,
        }
    }
    out.r5 = r5;
    let mut rejected: Vec<(usize, RejectedEntry)> = Vec::new();
    for p in patients {
        let view = if r5 {
            crate::r5::patient(p.raw.get())
        } else {
            parse::<Patient>(p.raw.get(), "Patient").map(|p| crate::r4b::patient(&p))
        };
        match view {
            Ok(v) => {
                idx.patient_list.push(v);
                for k in p.keys {
                    idx.patients.insert(k, idx.patient_list.len() - 1);
                }
            }
            Err(issue) => rejected.push(p.reject("Patient", issue)),
        }
    }
    for p in consents {
        let view = if r5 {
            crate::r5::consent(p.raw.get())
        } else {
            parse::<Consent>(p.raw.get(), "Consent").map(|c| crate::r4b::consent(&c))
        };
        match view {
            Ok(c) => {
                if let Some(patient) = c.patient.as_deref().map(normalize_reference) {
                    idx.consents.push((patient, c));
                }
            }
            Err(issue) => rejected.push(p.reject("Consent", issue)),
        }
    }
    for p in appointments {
        let view = if r5 {
            crate::r5::appointment(p.raw.get())
        } else {
            parse::<Appointment>(p.raw.get(), "Appointment")
                .and_then(|a| crate::r4b::appointment(&a))
        };
        let view = match view {
            Ok(v) => v,
            Err(issue) => {
                rejected.push(p.reject("Appointment", issue));
                continue;
            }
        };
        match map_appointment(&view, &idx, opts, fallback) {
            Ok(c) => out.events.push(c),
            Err(issue) => rejected.push((
                p.i,
                RejectedEntry {
                    location: format!(
                        "Bundle.entry[{}] Appointment/{}",
                        p.i,
                        view.id.as_deref().unwrap_or("(no id)")
                    ),
                    issue,
                    raw: p.raw.get().as_bytes().to_vec(),
                    filler_id: view.id.clone(),
                },
            )),
        }
    }
    // In entry order, whatever stage found the problem.
    rejected.sort_by_key(|(i, _)| *i);
    out.rejected = rejected.into_iter().map(|(_, r)| r).collect();
    Ok(out)
}

/// The display name of a Location / Practitioner / PractitionerRole / HealthcareService.
fn display_name(r: &Value) -> Option<String> {
    if let Some(n) = r["name"].as_str() {
        return Some(n.to_owned());
    }
    // Practitioner.name is a HumanName list.
    let n = r["name"].as_array()?.first()?;
    if let Some(t) = n["text"].as_str() {
        return Some(t.to_owned());
    }
    let mut parts: Vec<String> = Vec::new();
    for p in n["prefix"].as_array().into_iter().flatten() {
        parts.extend(p.as_str().map(str::to_owned));
    }
    for g in n["given"].as_array().into_iter().flatten().take(1) {
        parts.extend(g.as_str().map(str::to_owned));
    }
    parts.extend(n["family"].as_str().map(str::to_owned));
    (!parts.is_empty()).then(|| parts.join(" "))
}
