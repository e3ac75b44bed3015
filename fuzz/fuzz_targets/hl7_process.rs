//! HL7 `process` (charset, escapes, structure, SIU mapping) and the ACK built from its outcome.
//!
//! Properties: no panic; an ACK is always built (stored or not); an ACK for an input without the
//! MLLP end byte contains none either, so it can always be framed back to the sender.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medrelay_connector_hl7v2::{Arrival, Hl7Options, LocationPart, Ordering, process};

static OPTIONS: LazyLock<[Hl7Options; 2]> = LazyLock::new(|| {
    let plain = Hl7Options::new("fuzz", "saopaulo", "America/Sao_Paulo", "BR");
    // A site with its own status words, AIL-3 parts and message-time ordering.
    let mut custom = Hl7Options::new("fuzz", "newyork", "America/New_York", "US");
    custom.ordering = Ordering::MessageTime;
    custom.status_map = vec![(
        "confirmado".to_owned(),
        medrelay_mapping::AppointmentStatus::Booked,
    )];
    custom.location_parts = vec![LocationPart::PointOfCare, LocationPart::Room];
    [plain, custom]
});

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_796_000_000).expect("a valid instant");
    for opts in OPTIONS.iter() {
        let p = process(data, opts, Arrival::new(now, 1), "fuzz");
        for stored in [true, false] {
            let ack = p.ack(stored, opts, now);
            assert!(ack.starts_with("MSH"), "an ACK starts with MSH");
            if !data.contains(&0x1c) {
                assert!(!ack.contains('\u{1c}'), "the ACK holds the MLLP end byte");
            }
        }
    }
});
