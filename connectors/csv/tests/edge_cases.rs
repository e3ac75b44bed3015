//! Encodings, BOM, DST, line numbering and PHI hygiene, on the fixtures in `tests/fixtures/`.

// PHI: these tests read mapped values to check them against the fixture.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{options, read_all, ts};
use jiff::Timestamp;

use std::path::{Path, PathBuf};

use medrelay_connector_csv::{CsvError, CsvProfile, open};
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::{AppointmentStatus, PhoneUse};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn profile(toml_text: &str) -> CsvProfile {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn bom_crlf_blank_lines_multiline_fields_and_excel_padding() {
    let p = profile(
        r#"
        time_zone = "America/Sao_Paulo"
        date_format = "%Y-%m-%d"
        time_format = "%H:%M"
        status_map = { booked = "booked" }
        [columns]
        filler_id = "Appt"
        start_date = "Date"
        start_time = "Time"
        duration_minutes = "Minutes"
        full_name = "Name"
        full_name_order = "given_family"
        mobile_phone = "Mobile"
        phones = ["Home"]
        updated_at = "Updated"
        site = "Site"
        language = "Lang"
        status = "Status"
        "#,
    );
    let (ok, bad) = read_all(&fixture("bom_crlf.csv"), &p, options("test", "UTC", "BR"));
    assert!(bad.is_empty(), "{bad:?}");
    let lines: Vec<(&str, i64)> = ok
        .iter()
        .map(|e| (e.appointment.key.id.as_str(), e.version.seq))
        .collect();
    // Header line 1, blank line 3, B-2 spans lines 4-5, trailing delimiter-only rows skipped.
    assert_eq!(lines, [("B-1", 2), ("B-2", 4), ("B-3", 6)]);

    let a = &ok[0].appointment;
    assert_eq!(a.start, ts("2026-12-05T12:00:00Z"));
    assert_eq!(a.end, Some(ts("2026-12-05T12:45:00Z")));
    assert_eq!(a.status, AppointmentStatus::Booked);
    assert_eq!(a.site, "clinic-b");
    assert_eq!(a.time_zone, "America/Sao_Paulo");
    assert_eq!(a.patient.preferred_language.as_deref(), Some("pt-BR"));
    assert_eq!(a.patient.given_name.as_ref().unwrap().expose(), "Alice");
    assert_eq!(a.patient.family_name.as_ref().unwrap().expose(), "Example");
    assert_eq!(a.patient.phones.len(), 2);
    assert_eq!(
        (a.patient.phones[0].use_, a.patient.phones[0].rank),
        (PhoneUse::Mobile, 0)
    );
    assert_eq!(
        (a.patient.phones[1].use_, a.patient.phones[1].rank),
        (PhoneUse::Other, 1)
    );
    assert_eq!(a.patient.best_phone().unwrap().expose(), "+5511987654321");
    assert_eq!(ok[0].version.at, ts("2026-11-20T10:00:00Z"));
    assert_eq!(ok[0].raw_ref, "bom_crlf.csv:2");

    let b = &ok[1].appointment;
    assert_eq!(b.patient.given_name.as_ref().unwrap().expose(), "Bob");
    assert_eq!(b.patient.family_name.as_ref().unwrap().expose(), "Sample");
    assert_eq!(b.end, None);
    assert_eq!(b.site, "demo-site");
    assert_eq!(b.status, AppointmentStatus::Booked);
    assert_eq!(b.patient.phones.len(), 1, "empty phone cells are skipped");
    assert_eq!(b.patient.best_phone().unwrap().expose(), "+12127365002");
    // No RFC 3339 offset: read with datetime_format in the profile zone.
    assert_eq!(ok[1].version.at, ts("2026-11-21T11:15:00Z"));
    assert_eq!(ok[2].version.at, ts("2026-11-30T12:00:00Z"));
    assert_eq!(ok[2].appointment.patient.phones.len(), 0);
}

#[test]
fn civil_times_use_compatible_disambiguation_across_dst() {
    let p = profile(
        r#"
        [columns]
        filler_id = "id"
        start_date = "date"
        start_time = "time"
        duration_minutes = "duration"
        "#,
    );
    let (ok, bad) = read_all(
        &fixture("dst_new_york.csv"),
        &p,
        options("test", "America/New_York", "US"),
    );
    assert!(bad.is_empty(), "{bad:?}");
    let got: Vec<(&str, Timestamp, Option<Timestamp>)> = ok
        .iter()
        .map(|e| {
            (
                e.appointment.key.id.as_str(),
                e.appointment.start,
                e.appointment.end,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // 02:30 does not exist on 2026-03-08: it becomes 03:30 EDT.
            (
                "SPRING",
                ts("2026-03-08T07:30:00Z"),
                Some(ts("2026-03-08T08:00:00Z"))
            ),
            // 01:30 happens twice on 2026-11-01: the earlier one (EDT) is taken.
            (
                "FALL",
                ts("2026-11-01T05:30:00Z"),
                Some(ts("2026-11-01T06:30:00Z"))
            ),
            ("PLAIN", ts("2026-12-10T14:00:00Z"), None),
        ]
    );
    assert!(
        ok.iter()
            .all(|e| e.appointment.time_zone == "America/New_York")
    );
}

#[test]
fn latin1_tab_separated_given_family() {
    let p = profile(
        r#"
        delimiter = "\t"
        encoding = "latin-1"
        datetime_format = "%d/%m/%Y %H:%M"
        time_zone = "Europe/Madrid"
        [columns]
        filler_id = "id"
        start = "when"
        full_name = "name"
        full_name_order = "given_family"
        opt_in = "opt"
        "#,
    );
    let (ok, bad) = read_all(&fixture("latin1_tab.csv"), &p, options("test", "UTC", "ES"));
    assert!(bad.is_empty());
    let a = &ok[0].appointment;
    assert_eq!(a.start, ts("2026-12-05T13:00:00Z"));
    assert_eq!(a.patient.given_name.as_ref().unwrap().expose(), "José");
    assert_eq!(
        a.patient.family_name.as_ref().unwrap().expose(),
        "Ñandú Pérez"
    );
    assert_eq!(a.ehr_consent, Some(EhrConsent::OptOut));
}

fn canary_profile() -> CsvProfile {
    profile(
        r#"
        datetime_format = "%Y-%m-%d %H:%M"
        time_zone = "America/New_York"
        status_map = { booked = "booked" }
        [columns]
        filler_id = "id"
        start = "start"
        given_name = "first"
        family_name = "last"
        phones = ["phone"]
        status = "status"
        patient_id = "mrn"
        reason = "note"
        "#,
    )
}

const CANARIES: [&str; 7] = [
    "CANARY",
    "Zebulon",
    "Quixotic",
    "4242",
    "MRN",
    "9999",
    "never closed",
];

fn assert_no_canary(text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "{c:?} leaked into {text:?}");
    }
}

