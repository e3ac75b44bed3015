//! A FHIR Bundle (search result, collection, Subscription notification) -> canonical events.
//!
//! The Bundle is read as JSON and each entry parsed on its own into fhir-sdk's R4B models, so one
//! bad entry is one rejection (with an [`Issue`]) and the rest keep flowing. Where fields come from:
//! - id: the `identifier` with the configured system, else the logical id; version
//!   `meta.lastUpdated` (else the Bundle's timestamp) and `meta.versionId`;
//! - status, start, end (or `minutesDuration`); location, practitioner and patient from the
//!   participants (`Location/`, `Practitioner/` / `PractitionerRole/`, `Patient/` references,
//!   resolved in the Bundle when included); service type from `serviceType`, else
//!   `appointmentType`; reason from `reasonCode` / `description` (kept only to be filtered);
//! - patient: MR identifier, official/usual name, phone/sms telecom, preferred language, and
//!   `meta.security` R/V (restricted, very restricted) as the protection flag;
//! - EHR consent from the patient's `Consent` resources in the Bundle: see [`crate::consent`].

use std::collections::HashMap;

use fhir_sdk::r4b::resources::{Appointment, Consent, Patient};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::phone::normalize_e164;
use medrelay_mapping::{
    Appointment as Canonical, AppointmentEvent, AppointmentKey, AppointmentStatus, ContactPhone,
    Patient as CanonicalPatient, Phi, PhoneUse, SourceVersion,
};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;

use crate::consent::{ConsentSelector, ehr_consent};
use crate::outcome::Issue;
use crate::time::instant;

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
}

