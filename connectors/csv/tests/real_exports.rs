//! Regressions for exports from real systems (issue 10, "CSV exports from real systems"; issue 11,
//! "Smaller"): day-only appointments, `Z` offsets, rows without a phone, the report's summary of
//! code values, status changes without a start, and civil times in a daylight-saving gap. Every
//! fixture is in `tests/fixtures/` (see SOURCES.md).

// PHI: these tests read mapped values to check them against the fixture.
#![allow(clippy::disallowed_methods)]

mod common;
use common::{options, read_everything, ts};

use std::path::{Path, PathBuf};

use medrelay_connector_csv::{CsvProfile, DstGap, RowReport};
use medrelay_mapping::AppointmentStatus;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn profile(toml_text: &str) -> CsvProfile {
    let p: CsvProfile = toml::from_str(toml_text).unwrap();
    p.validate().unwrap();
    p
}

/// Writes the row report of `name` (copied to a temporary folder) and returns its text.
fn report_of(name: &str, p: &CsvProfile, tz: &str) -> (String, common::Everything) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    let all = read_everything(&path, p, options("test", tz, "US"));
    let mut report = RowReport::new(&path);
    for b in &all.bad {
        report.record(b);
    }
    for w in &all.warnings {
        report.warn(w);
    }
    let text = match report.finish_with(&all.summary).unwrap() {
        Some(path) => std::fs::read_to_string(path).unwrap(),
        None => String::new(),
    };
    (text, all)
}

#[test]
fn date_only_column_gives_day_level_appointments_without_a_made_up_time() {
    let p = profile(
        r#"
        date_format = "%d/%m/%Y"
        time_zone = "America/Sao_Paulo"
        status_map = { agendado = "booked", cancelado = "cancelled" }
        [columns]
        filler_id = "Appt ID"
        start_date = "Appt Date"
        status = "Status"
        full_name = "Patient"
        mobile_phone = "Mobile"
        opt_in = "WhatsApp"
        "#,
    );
    assert!(p.date_only());
    let all = read_everything(&fixture("date_only.csv"), &p, options("test", "UTC", "BR"));
    assert!(all.bad.is_empty(), "{:?}", all.bad);
    assert_eq!(all.events.len(), 2);
    let a = &all.events[0].appointment;
    assert!(a.time_unknown);
    // The first instant of 1 December in São Paulo (UTC-3), not a time anybody booked.
    assert_eq!(a.start, ts("2026-12-01T03:00:00Z"));
    assert_eq!(a.end, None);
    assert!(all.events[1].appointment.time_unknown);
    assert_eq!(
        all.events[1].appointment.status,
        AppointmentStatus::Cancelled
    );
    // A cancellation with no date at all is a status change.
    assert_eq!(all.statuses.len(), 1);
    assert_eq!(all.statuses[0].key.id, "D-3");

    // A day-only start cannot have an end time, and time_unknown_at has nothing to act on.
    let mut wrong = p.clone();
    wrong.columns.end_time = Some("End".into());
    wrong.time_unknown_at = Some("00:00".into());
    let errs = wrong.validate().unwrap_err().join("\n");
    assert!(errs.contains("day-only start"), "{errs}");
    assert!(errs.contains("time_unknown_at has no effect"), "{errs}");
}

