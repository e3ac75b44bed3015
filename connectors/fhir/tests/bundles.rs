//! Bundles through `map_bundle`: the official R4 examples, the official Consent examples, the
//! Subscriptions backport notifications, and our clinic notification with bad entries.

// PHI: tests read mapped values back to check them.
#![allow(clippy::disallowed_methods)]

use medrelay_connector_fhir::{
    ConsentSelector, FhirOptions, MappedBundle, map_bundle, operation_outcome,
};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::{AppointmentEvent, AppointmentStatus, Change};

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

/// The full appointments of a mapped Bundle (status changes left out).
fn full(m: &MappedBundle) -> Vec<&AppointmentEvent> {
    m.events.iter().filter_map(|c| c.as_event()).collect()
}

fn now() -> jiff::Timestamp {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

#[test]
fn official_appointment_and_patient_examples() {
    let m = map_bundle(&fixture("searchset_r4_examples.json"), &opts("AU"), now()).unwrap();
    assert_eq!((m.bundle_type.as_str(), m.rejected.len()), ("searchset", 0));
    assert_eq!(m.events.len(), 1);
    let e = full(&m)[0];
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
        full(&m)
            .into_iter()
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
    assert!(full(&m).iter().all(|e| e.appointment.ehr_consent.is_none()));
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
    let events = full(&m);
    assert_eq!(events.len(), m.events.len());
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e.appointment.key.id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["AG-30002", "AG-30011"],
        "the identifier, not the logical id"
    );
    let a = &events[0].appointment;
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptOut), "active deny");
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511912345678");
    assert_eq!(a.patient.preferred_language.as_deref(), Some("pt-BR"));
    assert_eq!(events[0].version.seq, 3, "meta.versionId");
    assert_eq!(events[0].version.at.to_string(), "2026-12-01T13:00:00Z");
    assert_eq!(events[1].appointment.ehr_consent, Some(EhrConsent::OptIn));

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

fn clinic_opts() -> FhirOptions {
    let mut o = opts("BR");
    o.identifier_system = Some("urn:clinica:agenda".into());
    o
}

/// `(id, status, version)` of every change, and whether it is a status change alone.
fn changes(m: &MappedBundle) -> Vec<(String, AppointmentStatus, String, bool)> {
    m.events
        .iter()
        .map(|c| {
            (
                c.key().id.clone(),
                c.status(),
                format!("{}#{}", c.version().at, c.version().seq),
                matches!(c, Change::Status(_)),
            )
        })
        .collect()
}