/// The result of mapping one Bundle.
#[derive(Clone, Debug, Default)]
pub struct MappedBundle {
    pub bundle_type: String,
    pub notification: Option<NotificationStatus>,
    pub events: Vec<AppointmentEvent>,
    pub rejected: Vec<RejectedEntry>,
    /// Entries without a resource (id-only notifications): their full URLs, to be read.
    pub missing: Vec<String>,
    /// Entries of other types (Location, Encounter...), counted, not used.
    pub other: usize,
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
fn parse<T: serde::de::DeserializeOwned>(json: &str, kind: &str) -> Result<T, Issue> {
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

fn text_of(cc: Option<&fhir_sdk::r4b::types::CodeableConcept>) -> Option<String> {
    let cc = cc?;
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

// PHI: patient fields are read into Phi values; nothing here is logged.
#[allow(clippy::disallowed_methods)]
fn map_patient(p: &Patient, opts: &FhirOptions) -> CanonicalPatient {
    use fhir_sdk::r4b::codes::{ContactPointSystem, ContactPointUse, NameUse};
    let mut out = CanonicalPatient::default();
    let mrn = p
        .identifier
        .iter()
        .flatten()
        .find(|i| {
            i.r#type.as_ref().is_some_and(|t| {
                t.coding
                    .iter()
                    .flatten()
                    .any(|c| c.code.as_deref() == Some("MR"))
            })
        })
        .or_else(|| p.identifier.iter().flatten().next())
        .and_then(|i| i.value.clone());
    out.id = mrn.or_else(|| p.id.clone()).map(Phi::new);
    let names: Vec<_> = p.name.iter().flatten().collect();
    let name = names
        .iter()
        .find(|n| matches!(n.r#use, Some(NameUse::Official)))
        .or_else(|| {
            names
                .iter()
                .find(|n| matches!(n.r#use, Some(NameUse::Usual) | None))
        })
        .or_else(|| names.first());
    if let Some(n) = name {
        out.family_name = n.family.clone().map(Phi::new);
        out.given_name = n.given.iter().flatten().next().cloned().map(Phi::new);
    }
    for (i, t) in p.telecom.iter().flatten().enumerate() {
        if !matches!(
            t.system,
            Some(ContactPointSystem::Phone | ContactPointSystem::Sms)
        ) {
            continue;
        }
        let use_ = match t.r#use {
            Some(ContactPointUse::Mobile) => PhoneUse::Mobile,
            Some(ContactPointUse::Home) => PhoneUse::Home,
            Some(ContactPointUse::Work) => PhoneUse::Work,
            // An old number is not a number to message.
            Some(ContactPointUse::Old) => continue,
            _ if matches!(t.system, Some(ContactPointSystem::Sms)) => PhoneUse::Mobile,
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
            rank: t.rank.map_or(i as u32 + 100, |r| r.get()),
        });
    }
    let langs: Vec<_> = p.communication.iter().flatten().collect();
    out.preferred_language = langs
        .iter()
        .find(|c| c.preferred == Some(true))
        .or_else(|| langs.first())
        .and_then(|c| {
            c.language
                .coding
                .iter()
                .flatten()
                .find_map(|c| c.code.clone())
        });
    // v3-Confidentiality R (restricted) or V (very restricted): never message.
    let restricted = p.meta.as_ref().is_some_and(|m| {
        m.security.iter().flatten().any(|c| {
            c.system.as_deref() == Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality")
                && matches!(c.code.as_deref(), Some("R" | "V"))
        })
    });
    out.protected = Some(restricted);
    out
}

struct Indexed {
    /// Patients once each; `patients` maps every key (reference, full URL) to one of them.
    patient_list: Vec<Patient>,
    patients: HashMap<String, usize>,
    consents: Vec<(String, Consent)>,
    displays: HashMap<String, String>,
}

fn actor_display(a: &Appointment, idx: &Indexed, kinds: &[&str]) -> Option<String> {
    a.participant.iter().flatten().find_map(|p| {
        let actor = p.actor.as_ref()?;
        let r = actor.reference.as_deref().map(normalize_reference);
        let kind_ok = r
            .as_deref()
            .is_some_and(|r| kinds.iter().any(|k| r.starts_with(&format!("{k}/"))))
            || actor.r#type.as_deref().is_some_and(|t| kinds.contains(&t));
        if !kind_ok {
            return None;
        }
        actor
            .display
            .clone()
            .or_else(|| r.and_then(|r| idx.displays.get(&r).cloned()))
    })
}

// PHI: appointment fields are read into the canonical model (Phi where they are patient data).
#[allow(clippy::disallowed_methods)]
fn map_appointment(
    a: &Appointment,
    idx: &Indexed,
    opts: &FhirOptions,
    fallback_version: Timestamp,
) -> Result<AppointmentEvent, Issue> {
    let id = match &opts.identifier_system {
        Some(sys) => a
            .identifier
            .iter()
            .flatten()
            .find(|i| i.system.as_deref() == Some(sys.as_str()))
            .and_then(|i| i.value.clone())
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
    let status = AppointmentStatus::from_code(a.status.as_ref()).ok_or_else(|| {
        Issue::error(
            "not-supported",
            "status is not an AppointmentStatus medrelay knows",
            Some("Appointment.status".into()),
        )
    })?;
    let start = a.start.as_ref().map(instant).ok_or_else(|| {
        Issue::error(
            "required",
            "a booked appointment needs a start to be reminded of",
            Some("Appointment.start".into()),
        )
    })?;
    let end = a.end.as_ref().map(instant).or_else(|| {
        a.minutes_duration
            .map(|m| start + SignedDuration::from_mins(i64::from(m.get())))
    });
    if end.is_some_and(|e| e < start) {
        return Err(Issue::error(
            "invariant",
            "end is before start (app-2)",
            Some("Appointment.end".into()),
        ));
    }
    let patient_ref = a.participant.iter().flatten().find_map(|p| {
        p.actor
            .as_ref()?
            .reference
            .as_deref()
            .map(normalize_reference)
            .filter(|r| r.starts_with("Patient/") || r.starts_with("urn:uuid:"))
    });
    let (patient, ehr) = match patient_ref
        .as_ref()
        .and_then(|r| idx.patients.get(r).map(|&i| (r, &idx.patient_list[i])))
    {
        Some((r, p)) => {
            let consents: Vec<&Consent> = idx
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
        .service_type
        .iter()
        .flatten()
        .find_map(|c| text_of(Some(c)))
        .or_else(|| text_of(a.appointment_type.as_ref()));
    let reason = a
        .reason_code
        .iter()
        .flatten()
        .find_map(|c| text_of(Some(c)))
        .or_else(|| a.description.clone());
    let version_at = a
        .meta
        .as_ref()
        .and_then(|m| m.last_updated.as_ref())
        .map(instant)
        .unwrap_or(fallback_version);
    let seq = a
        .meta
        .as_ref()
        .and_then(|m| m.version_id.as_deref())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    Ok(AppointmentEvent {
        appointment: Canonical {
            key: AppointmentKey {
                source: opts.system.clone(),
                id,
            },
            placer_id: None,
            status,
            start,
            end,
            site: opts.site.clone(),
            time_zone: opts.time_zone.clone(),
            location: actor_display(a, idx, &["Location"]),
            practitioner: actor_display(a, idx, &["Practitioner", "PractitionerRole"]),
            service_type: service_type.map(Phi::new),
            reason: reason.map(Phi::new),
            patient,
            ehr_consent: ehr,
        },
        version: SourceVersion {
            at: version_at,
            seq,
        },
        raw_ref: format!("Appointment/{}", a.id.as_deref().unwrap_or("(no id)")),
    })
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
            Some("notification-event") => {
                for part in p["part"].as_array().into_iter().flatten() {
                    if part["name"] == "focus"
                        && let Some(r) = part["valueReference"]["reference"].as_str()
                    {
                        s.focus.push(r.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    s
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
    let mut appointments: Vec<(usize, Appointment)> = Vec::new();
    for (i, e) in bundle.entry.iter().enumerate() {
        let at = format!("Bundle.entry[{i}]");
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
        let keys: Vec<String> = [Some(reference.clone()), full_url.clone()]
            .into_iter()
            .flatten()
            .map(|k| normalize_reference(&k))
            .collect();
        // A Patient's id identifies the patient: it names no rejected entry (quarantine reasons
        // and logs carry no patient identifier); the raw entry keeps it.
        let shown_id = id.filter(|_| kind != "Patient");
        let reject = |issue: Issue| RejectedEntry {
            location: match shown_id {
                Some(_) => format!("{at} {reference}"),
                None => format!("{at} {kind}"),
            },
            issue,
            raw: raw.get().as_bytes().to_vec(),
            filler_id: if kind == "Appointment" {
                shown_id.map(str::to_owned)
            } else {
                None
            },
        };
        match kind {
            "Parameters" if i == 0 => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                out.notification = Some(notification_status(&v));
            }
            "Appointment" => match parse::<Appointment>(raw.get(), kind) {
                Ok(a) => appointments.push((i, a)),
                Err(issue) => out.rejected.push(reject(issue)),
            },
            "Patient" => match parse::<Patient>(raw.get(), kind) {
                Ok(p) => {
                    idx.patient_list.push(p);
                    for k in keys {
                        idx.patients.insert(k, idx.patient_list.len() - 1);
                    }
                }
                Err(issue) => out.rejected.push(reject(issue)),
            },
            "Consent" => match parse::<Consent>(raw.get(), kind) {
                Ok(c) => {
                    if let Some(p) = c.patient.as_ref().and_then(|p| p.reference.as_deref()) {
                        idx.consents.push((normalize_reference(p), c));
                    }
                }
                Err(issue) => out.rejected.push(reject(issue)),
            },
            "Location" | "Practitioner" | "PractitionerRole" | "HealthcareService" => {
                let v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                if let Some(name) = display_name(&v) {
                    for k in keys {
                        idx.displays.insert(k, name.clone());
                    }
                }
                out.other += 1;
            }
            _ => out.other += 1,
        }
    }
    for (i, a) in appointments {
        match map_appointment(&a, &idx, opts, fallback) {
            Ok(e) => out.events.push(e),
            Err(issue) => out.rejected.push(RejectedEntry {
                location: format!(
                    "Bundle.entry[{i}] Appointment/{}",
                    a.id.as_deref().unwrap_or("(no id)")
                ),
                issue,
                raw: bundle.entry[i]
                    .resource
                    .map(|r| r.get().as_bytes().to_vec())
                    .unwrap_or_default(),
                filler_id: a.id.clone(),
            }),
        }
    }
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