#[test]
fn no_cell_value_reaches_a_reason_or_an_error() {
    let (ok, bad) = read_all(
        &fixture("canary.csv"),
        &canary_profile(),
        options("test", "UTC", "US"),
    );
    let summary: Vec<(u64, Option<&str>, &str)> = bad
        .iter()
        .map(|b| (b.line, b.column.as_deref(), b.reason.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                2,
                Some("start"),
                "value does not match datetime format %Y-%m-%d %H:%M"
            ),
            (3, Some("status"), "value is not in status_map"),
            (4, Some("id"), "required value is empty"),
            (5, None, "wrong number of fields: 4, expected 8"),
            (6, Some("first"), "value is not valid UTF-8"),
            (
                7,
                None,
                "unbalanced quote: the record runs over several lines with the wrong number of fields"
            ),
        ]
    );
    for b in &bad {
        assert_no_canary(&b.reason);
        assert_no_canary(b.column.as_deref().unwrap_or(""));
    }
    // The readable filler ids are kept (for snapshot sweeps), outside the reason.
    assert_eq!(bad[0].filler_id.as_deref(), Some("CANARY-ID-1"));
    assert_eq!(bad[4].filler_id.as_deref(), Some("CANARY-ID-5"));

    // The line after the unbalanced quote is read again, and its unusable phone is a skip reason.
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].version.seq, 8);
    let problem = ok[0].appointment.patient.phone_problem().unwrap();
    assert_no_canary(&problem);
    assert!(!problem.contains("99"), "{problem}");
    // Formatting the appointment never shows PHI either.
    assert_no_canary(&format!("{:?}", ok[0].appointment.patient));

    // File-level errors on the same file name headers and settings only.
    let mut p = canary_profile();
    p.columns.location = Some("Clinic".into());
    let err = open(&fixture("canary.csv"), &p, options("test", "UTC", "US")).unwrap_err();
    assert!(matches!(err, CsvError::MissingHeader { .. }));
    assert_eq!(
        err.to_string(),
        "mapped header \"Clinic\" is not in the file"
    );
    for e in [
        err,
        open(
            &fixture("canary.csv"),
            &canary_profile(),
            options("test", "UTC", "XX"),
        )
        .unwrap_err(),
    ] {
        assert_no_canary(&e.to_string());
    }
}

