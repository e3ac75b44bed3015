//! Real third-party SIU messages (and our own PD1 / charset / broken fixtures, see
//! fixtures/SOURCES.md) through `process`, checked field by field, and their ACKs.

// PHI: tests read mapped values back to check them.
#![allow(clippy::disallowed_methods)]

use medrelay_connector_hl7v2::file::split;
use medrelay_connector_hl7v2::{
    AckCode, Arrival, ErrorCode, Hl7Options, Ordering, Outcome, Processed, process,
};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::{AppointmentEvent, AppointmentStatus, PhoneUse};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn opts() -> Hl7Options {
    Hl7Options::new("ghh", "saopaulo", "America/Sao_Paulo", "BR")
}

fn event(p: &Processed) -> &AppointmentEvent {
    match &p.outcome {
        Outcome::Event(e) => e.as_event().expect("a full appointment event"),
        other => panic!("expected an event, got {other:?}"),
    }
}

/// The n-th message of a stream that arrived at a fixed moment.
fn at(n: i64) -> Arrival {
    Arrival::new("2026-12-01T11:00:00Z".parse().unwrap(), n)
}

fn ack_of(p: &Processed) -> String {
    p.ack(true, &opts(), "2026-12-01T12:00:00Z".parse().unwrap())
}

#[test]
fn microsoft_s12_maps_every_field_we_use() {
    let mut by_msh7 = opts();
    by_msh7.ordering = Ordering::MessageTime;
    let p = process(
        &fixture("SIU-S12-02.hl7"),
        &by_msh7,
        at(1),
        "SIU-S12-02.hl7 message 1",
    );
    let e = event(&p);
    let a = &e.appointment;
    assert_eq!((a.key.source.as_str(), a.key.id.as_str()), ("ghh", "36996"));
    assert_eq!(a.placer_id.as_deref(), Some("12345"));
    assert_eq!(a.status, AppointmentStatus::Booked);
    // TQ1-7/8 win over the (deprecated) SCH-11; +0215 is applied exactly.
    assert_eq!(a.start.to_string(), "2021-08-18T09:15:00Z");
    assert_eq!(a.end.unwrap().to_string(), "2021-08-18T10:15:00Z");
    assert_eq!(e.version.at.to_string(), "2021-08-10T09:15:00Z");
    assert_eq!(a.location.as_deref(), Some("GHH Hospital"));
    assert_eq!(a.practitioner.as_deref(), Some("Tim PB"));
    assert_eq!(
        a.service_type.as_ref().unwrap().expose(),
        "CBC Panel-Blood by Automated Count"
    );
    assert_eq!(a.reason.as_ref().unwrap().expose(), "CHECKUP");
    let patient = &a.patient;
    assert_eq!(patient.id.as_ref().unwrap().expose(), "PATID1234");
    // The legal-name repetition has no given name: the first one that does is used.
    assert_eq!(patient.given_name.as_ref().unwrap().expose(), "ADAM");
    assert_eq!(patient.family_name.as_ref().unwrap().expose(), "EVERYMAN");
    assert_eq!(patient.preferred_language.as_deref(), Some("ar"));
    // The sample's numbers are not real numbers: kept as unusable, with a reason and no value.
    assert!(patient.best_phone().is_none());
    assert!(!patient.phones.is_empty());
    assert_eq!(patient.protected, None, "no PD1");
    assert_eq!(a.ehr_consent, None);
    let ack = ack_of(&p);
    assert!(ack.contains("\rMSA|AA|MSG00012\r"), "{ack}");
    assert!(ack.contains("|ACK^S12^ACK|"), "{ack}");
}

