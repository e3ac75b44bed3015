//! FHIR Bundle mapping (`map_bundle`): JSON Bundles of Appointments, Patients and Consents, and
//! Subscription notifications. Property: no panic, whatever the body.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medrelay_connector_fhir::{ConsentSelector, FhirOptions, map_bundle};

static OPTIONS: LazyLock<FhirOptions> = LazyLock::new(|| FhirOptions {
    system: "fuzz".into(),
    site: "saopaulo".into(),
    time_zone: "America/Sao_Paulo".into(),
    default_region: "BR".into(),
    identifier_system: Some("urn:clinica:agenda".into()),
    consent: ConsentSelector {
        codes: vec!["http://loinc.org|59284-0".into()],
    },
});

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_796_000_000).expect("a valid instant");
    let _ = map_bundle(data, &OPTIONS, now);
});