#[test]
fn cancelled_noshow_and_entered_in_error_without_start_are_status_changes() {
    let m = map_bundle(
        &fixture("status_without_start_r4b.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    assert!(!m.r5);
    let s = |id: &str, st, v: &str, only| (id.to_string(), st, v.to_string(), only);
    assert_eq!(
        changes(&m),
        [
            s(
                "AG-40001",
                AppointmentStatus::Booked,
                "2026-12-01T13:00:00Z#1",
                false
            ),
            s(
                "AG-40001",
                AppointmentStatus::Cancelled,
                "2026-12-01T14:00:00Z#2",
                true
            ),
            s(
                "AG-40002",
                AppointmentStatus::Noshow,
                "2026-12-01T14:05:00Z#5",
                true
            ),
            s(
                "AG-40003",
                AppointmentStatus::EnteredInError,
                "2026-12-01T14:10:00Z#2",
                true
            ),
        ],
        "in entry order: the booking, then status changes that need no start"
    );
    let Change::Status(cancel) = &m.events[1] else {
        unreachable!()
    };
    assert_eq!(
        (cancel.key.source.as_str(), cancel.raw_ref.as_str()),
        ("ehr", "Appointment/ag-40001")
    );
    assert_eq!(cancel.placer_id, None);
    // Only the booked one without a start is rejected, and no other entry was told it is booked.
    assert_eq!(m.rejected.len(), 1, "{:?}", m.rejected);
}

#[test]
fn a_booked_appointment_without_start_is_still_rejected_with_a_precise_outcome() {
    let m = map_bundle(
        &fixture("status_without_start_r4b.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    let [bad] = m.rejected.as_slice() else {
        panic!("{:?}", m.rejected)
    };
    assert_eq!(bad.location, "Bundle.entry[5] Appointment/ag-40004");
    assert_eq!(bad.filler_id.as_deref(), Some("ag-40004"));
    let oo = operation_outcome(std::slice::from_ref(&bad.issue));
    assert_eq!(oo["issue"][0]["severity"], "error");
    assert_eq!(oo["issue"][0]["code"], "required");
    assert_eq!(oo["issue"][0]["expression"][0], "Appointment.start");
    assert_eq!(
        oo["issue"][0]["diagnostics"],
        "a booked appointment needs a start to be reminded of"
    );
    assert!(String::from_utf8_lossy(&bad.raw).contains("AG-40004"));
}

#[test]
fn r5_appointment_patient_and_consent_map_like_their_r4b_twins() {
    let r4b = map_bundle(&fixture("notification_clinica.json"), &clinic_opts(), now()).unwrap();
    let r5 = map_bundle(
        &fixture("notification_clinica_r5.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    assert!(!r4b.r5 && r5.r5, "R5 read as R5, R4 as R4");
    assert_eq!(r5.bundle_type, "subscription-notification");
    // The R5 notification's SubscriptionStatus says what the backport Parameters say.
    assert_eq!(r5.notification, r4b.notification);
    assert_eq!(r5.events.len(), 2);
    // The same canonical appointments: ids, status, times, location, practitioner, service type
    // (from a CodeableReference concept, and from a referenced HealthcareService), the patient
    // (from `subject` alone for AG-30011), phones, language, protection, and the EHR consent
    // read from R5 Consents (`decision`, `period`, `subject`, no `scope`).
    assert_eq!(r5.events, r4b.events);
    let a = &full(&r5)[1].appointment;
    assert_eq!(
        a.service_type.as_ref().unwrap().expose(),
        "General Practice"
    );
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511911112222");
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptIn));
    assert_eq!(
        full(&r5)[0].appointment.ehr_consent,
        Some(EhrConsent::OptOut)
    );
    // The same rejections, with the same OperationOutcome issues.
    let issues = |m: &MappedBundle| {
        m.rejected
            .iter()
            .map(|r| (r.location.clone(), r.issue.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(issues(&r5), issues(&r4b));
    assert_eq!(
        r5.rejected[0].issue.expression.as_deref(),
        Some("Appointment.status")
    );
    assert_eq!(
        r5.rejected[1].issue.expression.as_deref(),
        Some("Appointment.start")
    );
}

#[test]
fn r5_status_changes_without_start_map_like_their_r4b_twins() {
    let r4b = map_bundle(
        &fixture("status_without_start_r4b.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    let r5 = map_bundle(
        &fixture("status_without_start_r5.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    assert!(r5.r5);
    assert_eq!(r5.events, r4b.events);
    assert_eq!(r5.rejected.len(), 1);
    assert_eq!(r5.rejected[0].issue, r4b.rejected[0].issue);
    assert_eq!(r5.rejected[0].location, r4b.rejected[0].location);
}

#[test]
fn id_only_appointment_notifications_name_what_to_read() {
    let m = map_bundle(
        &fixture("id_only_appointment_notification.json"),
        &clinic_opts(),
        now(),
    )
    .unwrap();
    assert!(m.events.is_empty() && m.rejected.is_empty());
    assert_eq!(
        m.id_only_references(),
        ["https://ehr.clinica.example/fhir/Appointment/ag-30011"],
        "focus and the bare entry: once"
    );
    // About an Encounter: nothing for medrelay to read.
    let m = map_bundle(
        &fixture("id_only_notification_bundle_example.json"),
        &opts("US"),
        now(),
    )
    .unwrap();
    assert!(m.id_only_references().is_empty());
    // A full notification is not id-only.
    let m = map_bundle(&fixture("notification_clinica.json"), &clinic_opts(), now()).unwrap();
    assert!(m.id_only_references().is_empty());
    let issue = medrelay_connector_fhir::id_only_without_server();
    assert_eq!(issue.code, "not-supported");
}

#[test]
fn fhir_offset_beyond_14_hours_is_rejected_not_read_as_another_instant() {
    let m = map_bundle(&fixture("offset_beyond_14h.json"), &clinic_opts(), now()).unwrap();
    let [bad] = m.rejected.as_slice() else {
        panic!("{:?}", m.rejected)
    };
    assert_eq!(bad.location, "Bundle.entry[0] Appointment/ag-50001");
    let oo = operation_outcome(std::slice::from_ref(&bad.issue));
    assert_eq!(oo["issue"][0]["expression"][0], "Appointment.start");
    assert!(!oo.to_string().contains("+18:00"), "{oo}");
    // The largest allowed offsets are real instants.
    let starts: Vec<(String, String)> = full(&m)
        .iter()
        .map(|e| {
            (
                e.appointment.key.id.clone(),
                e.appointment.start.to_string(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        [
            ("AG-50002".to_string(), "2026-12-03T20:00:00Z".to_string()),
            ("AG-50003".to_string(), "2026-12-04T13:00:00Z".to_string())
        ]
    );
}

/// The Subscription's event counter, from the backport IG's examples (R4 `Parameters`) and the
/// clinic's R5 notification (`SubscriptionStatus`): what gap detection is measured against.
#[test]
fn notification_counters_are_read_from_backport_and_r5_statuses() {
    let counters = |name: &str| {
        let m = map_bundle(&fixture(name), &opts("BR"), now()).unwrap();
        let n = m.notification.expect("a notification status");
        (n.kind, n.events_since_start, n.event_numbers)
    };
    assert_eq!(
        counters("handshake_bundle_example.json"),
        ("handshake".into(), Some(0), vec![])
    );
    assert_eq!(
        counters("heartbeat_bundle_example.json"),
        ("heartbeat".into(), Some(2), vec![])
    );
    assert_eq!(
        counters("id_only_notification_bundle_example.json"),
        ("event-notification".into(), Some(1), vec![1])
    );
    assert_eq!(
        counters("notification_clinica_r5.json"),
        ("event-notification".into(), Some(12), vec![12])
    );
}