#[test]
fn microsoft_triggers_set_the_status() {
    for (file, status, start) in [
        (
            "SIU-S13-02.hl7",
            AppointmentStatus::Booked,
            "2021-08-20T09:15:00Z",
        ),
        (
            "SIU-S14-02.hl7",
            AppointmentStatus::Booked,
            "2021-08-18T09:15:00Z",
        ),
        (
            "SIU-S15-02.hl7",
            AppointmentStatus::Cancelled,
            "2021-08-18T09:15:00Z",
        ),
        (
            "SIU-S16-02.hl7",
            AppointmentStatus::Cancelled,
            "2021-08-18T09:15:00Z",
        ),
        (
            "SIU-S17-02.hl7",
            AppointmentStatus::EnteredInError,
            "2021-08-18T09:15:00Z",
        ),
        (
            "SIU-S26-02.hl7",
            AppointmentStatus::Noshow,
            "2021-08-18T09:15:00Z",
        ),
    ] {
        let p = process(&fixture(file), &opts(), at(1), file);
        let a = &event(&p).appointment;
        assert_eq!(
            (a.status, a.start.to_string().as_str()),
            (status, start),
            "{file}"
        );
        assert_eq!(a.key.id, "36996", "{file}");
    }
}

#[test]
fn hapi_v23_with_sch11_and_a_duration() {
    let p = process(
        &fixture("SIU_S14_nested_RGS_orsos_v23.hl7"),
        &opts(),
        at(1),
        "hapi",
    );
    let a = &event(&p).appointment;
    assert_eq!(
        (a.key.id.as_str(), a.placer_id.as_deref()),
        ("569576", Some("ADS"))
    );
    // SCH-11.4 without offset: civil time in the site's zone (UTC-3 in April 2010).
    assert_eq!(a.start.to_string(), "2010-04-07T19:10:00Z");
    // SCH-9 = 379 minutes.
    assert_eq!(a.end.unwrap().to_string(), "2010-04-08T01:29:00Z");
    assert_eq!(a.location.as_deref(), Some("OR 4"));
    assert_eq!(a.practitioner.as_deref(), Some("OSMAN ALRADI"));
    assert_eq!(
        a.service_type.as_ref().unwrap().expose(),
        "BYPASS AXILLOFEMORAL"
    );
    // MSH-10 has a leading space: MSA-2 echoes it exactly; a v2.3 ACK has no MSH-9.3.
    let ack = ack_of(&p);
    assert!(ack.contains("\rMSA|AA| 38762\r"), "{ack}");
    assert!(ack.contains("|ACK^S14|"), "{ack}");
}

#[test]
fn pd1_publicity_is_an_opt_out_and_protection_is_protected() {
    let messages = split(&fixture("privacy_pd1.hl7"));
    assert_eq!(messages.len(), 2);
    let first = process(&messages[0].bytes, &opts(), at(1), "privacy 1");
    let a = &event(&first).appointment;
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptOut), "PD1-11 = N");
    assert_eq!(a.patient.protected, Some(false), "PD1-12 = N");
    assert_eq!(
        a.patient.given_name.as_ref().unwrap().expose(),
        "Maria Jos\u{e9}"
    );
    assert_eq!(a.patient.preferred_language.as_deref(), Some("pt"));
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511987654321");
    assert_eq!(a.patient.phones[0].use_, PhoneUse::Mobile);
    assert_eq!(a.location.as_deref(), Some("Cl\u{ed}nica Paulista"));
    assert_eq!(a.practitioner.as_deref(), Some("Dra. Ana Almeida"));
    assert_eq!(a.start.to_string(), "2026-12-03T13:00:00Z");

    let second = process(&messages[1].bytes, &opts(), at(2), "privacy 2");
    let a = &event(&second).appointment;
    assert_eq!(a.patient.protected, Some(true), "PD1-12 = Y");
    assert_eq!(a.ehr_consent, None);

    // A site that records messaging opt-ins in PD1-11.
    let mut o = opts();
    o.publicity_opt_out = vec![];
    o.publicity_opt_in = vec!["N".into()];
    let p = process(&messages[0].bytes, &o, at(1), "privacy 1");
    assert_eq!(event(&p).appointment.ehr_consent, Some(EhrConsent::OptIn));
}

#[test]
fn latin1_declared_in_msh18_keeps_accents_and_escapes() {
    let p = process(&fixture("latin1_msh18.hl7"), &opts(), at(1), "latin1");
    let a = &event(&p).appointment;
    assert_eq!(
        a.patient.family_name.as_ref().unwrap().expose(),
        "Ara\u{fa}jo"
    );
    assert_eq!(a.patient.given_name.as_ref().unwrap().expose(), "Jo\u{e3}o");
    assert_eq!(a.location.as_deref(), Some("S\u{e3}o Paulo ^ centro"));
}

