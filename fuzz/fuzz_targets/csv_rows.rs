//! CSV row mapping: arbitrary bytes read as an export through the two sample profiles (UTF-8 comma
//! with US dates; Windows-1252 semicolon with day-first dates).
//!
//! `open` reads a file (the reader streams it), so each input is written to one scratch file per
//! fuzzing process. Properties: no panic; every record ends as an event or a bad row; bad rows come
//! in line order; the reader never claims more bytes than the file has.

#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use medrelay_connector_csv::{CsvProfile, ImportOptions, RowResult, open};

static PROFILES: LazyLock<Vec<(CsvProfile, ImportOptions)>> = LazyLock::new(|| {
    let text = include_str!("../../samples/profiles.toml");
    let profiles: BTreeMap<String, CsvProfile> =
        toml::from_str(text).expect("the sample profiles parse");
    let as_of = jiff::Timestamp::from_second(1_796_000_000).expect("a valid instant");
    let options = |site: &str, zone: &str, region: &str| ImportOptions {
        source: "fuzz".into(),
        site: site.into(),
        site_time_zone: zone.into(),
        default_region: region.into(),
        as_of,
    };
    vec![
        (
            profiles["openemr"].clone(),
            options("newyork", "America/New_York", "US"),
        ),
        (
            profiles["clinica"].clone(),
            options("saopaulo", "America/Sao_Paulo", "BR"),
        ),
    ]
});

static SCRATCH: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("medrelay-fuzz-csv-{}.csv", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*SCRATCH, data).expect("the scratch file is writable");
    for (profile, options) in PROFILES.iter() {
        // A file-level refusal (no header, a mapped header missing) is an answer, not a crash.
        let Ok(rows) = open(&SCRATCH, profile, options.clone()) else {
            continue;
        };
        let total = rows.total_bytes();
        let mut last_bad_line = 0;
        let mut rows = rows;
        while let Some(row) = rows.next() {
            if let RowResult::Bad(bad) = row {
                // Non-decreasing, not increasing: a lone CR ends a record, so two records can
                // share a line of the report (counted by LF).
                assert!(bad.line >= last_bad_line, "bad rows out of line order");
                last_bad_line = bad.line;
            }
            assert!(rows.bytes_read() <= total, "read past the end of the file");
        }
    }
});