#[test]
fn placeholder_midnight_is_a_time_unknown_appointment() {
    let text = r#"
        time_zone = "America/New_York"
        [columns]
        filler_id = "id"
        start = "start"
        end = "end"
        phones = ["phone"]
        "#;
    let mut p = profile(text);
    p.time_unknown_at = Some("00:00".into());
    p.validate().unwrap();
    let all = read_everything(
        &fixture("midnight_placeholder.csv"),
        &p,
        options("test", "UTC", "US"),
    );
    assert!(all.bad.is_empty(), "{:?}", all.bad);
    let (m1, m2) = (&all.events[0].appointment, &all.events[1].appointment);
    assert!(m1.time_unknown);
    assert_eq!(m1.start, ts("2026-12-01T05:00:00Z"), "local midnight");
    assert_eq!(m1.end, None, "a placeholder end is not read");
    assert!(!m2.time_unknown);
    assert_eq!(m2.start, ts("2026-12-01T14:30:00Z"));
    assert_eq!(m2.end, Some(ts("2026-12-01T15:00:00Z")));

    // Without the setting, 00:00 is a real time (the old reading).
    let all = read_everything(
        &fixture("midnight_placeholder.csv"),
        &profile(text),
        options("test", "UTC", "US"),
    );
    assert!(!all.events[0].appointment.time_unknown);

    p.time_unknown_at = Some("midnight".into());
    assert!(p.validate().unwrap_err()[0].contains("time_unknown_at"));
}

#[test]
fn offset_formats_accept_z() {
    let read = |fmt: &str| {
        let p = profile(&format!(
            "datetime_format = \"{fmt}\"\n[columns]\nfiller_id = \"id\"\nstart = \"start\""
        ));
        let all = read_everything(
            &fixture("offsets_z.csv"),
            &p,
            options("test", "America/New_York", "US"),
        );
        let ok: Vec<(String, jiff::Timestamp)> = all
            .events
            .iter()
            .map(|e| (e.appointment.key.id.clone(), e.appointment.start))
            .collect();
        let bad: Vec<u64> = all.bad.iter().map(|b| b.line).collect();
        (ok, bad)
    };
    let at = ts("2026-12-01T14:00:00Z");
    // `%z` is +hhmm (and now Z); `%:z` is +hh:mm (and Z).
    let (ok, bad) = read("%Y-%m-%dT%H:%M:%S%z");
    assert_eq!(
        ok,
        [("Z-1".into(), at), ("Z-2".into(), at), ("Z-3".into(), at)]
    );
    assert_eq!(bad, [5]);
    let (ok, bad) = read("%Y-%m-%dT%H:%M:%S%:z");
    assert_eq!(
        ok,
        [("Z-1".into(), at), ("Z-2".into(), at), ("Z-4".into(), at)]
    );
    assert_eq!(bad, [4]);
}

#[test]
fn rows_without_a_usable_phone_are_counted_and_a_profile_without_a_phone_column_warns() {
    let with_phone = profile(
        "time_zone = \"America/New_York\"\n[columns]\nfiller_id = \"id\"\nstart = \"start\"\nphones = [\"Phone\"]",
    );
    assert!(with_phone.warnings().is_empty());
    let all = read_everything(
        &fixture("no_phone.csv"),
        &with_phone,
        options("test", "UTC", "US"),
    );
    assert!(
        all.bad.is_empty(),
        "empty or unusable phones are not bad rows"
    );
    assert_eq!(all.summary.appointments, 4);
    assert_eq!(all.summary.without_phone, 3);
    assert_eq!(all.summary.phone_columns, 1);

    let without = profile(
        "time_zone = \"America/New_York\"\n[columns]\nfiller_id = \"id\"\nstart = \"start\"",
    );
    let warnings = without.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("no phone column"), "{warnings:?}");
    let all = read_everything(
        &fixture("no_phone.csv"),
        &without,
        options("test", "UTC", "US"),
    );
    assert_eq!(
        (all.summary.without_phone, all.summary.phone_columns),
        (4, 0)
    );
}

fn code_profile(status_column: &str) -> CsvProfile {
    profile(&format!(
        r#"
        time_zone = "America/New_York"
        status_map = {{ booked = "booked", cancelled = "cancelled" }}
        opt_in_yes = ["y"]
        opt_in_no = ["n"]
        [columns]
        filler_id = "id"
        start = "start"
        given_name = "first"
        status = "{status_column}"
        opt_in = "opt_in"
        protection = "protected"
        "#
    ))
}

