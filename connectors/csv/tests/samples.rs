//! The sample exports in `samples/csv/` read with the sample profiles in `samples/profiles.toml`.

// PHI: these tests read mapped values to check them against the fixture.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{options, read_all, read_everything, ts};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use medrelay_connector_csv::{CsvProfile, RowReport};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::{AppointmentStatus, PhoneUse};

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples")
}

fn profiles() -> BTreeMap<String, CsvProfile> {
    let text = std::fs::read_to_string(samples().join("profiles.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

#[test]
fn sample_profiles_validate() {
    let p = profiles();
    assert_eq!(p.keys().collect::<Vec<_>>(), ["clinica", "openemr"]);
    for (name, profile) in &p {
        profile
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[test]
fn openemr_sample_maps_exactly() {
    let profile = &profiles()["openemr"];
    let path = samples().join("csv/openemr_future_appointments.csv");
    let (ok, bad) = read_all(&path, profile, options("openemr", "America/New_York", "US"));
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok.len(), 12);

    let first = &ok[0];
    let a = &first.appointment;
    assert_eq!(a.key.source, "openemr");
    assert_eq!(a.key.id, "50001");
    assert_eq!(a.status, AppointmentStatus::Booked);
    // 09:00 EST = 14:00 UTC.
    assert_eq!(a.start, ts("2026-12-01T14:00:00Z"));
    assert_eq!(a.end, Some(ts("2026-12-01T14:30:00Z")));
    assert_eq!(a.time_zone, "America/New_York");
    assert_eq!(a.site, "demo-site");
    assert_eq!(a.location.as_deref(), Some("Midtown Demo Clinic"));
    assert_eq!(a.practitioner.as_deref(), Some("Placeholder"));
    assert_eq!(a.service_type.as_ref().unwrap().expose(), "Office Visit");
    assert_eq!(
        a.reason.as_ref().unwrap().expose(),
        "FAKE DATA: annual physical"
    );
    assert_eq!(a.patient.id.as_ref().unwrap().expose(), "1001");
    assert_eq!(a.patient.given_name.as_ref().unwrap().expose(), "Alice");
    assert_eq!(a.patient.family_name.as_ref().unwrap().expose(), "Example");
    assert_eq!(a.patient.protected, None);
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+12127365001");
    assert_eq!(a.patient.phones[0].use_, PhoneUse::Other);
    assert_eq!(a.patient.phones[0].rank, 1);
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptIn));
    assert_eq!(first.version.at, ts("2026-11-30T12:00:00Z"));
    assert_eq!(first.version.seq, 2);
    assert_eq!(first.raw_ref, "openemr_future_appointments.csv:2");

    // The quoted comment with a comma, PM times.
    let bob = &ok[1].appointment;
    assert_eq!(
        bob.reason.as_ref().unwrap().expose(),
        "FAKE DATA: follow-up, fasting labs"
    );
    assert_eq!(ok[2].appointment.start, ts("2026-12-03T18:30:00Z"));
    assert_eq!(ok[4].appointment.end, Some(ts("2026-12-07T17:15:00Z")));

    let by_id = |id: &str| {
        &ok.iter()
            .find(|e| e.appointment.key.id == id)
            .unwrap()
            .appointment
    };
    assert_eq!(by_id("50004").status, AppointmentStatus::Cancelled);
    assert_eq!(by_id("50009").status, AppointmentStatus::Noshow);
    assert_eq!(by_id("50011").status, AppointmentStatus::Arrived);
    assert_eq!(by_id("50003").status, AppointmentStatus::Booked);
    assert_eq!(by_id("50005").ehr_consent, Some(EhrConsent::OptOut));
    assert_eq!(by_id("50006").ehr_consent, None);
    assert_eq!(by_id("50010").ehr_consent, Some(EhrConsent::OptIn));
    // An unusable phone is not a bad row: it is a skip reason for later, without the digits.
    let grace = &by_id("50007").patient;
    assert_eq!(grace.best_phone(), None);
    let problem = grace.phone_problem().unwrap();
    assert!(!problem.contains("555"), "{problem}");
    // Every other phone in the sample is valid for libphonenumber.
    for e in ok.iter().filter(|e| e.appointment.key.id != "50007") {
        assert!(
            e.appointment.patient.best_phone().is_some(),
            "{}",
            e.appointment.key.id
        );
    }
    // Dates stay inside the sample window.
    for e in &ok {
        assert!(e.appointment.start >= ts("2026-12-01T00:00:00Z"));
        assert!(e.appointment.start < ts("2026-12-21T00:00:00Z"));
    }
}

#[test]
fn windows_1252_sample_decodes_accents_and_the_comma_header() {
    let profile = &profiles()["clinica"];
    let path = samples().join("csv/clinica_export_win1252.csv");
    // The file really is Windows-1252, not UTF-8.
    assert!(std::str::from_utf8(&std::fs::read(&path).unwrap()).is_err());
    let (ok, bad) = read_all(
        &path,
        profile,
        options("clinica", "America/Sao_Paulo", "BR"),
    );
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(ok.len(), 10);

    let a = &ok[0].appointment;
    assert_eq!(a.key.id, "AG-30001");
    assert_eq!(a.patient.given_name.as_ref().unwrap().expose(), "João");
    assert_eq!(a.patient.family_name.as_ref().unwrap().expose(), "Exemplo");
    // "Start Time, Sortable" 08:30 on 01/12/2026 in São Paulo (UTC-3).
    assert_eq!(a.start, ts("2026-12-01T11:30:00Z"));
    assert_eq!(a.end, None);
    assert_eq!(a.time_zone, "America/Sao_Paulo");
    assert_eq!(
        a.location.as_deref(),
        Some("Clínica São Paulo – Unidade Paulista")
    );
    assert_eq!(a.practitioner.as_deref(), Some("Dra. Ana Fictícia"));
    assert_eq!(
        a.reason.as_ref().unwrap().expose(),
        "DADOS FICTÍCIOS; retorno"
    );
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511987654321");
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptIn));
    assert_eq!(ok[0].raw_ref, "clinica_export_win1252.csv:2");

    let ines = &ok[1].appointment.patient;
    assert_eq!(ines.given_name.as_ref().unwrap().expose(), "Inês");
    assert_eq!(ines.family_name.as_ref().unwrap().expose(), "Fictícia");
    assert_eq!(ines.best_phone().unwrap().expose(), "+5511912345678");
    let begona = &ok[2].appointment;
    assert_eq!(
        begona.patient.given_name.as_ref().unwrap().expose(),
        "Begoña"
    );
    assert_eq!(
        begona.patient.family_name.as_ref().unwrap().expose(),
        "Ejemplo Prueba"
    );
    assert_eq!(begona.start, ts("2026-12-03T17:45:00Z"));
    assert_eq!(ok[3].appointment.status, AppointmentStatus::Cancelled);
    // "Não" decoded from 0xE3 and matched case-insensitively.
    assert_eq!(ok[4].appointment.ehr_consent, Some(EhrConsent::OptOut));
    assert_eq!(
        ok[4].appointment.patient.best_phone().unwrap().expose(),
        "+5521988887777"
    );
    // Empty status -> default, empty opt-in -> no signal.
    assert_eq!(ok[5].appointment.status, AppointmentStatus::Booked);
    assert_eq!(ok[5].appointment.ehr_consent, None);
    assert_eq!(ok[7].appointment.status, AppointmentStatus::Noshow);
    assert_eq!(
        ok[7]
            .appointment
            .patient
            .given_name
            .as_ref()
            .unwrap()
            .expose(),
        "Íñigo"
    );
    for e in &ok {
        assert!(
            e.appointment.patient.best_phone().is_some(),
            "{}",
            e.appointment.key.id
        );
    }
}