#[test]
fn file_level_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = canary_profile();

    let empty = dir.path().join("empty.csv");
    std::fs::write(&empty, "").unwrap();
    assert!(matches!(
        open(&empty, &p, options("test", "UTC", "US")),
        Err(CsvError::Empty)
    ));

    let bad_header = dir.path().join("bad_header.csv");
    std::fs::write(&bad_header, b"id,st\xffart\n1,2\n").unwrap();
    let err = open(&bad_header, &p, options("test", "UTC", "US")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "header column 2 cannot be decoded as utf-8 (the profile's `encoding`): is the file in another encoding?"
    );
    assert!(err.is_bad_input() && !err.is_profile_mismatch());

    let mut no_zone = p.clone();
    no_zone.time_zone = None;
    let err = open(
        &fixture("canary.csv"),
        &no_zone,
        options("test", "Nowhere/Land", "US"),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("site time zone \"Nowhere/Land\""),
        "{err}"
    );

    let missing = dir.path().join("missing.csv");
    let err = open(&missing, &p, options("test", "UTC", "US")).unwrap_err();
    assert!(matches!(err, CsvError::Io { .. }));

    let mut invalid = p;
    invalid.default_status = "maybe".into();
    assert!(matches!(
        open(
            &fixture("canary.csv"),
            &invalid,
            options("test", "UTC", "US")
        ),
        Err(CsvError::Profile(_))
    ));
}

/// HL7-style privacy flags in an export: the protection indicator (PD1-12) protects the patient, an
/// unknown indicator value is a bad row (never guessed), and a "no publicity" code (PD1-11 `N`) is an
/// EHR opt-out that beats the same row's opt-in.
#[test]
fn protection_indicator_and_publicity_code_columns() {
    let p = profile(
        r#"
        time_zone = "America/Sao_Paulo"
        [columns]
        filler_id = "Appt"
        start_date = "Date"
        start_time = "Time"
        full_name = "Name"
        full_name_order = "given_family"
        mobile_phone = "Mobile"
        protection = "Protection"
        publicity = "Publicity"
        opt_in = "WhatsApp"
        "#,
    );
    let (ok, bad) = read_all(
        &fixture("privacy_flags.csv"),
        &p,
        options("test", "UTC", "BR"),
    );
    let by_id = |id: &str| {
        &ok.iter()
            .find(|e| e.appointment.key.id == id)
            .unwrap()
            .appointment
    };
    assert_eq!(by_id("P-1").patient.protected, Some(true));
    assert_eq!(by_id("P-1").ehr_consent, Some(EhrConsent::OptIn));
    assert_eq!(by_id("P-2").patient.protected, Some(false));
    assert_eq!(
        by_id("P-2").ehr_consent,
        Some(EhrConsent::OptOut),
        "no publicity"
    );
    assert_eq!(by_id("P-3").patient.protected, Some(false));
    assert_eq!(
        by_id("P-3").ehr_consent,
        Some(EhrConsent::OptIn),
        "family only"
    );
    assert_eq!(by_id("P-5").patient.protected, None, "blank: no signal");
    assert_eq!(by_id("P-5").ehr_consent, None);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].line, 5);
    assert_eq!(bad[0].column.as_deref(), Some("Protection"));
    assert!(!bad[0].reason.contains("maybe"), "{}", bad[0].reason);

    // A value that is both protecting and not is a profile error.
    let mut clash = p.clone();
    clash.protection_no.push("Y".into());
    assert!(clash.validate().unwrap_err()[0].contains("protection"));
}