const CANARIES: [&str; 7] = [
    "Zebulonqx",
    "Yolandaqx",
    "Xavierqx",
    "Wilmaqx",
    "Vincentqx",
    "Ursulaqx",
    "736-9917",
];

#[test]
fn report_summary_names_unknown_code_values_and_the_allowed_ones_but_never_other_values() {
    let (text, all) = report_of("code_values.csv", &code_profile("status"), "UTC");
    assert_eq!(all.bad.len(), 4, "{:?}", all.bad);
    assert_eq!(
        text,
        "line,column,reason\n\
         3,status,value is not in status_map\n\
         4,status,value is not in status_map\n\
         5,protected,value is not a protection indicator (see protection_yes / protection_no)\n\
         6,status,value is not in status_map\n\
         summary,status,3 rows: value is not in status_map\n\
         summary,protected,1 row: value is not a protection indicator (see protection_yes / protection_no)\n\
         summary,status,\"unknown values (not in status_map: the rows were rejected): `Rescheduled` (2 rows), \
         1 row with a value that does not look like a code (not shown); allowed (status_map): `booked`, `cancelled`\"\n\
         summary,opt_in,\"unknown values (neither an opt-in nor an opt-out value: read as no signal): \
         `maybe` (1 row); allowed (opt_in_yes / opt_in_no): `y`, `n`\"\n\
         summary,protected,\"unknown values (not a protection indicator: the rows were rejected): `?` (1 row); \
         allowed (protection_yes / protection_no): `y`, `yes`, `1`, `true`, `n`, `no`, `0`, `false`\"\n"
    );
    for c in CANARIES {
        assert!(!text.contains(c), "{c} leaked into the report:\n{text}");
    }
}

#[test]
fn a_code_column_mapped_to_patient_data_never_lists_its_values() {
    // The status column mapped to the given names by mistake: every value is unknown and none
    // repeats, so none is listed.
    let (text, all) = report_of("code_values.csv", &code_profile("first"), "UTC");
    assert_eq!(all.bad.len(), 6);
    assert!(
        text.contains("6 rows with 6 different unknown values (not in status_map: the rows were rejected), not listed"),
        "{text}"
    );
    for c in CANARIES {
        assert!(!text.contains(c), "{c} leaked into the report:\n{text}");
    }
}

#[test]
fn an_opt_in_value_that_is_not_understood_alone_writes_a_report() {
    // Only the opt-in column has an unknown value: no bad row, but the report says so.
    let mut p = code_profile("status");
    p.columns.status = None;
    p.columns.protection = None;
    let (text, all) = report_of("code_values.csv", &p, "UTC");
    assert!(all.bad.is_empty());
    assert_eq!(
        text,
        "line,column,reason\n\
         summary,opt_in,\"unknown values (neither an opt-in nor an opt-out value: read as no signal): \
         `maybe` (2 rows); allowed (opt_in_yes / opt_in_no): `y`, `n`\"\n"
    );
}

