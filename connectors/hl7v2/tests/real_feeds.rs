//! Classes of input found in real feeds (fixtures written for this project, see
//! tests/fixtures/SOURCES.md at the repository root): cancellations without timing, SCH-25 words
//! instead of table 0278 codes, AIL-3 as a full PL, and the ordering rule.

// PHI: tests read mapped values back to check them.
#![allow(clippy::disallowed_methods)]

use medrelay_connector_hl7v2::file::split;
use medrelay_connector_hl7v2::{
    AckCode, Arrival, ErrorCode, Hl7Options, LocationPart, Ordering, Outcome, Processed, process,
};
use medrelay_mapping::{AppointmentStatus, Change};

fn fixture(name: &str) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(format!(
        "{}/../../tests/fixtures/hl7/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    split(&bytes).into_iter().map(|m| m.bytes).collect()
}

fn opts() -> Hl7Options {
    Hl7Options::new("clinica", "saopaulo", "America/Sao_Paulo", "BR")
}

fn arrived(n: i64) -> Arrival {
    Arrival::new("2026-12-06T13:00:00Z".parse().unwrap(), n)
}

fn change(p: &Processed) -> &Change {
    match &p.outcome {
        Outcome::Event(c) => c,
        other => panic!("expected an event, got {other:?}"),
    }
}

fn all(name: &str, o: &Hl7Options) -> Vec<Processed> {
    fixture(name)
        .iter()
        .enumerate()
        .map(|(i, m)| process(m, o, arrived(i as i64 + 1), name))
        .collect()
}

#[test]
fn cancellation_stamped_before_its_booking_still_comes_after_it_in_arrival_order() {
    let p = all("skewed_cancel_v251.hl7", &opts());
    let (booking, cancel) = (change(&p[0]), change(&p[1]));
    assert_eq!(cancel.status(), AppointmentStatus::Cancelled);
    // MSH-7 says 09:00 for the cancel and 10:00 for the booking; the stream says cancel second.
    assert!(cancel.version() > booking.version());
    assert_eq!(cancel.key(), booking.key());
}

#[test]
fn message_time_ordering_keeps_msh7_as_the_version() {
    let mut o = opts();
    o.ordering = Ordering::MessageTime;
    let p = all("skewed_cancel_v251.hl7", &o);
    let (booking, cancel) = (change(&p[0]), change(&p[1]));
    assert!(cancel.version() < booking.version());
    assert_eq!(
        booking.version().at.to_string(),
        "2026-12-06T13:00:00Z",
        "10:00 -03"
    );
}

#[test]
fn s15_without_timing_is_a_status_change_not_an_error() {
    let p = all("skewed_cancel_v251.hl7", &opts());
    match change(&p[3]) {
        Change::Status(s) => {
            assert_eq!(s.status, AppointmentStatus::Cancelled);
            assert_eq!(s.key.id, "AG-40002");
            assert_eq!(s.placer_id.as_deref(), Some("PL-40002"));
            assert_eq!(s.message_id.as_deref(), Some("AGENDA^CLINICA-SP^SKW-0004"));
        }
        other => panic!("a status change, got {other:?}"),
    }
    assert!(
        p[3].ack(true, &opts(), jiff::Timestamp::now())
            .contains("\rMSA|AA|SKW-0004")
    );
}

#[test]
fn v23_s17_and_s26_without_timing_are_status_changes() {
    let p = all("skewed_cancel_v23.hl7", &opts());
    assert_eq!(change(&p[1]).status(), AppointmentStatus::EnteredInError);
    assert!(
        matches!(change(&p[1]), Change::Appointment(_)),
        "it has SCH-11"
    );
    match change(&p[3]) {
        Change::Status(s) => assert_eq!(s.status, AppointmentStatus::Noshow),
        other => panic!("a status change, got {other:?}"),
    }
}

#[test]
fn booked_message_without_timing_is_still_rejected_with_booking_wording() {
    let raw = b"MSH|^~\\&|AGENDA|CLINICA-SP|MEDRELAY|CLINICA-SP|20261206100000-0300||SIU^S12^SIU_S12|NT-1|P|2.5.1\rSCH|PL-1|AG-1\r";
    let p = process(raw, &opts(), arrived(1), "no timing");
    let Outcome::Rejected(e) = &p.outcome else {
        panic!("{:?}", p.outcome)
    };
    assert_eq!(e.code, ErrorCode::RequiredFieldMissing);
    assert!(
        e.to_string()
            .contains("a booked appointment needs its start"),
        "{e}"
    );
}

#[test]
fn sch25_status_words_in_the_senders_language_are_mapped() {
    let p = all("local_status_words.hl7", &opts());
    assert_eq!(change(&p[0]).status(), AppointmentStatus::Booked);
    assert_eq!(change(&p[1]).status(), AppointmentStatus::Noshow);
}

#[test]
fn sch25_unmapped_value_is_ae_naming_the_field_and_status_map_not_the_value() {
    let p = all("local_status_words.hl7", &opts());
    for rejected in [&p[2], &p[3]] {
        let Outcome::Rejected(e) = &rejected.outcome else {
            panic!("{:?}", rejected.outcome)
        };
        assert_eq!(
            (e.ack, e.code),
            (AckCode::Error, ErrorCode::TableValueNotFound)
        );
        let text = e.to_string();
        assert!(
            text.contains("SCH-25") && text.contains("`status_map`"),
            "{text}"
        );
        assert!(!text.contains("Remarcado"), "{text}");
        let ack = rejected.ack(true, &opts(), jiff::Timestamp::now());
        assert!(ack.contains("\rMSA|AE|"), "{ack}");
        assert!(!ack.contains("Remarcado"), "{ack}");
    }
}

#[test]
fn sch25_status_map_gives_a_vendor_letter_its_meaning() {
    let mut o = opts();
    o.status_map = vec![
        (
            medrelay_connector_hl7v2::siu::status_key("X"),
            AppointmentStatus::Cancelled,
        ),
        (
            medrelay_connector_hl7v2::siu::status_key("Remarcado pelo paciente"),
            AppointmentStatus::Cancelled,
        ),
    ];
    let p = all("local_status_words.hl7", &o);
    assert_eq!(change(&p[2]).status(), AppointmentStatus::Cancelled);
    assert_eq!(change(&p[3]).status(), AppointmentStatus::Cancelled);
}

#[test]
fn ail3_room_change_is_a_location_change_when_rooms_are_configured() {
    let location = |o: &Hl7Options| -> Vec<Option<String>> {
        all("room_change.hl7", o)
            .iter()
            .map(|p| change(p).as_event().unwrap().appointment.location.clone())
            .collect()
    };
    // The default reads only the facility here (no description): the room change is invisible.
    assert_eq!(
        location(&opts()),
        vec![
            Some("Hospital Central".into()),
            Some("Hospital Central".into())
        ]
    );
    let mut o = opts();
    o.location_parts = vec![
        LocationPart::PointOfCare,
        LocationPart::Room,
        LocationPart::Facility,
    ];
    assert_eq!(
        location(&o),
        vec![
            Some("CARDIO, Sala 201, Hospital Central".into()),
            Some("CARDIO, Sala 305, Hospital Central".into())
        ]
    );
}