#[test]
fn broken_messages_get_ae_or_ar_with_err_and_no_patient_data() {
    let messages = split(&fixture("broken_batch.hl7"));
    assert_eq!(messages.len(), 4);
    let results: Vec<Processed> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| process(&m.bytes, &opts(), at(i as i64), "broken"))
        .collect();
    let expect = [
        (
            AckCode::Error,
            ErrorCode::RequiredFieldMissing,
            "ERR||SCH^1^2^1|101^",
        ),
        (
            AckCode::Reject,
            ErrorCode::UnsupportedMessageType,
            "ERR||MSH^1^9^1|200^",
        ),
        (AckCode::Error, ErrorCode::DataType, "ERR||SCH^1^11^1|102^"),
    ];
    for (i, (ack, code, err)) in expect.into_iter().enumerate() {
        let Outcome::Rejected(e) = &results[i].outcome else {
            panic!("message {} should be rejected", i + 1)
        };
        assert_eq!((e.ack, e.code), (ack, code), "message {}", i + 1);
        let text = ack_of(&results[i]);
        assert!(
            text.contains(&format!("\rMSA|{}|BAD-000{}\r", ack.as_str(), i + 1)),
            "{text}"
        );
        assert!(text.contains(err), "{text}");
        for canary in ["Canary", "Zed", "MRN-70", "20261305", "ADT_A01"] {
            assert!(!text.contains(canary), "ACK leaks {canary}: {text}");
            assert!(!e.to_string().contains(canary), "error leaks {canary}");
        }
    }
    // Good input keeps flowing after bad input.
    assert_eq!(
        event(&results[3]).appointment.status,
        AppointmentStatus::Cancelled
    );
}

#[test]
fn not_hl7_at_all_is_rejected_with_an_ack_that_still_parses() {
    let p = process(b"GET / HTTP/1.1\r\n\r\n", &opts(), at(1), "noise");
    let Outcome::Rejected(e) = &p.outcome else {
        panic!()
    };
    assert_eq!(e.ack, AckCode::Reject);
    let ack = ack_of(&p);
    assert!(ack.starts_with("MSH|^~\\&|MEDRELAY|"), "{ack}");
    assert!(ack.contains("\rMSA|AR|\r"), "{ack}");
}

/// Found by `cargo fuzz`: this message (a hex escape with a Latin-1 byte inside AIS-3)
/// panicked `process` (`escape::unescape` sliced inside the character). It is now mapped, the
/// malformed escape kept as written, and answered.
#[test]
fn fuzz_crash_hex_escape_with_non_ascii_is_processed_not_a_panic() {
    let bytes = fixture("fuzz_crash_hex_escape_non_ascii.hl7");
    let p = process(&bytes, &opts(), at(1), "fuzz crash");
    let ack = ack_of(&p);
    assert!(ack.contains("MSA|"), "{ack}");
    if let Outcome::Event(c) = &p.outcome
        && let Some(e) = c.as_event()
    {
        let service = e
            .appointment
            .service_type
            .as_ref()
            .map(|g| g.expose().clone());
        assert_eq!(service.as_deref(), Some("Cl\\XC\u{e0}3AD\\nica geral"));
        // The well-formed escapes of the same message still decode.
        let given = e
            .appointment
            .patient
            .given_name
            .as_ref()
            .map(|g| g.expose().clone());
        assert_eq!(given.as_deref(), Some("Maria Jos\u{e9}"));
    } else {
        panic!("the message maps: {:?}", p.outcome);
    }
}

/// Found by `cargo fuzz`: SCH-9 (duration) holding a 14-digit number overflowed the end time and
/// panicked `process`; it is an AE naming SCH-9, and the raw message goes to quarantine as usual.
#[test]
fn fuzz_crash_sch9_duration_overflow_is_an_ae_not_a_panic() {
    let bytes = fixture("fuzz_crash_sch9_duration_overflow.hl7");
    let p = process(&bytes, &opts(), at(1), "fuzz crash");
    let ack = ack_of(&p);
    assert!(ack.contains("MSA|AE|"), "{ack}");
    assert!(ack.contains("SCH^1^9"), "the field is named: {ack}");
}
