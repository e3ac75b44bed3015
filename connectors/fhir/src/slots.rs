//! FHIR `Slot`s (with their `Schedule`s) into open slots (issue 14): the free times a patient who
//! asks for another time may be offered. A Slot is free when its `status` is `free`; who and
//! where come from its Schedule's actors (a Practitioner, a Location), the service type from the
//! Slot or else the Schedule. R4 `CodeableConcept` and R5 `CodeableReference` service types both
//! read. A Slot that cannot be used is an issue with its id and what was wrong, never a value.

use std::collections::HashMap;

use medrelay_mapping::Phi;
use medrelay_mapping::slots::OpenSlot;
use serde_json::Value;

use crate::map::normalize_reference;
use crate::time::parse_instant;

/// A Slot that was not turned into an open slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotIssue {
    /// `Slot/<id>`.
    pub slot: String,
    pub reason: &'static str,
}

/// The text of a service type: R4 `{text, coding}` or R5 `{concept: {text, coding}}`.
fn service_text(v: &Value) -> Option<String> {
    let concept = if v["concept"].is_object() {
        &v["concept"]
    } else {
        v
    };
    concept["text"]
        .as_str()
        .or_else(|| concept["coding"][0]["display"].as_str())
        .or_else(|| concept["coding"][0]["code"].as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The open slots of `source` (at `site`) among search `entries` (Slots and Schedules).
pub fn map_slots(entries: &[Value], source: &str, site: &str) -> (Vec<OpenSlot>, Vec<SlotIssue>) {
    let schedules: HashMap<String, &Value> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Schedule")
        .filter_map(|r| r["id"].as_str().map(|id| (format!("Schedule/{id}"), r)))
        .collect();
    let mut slots = Vec::new();
    let mut issues = Vec::new();
    for r in entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Slot")
    {
        let Some(id) = r["id"].as_str().filter(|id| !id.is_empty()) else {
            issues.push(SlotIssue {
                slot: "Slot/?".into(),
                reason: "a Slot without an id",
            });
            continue;
        };
        let issue = |reason| SlotIssue {
            slot: format!("Slot/{id}"),
            reason,
        };
        if r["status"] != "free" {
            issues.push(issue("not free"));
            continue;
        }
        let (Some(start), Some(end)) = (
            r["start"].as_str().and_then(parse_instant),
            r["end"].as_str().and_then(parse_instant),
        ) else {
            issues.push(issue("start or end is not a FHIR instant"));
            continue;
        };
        if end <= start {
            issues.push(issue("ends before it starts"));
            continue;
        }
        let schedule = r["schedule"]["reference"]
            .as_str()
            .map(normalize_reference)
            .and_then(|s| schedules.get(&s).copied());
        let Some(schedule) = schedule else {
            issues.push(issue("its Schedule is not in the search result"));
            continue;
        };
        if schedule["active"] == false {
            issues.push(issue("its Schedule is not active"));
            continue;
        }
        let actor = |kind: &str| {
            schedule["actor"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| {
                    a["reference"]
                        .as_str()
                        .is_some_and(|r| normalize_reference(r).starts_with(kind))
                })
                .and_then(|a| a["display"].as_str())
                .map(str::to_owned)
        };
        let service = r["serviceType"]
            .get(0)
            .and_then(service_text)
            .or_else(|| schedule["serviceType"].get(0).and_then(service_text));
        slots.push(OpenSlot {
            source: source.to_owned(),
            slot_id: id.to_owned(),
            site: site.to_owned(),
            practitioner: actor("Practitioner/"),
            service_type: service.map(Phi::new),
            location: actor("Location/"),
            start,
            end,
        });
    }
    (slots, issues)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    // PHI: the test reads the service types back.
    #[allow(clippy::disallowed_methods)]
    fn free_slots_take_practitioner_location_and_service_from_their_schedule() {
        let entries = vec![
            json!({"resource": {"resourceType": "Schedule", "id": "sch-1", "active": true,
                "serviceType": [{"coding": [{"system": "http://snomed.info/sct", "code": "11429006", "display": "Consultation"}]}],
                "actor": [{"reference": "Practitioner/dr-1", "display": "Dr. Ana Lima"},
                          {"reference": "Location/loc-1", "display": "Sala 2"}]}}),
            json!({"resource": {"resourceType": "Slot", "id": "s-1", "status": "free",
                "schedule": {"reference": "Schedule/sch-1"},
                "start": "2026-12-09T09:00:00-03:00", "end": "2026-12-09T09:20:00-03:00"}}),
            // R5: serviceType as a CodeableReference, and a full-URL schedule reference.
            json!({"resource": {"resourceType": "Slot", "id": "s-2", "status": "free",
                "serviceType": [{"concept": {"text": "Follow-up"}}],
                "schedule": {"reference": "https://ehr.example/fhir/Schedule/sch-1"},
                "start": "2026-12-09T10:00:00-03:00", "end": "2026-12-09T10:20:00-03:00"}}),
            json!({"resource": {"resourceType": "Slot", "id": "s-3", "status": "busy",
                "schedule": {"reference": "Schedule/sch-1"},
                "start": "2026-12-09T11:00:00-03:00", "end": "2026-12-09T11:20:00-03:00"}}),
            json!({"resource": {"resourceType": "Slot", "id": "s-4", "status": "free",
                "schedule": {"reference": "Schedule/unknown"},
                "start": "2026-12-09T11:00:00-03:00", "end": "2026-12-09T11:20:00-03:00"}}),
            json!({"resource": {"resourceType": "Slot", "id": "s-5", "status": "free",
                "schedule": {"reference": "Schedule/sch-1"},
                "start": "2026-12-09T11:00", "end": "2026-12-09T11:20:00-03:00"}}),
        ];
        let (slots, issues) = map_slots(&entries, "clinica", "saopaulo");
        assert_eq!(slots.len(), 2, "{issues:?}");
        let s = &slots[0];
        assert_eq!(
            (s.slot_id.as_str(), s.site.as_str(), s.source.as_str()),
            ("s-1", "saopaulo", "clinica")
        );
        assert_eq!(s.start, "2026-12-09T12:00:00Z".parse().unwrap());
        assert_eq!(s.practitioner.as_deref(), Some("Dr. Ana Lima"));
        assert_eq!(s.location.as_deref(), Some("Sala 2"));
        let service = |s: &OpenSlot| s.service_type.as_ref().map(|t| t.expose().clone());
        assert_eq!(
            service(s).as_deref(),
            Some("Consultation"),
            "from the Schedule"
        );
        assert_eq!(
            service(&slots[1]).as_deref(),
            Some("Follow-up"),
            "the Slot's own, R5 form"
        );
        let reasons: Vec<(&str, &str)> =
            issues.iter().map(|i| (i.slot.as_str(), i.reason)).collect();
        assert_eq!(
            reasons,
            [
                ("Slot/s-3", "not free"),
                ("Slot/s-4", "its Schedule is not in the search result"),
                ("Slot/s-5", "start or end is not a FHIR instant"),
            ]
        );
    }
}
