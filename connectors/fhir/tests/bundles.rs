//! Bundles through `map_bundle`: the official R4 examples, the official Consent examples, the
//! Subscriptions backport notifications, and our clinic notification with bad entries.

// PHI: tests read mapped values back to check them.
#![allow(clippy::disallowed_methods)]

use medrelay_connector_fhir::{ConsentSelector, FhirOptions, map_bundle, operation_outcome};
use medrelay_mapping::AppointmentStatus;
use medrelay_mapping::model::EhrConsent;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn opts(region: &str) -> FhirOptions {
    FhirOptions {
        system: "ehr".into(),
        site: "site".into(),
        time_zone: "America/Sao_Paulo".into(),
        default_region: region.into(),
        identifier_system: None,
        consent: ConsentSelector {
            codes: vec!["http://loinc.org|59284-0".into()],
        },
    }
}

fn now() -> jiff::Timestamp {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

#[test]
fn official_appointment_and_patient_examples() {
    let m = map_bundle(&fixture("searchset_r4_examples.json"), &opts("AU"), now()).unwrap();
    assert_eq!((m.bundle_type.as_str(), m.rejected.len()), ("searchset", 0));
    assert_eq!(m.events.len(), 1);
    let e = &m.events[0];
    let a = &e.appointment;
    assert_eq!(
        (a.key.source.as_str(), a.key.id.as_str()),
        ("ehr", "example")
    );
    assert_eq!(a.status, AppointmentStatus::Booked);
    assert_eq!(a.start.to_string(), "2013-12-10T09:00:00Z");
    assert_eq!(a.end.unwrap().to_string(), "2013-12-10T11:00:00Z");
    assert_eq!(a.location.as_deref(), Some("South Wing, second floor"));
    assert_eq!(a.practitioner.as_deref(), Some("Dr Adam Careful"));
    assert_eq!(
        a.service_type.as_ref().unwrap().expose(),
        "General Discussion"
    );
    // No reasonCode: the description is the reason (kept only to be filtered).
    assert!(a.reason.as_ref().unwrap().expose().contains("MRI"));
    let p = &a.patient;
    assert_eq!(
        p.id.as_ref().unwrap().expose(),
        "12345",
        "the MR identifier"
    );
    assert_eq!(p.given_name.as_ref().unwrap().expose(), "Peter");
    assert_eq!(p.family_name.as_ref().unwrap().expose(), "Chalmers");
    // The "mobile" use wins over rank; the "old" number is skipped.
    assert_eq!(p.best_phone().unwrap().expose(), "+61334105613");
    assert_eq!(p.phones.len(), 2);
    assert_eq!(p.protected, Some(false));
    assert_eq!(a.ehr_consent, None, "no Consent in the Bundle");
    // No meta.lastUpdated: the Bundle's timestamp orders it.
    assert_eq!(e.version.at.to_string(), "2013-11-01T00:00:00Z");
    assert_eq!(e.raw_ref, "Appointment/example");
}

#[test]
fn official_consent_examples_decide_by_newest_and_period() {
    let m = map_bundle(&fixture("consents_r4_examples.json"), &opts("NL"), now()).unwrap();
    assert_eq!(m.rejected.len(), 0, "{:?}", m.rejected);
    let by_id = |id: &str| {
        m.events
            .iter()
            .find(|e| e.appointment.key.id == id)
            .unwrap()
            .appointment
            .clone()
    };
    // The OPTIN consent (2016-05-11, newer than the OPTOUT of 2015-11-18) covers 1964-2016.
    assert_eq!(by_id("f001-2013").ehr_consent, Some(EhrConsent::OptIn));
    // Its period ended before 2026: a withdrawn opt-in is an opt-out.
    assert_eq!(by_id("f001-2026").ehr_consent, Some(EhrConsent::OptOut));
    // A site that does not select LOINC 59284-0 reads nothing from these Consents.
    let mut o = opts("NL");
    o.consent.codes = vec!["urn:other|whatsapp".into()];
    let m = map_bundle(&fixture("consents_r4_examples.json"), &o, now()).unwrap();
    assert!(m.events.iter().all(|e| e.appointment.ehr_consent.is_none()));
}

#[test]
fn clinic_notification_maps_good_entries_and_reports_bad_ones() {
    let mut o = opts("BR");
    o.identifier_system = Some("urn:clinica:agenda".into());
    let m = map_bundle(&fixture("notification_clinica.json"), &o, now()).unwrap();
    let n = m.notification.as_ref().unwrap();
    assert_eq!(n.kind, "event-notification");
    assert_eq!(
        n.focus,
        ["https://ehr.clinica.example/fhir/Appointment/ag-30002"]
    );
    let ids: Vec<&str> = m
        .events
        .iter()
        .map(|e| e.appointment.key.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["AG-30002", "AG-30011"],
        "the identifier, not the logical id"
    );
    let a = &m.events[0].appointment;
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptOut), "active deny");
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511912345678");
    assert_eq!(a.patient.preferred_language.as_deref(), Some("pt-BR"));
    assert_eq!(m.events[0].version.seq, 3, "meta.versionId");
    assert_eq!(m.events[0].version.at.to_string(), "2026-12-01T13:00:00Z");
    assert_eq!(m.events[1].appointment.ehr_consent, Some(EhrConsent::OptIn));

    assert_eq!(m.rejected.len(), 2, "{:?}", m.rejected);
    let bad = &m.rejected[0];
    assert_eq!(bad.location, "Bundle.entry[7] Appointment/bad-status");
    assert_eq!(bad.issue.code, "value");
    assert_eq!(bad.issue.expression.as_deref(), Some("Appointment.status"));
    assert!(
        !bad.issue.diagnostics.contains("bookd"),
        "no value quoted: {}",
        bad.issue
    );
    let no_start = &m.rejected[1];
    assert_eq!(no_start.issue.code, "required");
    assert_eq!(
        no_start.issue.expression.as_deref(),
        Some("Appointment.start")
    );
    assert!(
        String::from_utf8_lossy(&no_start.raw).contains("no-start"),
        "raw entry kept"
    );

    let oo = operation_outcome(&[bad.issue.clone(), no_start.issue.clone()]);
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "error");
    assert_eq!(oo["issue"][1]["expression"][0], "Appointment.start");
}

#[test]
fn handshake_heartbeat_and_id_only_notifications() {
    for (file, kind) in [
        ("handshake_bundle_example.json", "handshake"),
        ("heartbeat_bundle_example.json", "heartbeat"),
    ] {
        let m = map_bundle(&fixture(file), &opts("US"), now()).unwrap();
        assert_eq!(m.notification.unwrap().kind, kind);
        assert!(m.events.is_empty() && m.rejected.is_empty());
    }
    let m = map_bundle(
        &fixture("id_only_notification_bundle_example.json"),
        &opts("US"),
        now(),
    )
    .unwrap();
    assert_eq!(
        m.missing,
        ["https://fhirserver.org/fhir/Encounter/86009987-eabe-42bf-8c02-b112b18cb616"]
    );
}

#[test]
fn not_a_bundle_is_one_structural_issue() {
    let e = map_bundle(b"{\"resourceType\": \"Patient\"}", &opts("US"), now()).unwrap_err();
    assert_eq!(e.code, "structure");
    let e = map_bundle(b"Dear EHR, {", &opts("US"), now()).unwrap_err();
    assert_eq!(e.code, "structure");
    assert!(!e.diagnostics.contains("Dear"));
}