#[test]
fn broken_export_reports_each_bad_row_and_keeps_reading() {
    let profile = &profiles()["openemr"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken_export.csv");
    std::fs::copy(samples().join("csv/broken_export.csv"), &path).unwrap();
    let original = std::fs::read(&path).unwrap();
    let file_lines: Vec<&[u8]> = original.split(|b| *b == b'\n').collect();

    let all = read_everything(&path, profile, options("openemr", "America/New_York", "US"));
    let (ok, bad) = (&all.events, &all.bad);
    assert!(all.statuses.is_empty() && all.warnings.is_empty());
    let ids: Vec<(&str, i64)> = ok
        .iter()
        .map(|e| (e.appointment.key.id.as_str(), e.version.seq))
        .collect();
    assert_eq!(
        ids,
        [
            ("50001", 2),
            ("50003", 4),
            ("50008", 8),
            ("50010", 10),
            ("50012", 11)
        ]
    );
    assert_eq!(
        ok[4].appointment.reason.as_ref().unwrap().expose(),
        "FAKE DATA: bring ID, insurance card"
    );

    let summary: Vec<(u64, Option<&str>, &str, Option<&str>)> = bad
        .iter()
        .map(|b| {
            (
                b.line,
                b.column.as_deref(),
                b.reason.as_str(),
                b.filler_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                3,
                Some("startdate"),
                "value does not match datetime format %m/%d/%Y %I:%M %p",
                Some("50002")
            ),
            (
                5,
                Some("Status"),
                "value is not in status_map",
                Some("50004")
            ),
            (6, Some("WC Apt ID"), "required value is empty", None),
            (7, None, "wrong number of fields: 10, expected 17", None),
            (
                9,
                None,
                "unbalanced quote: the record runs over several lines with the wrong number of fields",
                None
            ),
        ]
    );
    // Raw bytes are the physical line as in the file, for quarantine.
    for b in bad {
        assert_eq!(b.raw, file_lines[b.line as usize - 1], "line {}", b.line);
    }

    let mut report = RowReport::new(&path);
    for b in bad {
        report.record(b);
    }
    let report_path = report.finish_with(&all.summary).unwrap().unwrap();
    assert_eq!(report_path, dir.path().join("broken_export.csv.report.csv"));
    assert_eq!(
        std::fs::read_to_string(&report_path).unwrap(),
        "line,column,reason\n\
         3,startdate,value does not match datetime format %m/%d/%Y %I:%M %p\n\
         5,Status,value is not in status_map\n\
         6,WC Apt ID,required value is empty\n\
         7,,\"wrong number of fields: 10, expected 17\"\n\
         9,,unbalanced quote: the record runs over several lines with the wrong number of fields\n\
         summary,startdate,1 row: value does not match datetime format %m/%d/%Y %I:%M %p\n\
         summary,Status,1 row: value is not in status_map\n\
         summary,WC Apt ID,1 row: required value is empty\n\
         summary,,\"1 row: wrong number of fields: 10, expected 17\"\n\
         summary,,1 row: unbalanced quote: the record runs over several lines with the wrong number of fields\n\
         summary,Status,\"unknown values (not in status_map: the rows were rejected): `Z` (1 row); \
         allowed (status_map): `!`, `#`, `*`, `+`, `-`, `<`, `?`, `@`, `x`, `~`\"\n"
    );
}