#[test]
fn cancelled_row_without_a_start_is_a_status_change() {
    let p = profile(
        r#"
        time_zone = "America/New_York"
        status_map = { scheduled = "booked", cancelled = "cancelled", "no show" = "noshow" }
        [columns]
        filler_id = "Appt ID"
        placer_id = "Placer"
        start_date = "Appt Date"
        start_time = "Appt Time"
        status = "Status"
        phones = ["Phone"]
        "#,
    );
    let all = read_everything(
        &fixture("status_without_start.csv"),
        &p,
        options("test", "UTC", "US"),
    );
    let statuses: Vec<(&str, Option<&str>, AppointmentStatus, i64, &str)> = all
        .statuses
        .iter()
        .map(|s| {
            (
                s.key.id.as_str(),
                s.placer_id.as_deref(),
                s.status,
                s.version.seq,
                s.raw_ref.as_str(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (
                "S-1",
                Some("P-1"),
                AppointmentStatus::Cancelled,
                2,
                "status_without_start.csv:2"
            ),
            (
                "S-2",
                None,
                AppointmentStatus::Noshow,
                3,
                "status_without_start.csv:3"
            ),
            (
                "S-5",
                None,
                AppointmentStatus::Cancelled,
                6,
                "status_without_start.csv:6"
            ),
        ]
    );
    assert!(all.statuses.iter().all(|s| s.key.source == "test"));
    assert_eq!(all.summary.status_changes, 3);
    // A cancellation with its start stays a full event.
    assert_eq!(all.events.len(), 1);
    assert_eq!(all.events[0].appointment.key.id, "S-6");
    assert_eq!(
        all.events[0].appointment.status,
        AppointmentStatus::Cancelled
    );
    // Booked rows (by status or by default) without a start are bad, and only they say so.
    let bad: Vec<(u64, Option<&str>, &str)> = all
        .bad
        .iter()
        .map(|b| (b.line, b.column.as_deref(), b.reason.as_str()))
        .collect();
    let needs = "required value is empty: a booked appointment needs a start";
    assert_eq!(
        bad,
        [
            (4, Some("Appt Date"), needs),
            (5, Some("Appt Date"), needs),
            (8, Some("Appt Time"), needs),
        ]
    );
    assert_eq!(all.bad[0].filler_id.as_deref(), Some("S-3"));
}

#[test]
fn dst_gap_time_is_a_warning_or_rejected_per_profile() {
    let text = r#"
        datetime_format = "%m/%d/%Y %I:%M %p"
        time_zone = "America/New_York"
        [columns]
        filler_id = "id"
        start = "start"
        end = "end"
        "#;
    let p = profile(text);
    assert_eq!(p.dst_gap, DstGap::Warn);
    let (report, all) = report_of("dst_gap.csv", &p, "UTC");
    assert!(all.bad.is_empty());
    assert_eq!(all.events.len(), 3);
    // 02:30 does not exist on 8 March 2026 in New York: read as 03:30 EDT, with a warning.
    assert_eq!(all.events[0].appointment.start, ts("2026-03-08T07:30:00Z"));
    let warned: Vec<(u64, Option<&str>)> = all
        .warnings
        .iter()
        .map(|w| (w.line, w.column.as_deref()))
        .collect();
    assert_eq!(warned, [(2, Some("start")), (4, Some("end"))]);
    let reason = "warning: the local time does not exist in America/New_York (the clocks jump forward there at a daylight-saving change); read as the time after the jump (dst_gap = \"warn\")";
    assert!(all.warnings.iter().all(|w| w.reason == reason));
    assert!(
        report.contains(&format!("2,start,\"{}\"", reason.replace('"', "\"\""))),
        "{report}"
    );
    assert!(
        report.contains("summary,start,\"1 row: warning:"),
        "{report}"
    );
    assert!(
        !report.contains("02:30") && !report.contains("03/08"),
        "{report}"
    );

    let reject: CsvProfile = toml::from_str(&format!("dst_gap = \"reject\"\n{text}")).unwrap();
    reject.validate().unwrap();
    assert_eq!(reject.dst_gap, DstGap::Reject);
    let all = read_everything(
        &fixture("dst_gap.csv"),
        &reject,
        options("test", "UTC", "US"),
    );
    assert!(all.warnings.is_empty());
    let bad: Vec<(u64, Option<&str>)> = all
        .bad
        .iter()
        .map(|b| (b.line, b.column.as_deref()))
        .collect();
    assert_eq!(bad, [(2, Some("start")), (4, Some("end"))]);
    assert!(all.bad[0].reason.contains("dst_gap = \"reject\""));
    assert_eq!(all.events.len(), 1);
    assert!(toml::from_str::<CsvProfile>(&format!("dst_gap = \"ignore\"\n{text}")).is_err());
}
