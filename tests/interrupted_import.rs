//! An import whose process dies after committing some batches (kill -9, a crash, a failed store
//! write) never reaches `finish_import`. `medrelay status` must not show it as "0 ok, 0 rejected,
//! 0 applied" forever: it is incomplete, with the rows its committed batches hold.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};

#[tokio::test]
async fn an_import_killed_after_committing_rows_is_shown_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    // Generated rows (the benchmark's synthetic OpenEMR layout): two batches of 4,000 and a rest.
    let file = dir.path().join("export.csv");
    medrelay::commands::bench::generate(&file, 9_000).unwrap();
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T14:00:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some("openemr")).unwrap().clone();
    let (l, at) = (loaded.clone(), clock.now());
    let killed = tokio::spawn(async move {
        // The process dies right after its first batch is committed.
        import_csv(&service, &l, &c, &file, Some(at), |_| {
            panic!("killed after the first committed batch")
        })
        .await
    })
    .await;
    assert!(killed.is_err_and(|e| e.is_panic()));
    store.close().await;
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();

    // Within the bound, it may still be running in another process: said so, with what it committed.
    let (code, out) = cli(config, &["--now", "2026-11-29T14:03:00Z", "status"]).await;
    assert_eq!(code, 0, "{out}");
    let (line, note) = import_lines(&out, "export.csv");
    assert!(line.contains("4000 ok, 0 rejected, 4000 applied"), "{line}");
    assert!(note.contains("running"), "{note}");

    // Past the bound: incomplete, the committed rows counted, and what to do about it.
    let (code, out) = cli(config, &["--now", "2026-11-29T15:00:00Z", "status"]).await;
    assert_eq!(code, 0, "{out}");
    let (line, note) = import_lines(&out, "export.csv");
    assert!(line.contains("4000 ok, 0 rejected, 4000 applied"), "{line}");
    assert!(note.contains("INCOMPLETE"), "{note}");
    assert!(note.contains("1 committed batch"), "{note}");
    assert!(note.contains("import the file again"), "{note}");
    assert!(
        note.contains("absent appointments were not cancelled"),
        "{note}"
    );
    let (code, out) = cli(
        config,
        &["--now", "2026-11-29T15:00:00Z", "--json", "status"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let import = &v["last_imports"][0];
    assert_eq!(import["state"], "incomplete", "{import}");
    assert_eq!(import["rows_ok"], 4000, "{import}");
    assert_eq!(import["rows_applied"], 4000, "{import}");
    assert_eq!(import["batches"], 1, "{import}");
    assert!(import["finished_at"].is_null(), "{import}");

    // A finished import next to it is shown as before.
    let store = open_store(&loaded).await.unwrap();
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let sample = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let legacy = loaded.csv_connector(Some("legacy")).unwrap().clone();
    let done = import_csv(
        &service,
        &loaded,
        &legacy,
        &sample,
        Some(clock.now()),
        |_| {},
    )
    .await
    .unwrap();
    store.close().await;
    let (_, out) = cli(config, &["--now", "2026-11-29T15:00:00Z", "status"]).await;
    let (line, note) = import_lines(&out, "openemr_future_appointments");
    assert!(
        line.contains(&format!("{} ok", done.summary.rows_ok)),
        "{line}"
    );
    assert!(
        !note.contains("INCOMPLETE") && !note.contains("running"),
        "{out}"
    );
}

/// The summary line of the import of `file` in `status` output, and the line after it (where an
/// unfinished import says so).
fn import_lines<'a>(out: &'a str, file: &str) -> (&'a str, &'a str) {
    let lines: Vec<&str> = out.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(file))
        .unwrap_or_else(|| panic!("{file} not in {out}"));
    (lines[at], lines.get(at + 1).copied().unwrap_or(""))
}
