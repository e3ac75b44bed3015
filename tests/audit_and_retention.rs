//! The audit trail is tamper-evident (editing or deleting a record directly in the database makes
//! `medrelay audit verify` fail), and retention prunes patient data while the chain stays verifiable.
//!
//! Tampering is simulated as someone with write access to the database but without the
//! installation secret would do it: plain SQL on the file, the old unkeyed hash rule recomputed.

mod common;
use common::cli_with_config as cli;

use std::sync::Arc;

use medrelay::wiring::{build_service, import_csv, open_store};
use medrelay_pipeline::clock::{Clock, ManualClock};
use medrelay_pipeline::whatsapp::simulator::PatientAction;
use sqlx::Connection;

/// Imports the OpenEMR sample and runs the loop once so that every kind of record exists.
async fn populated(dir: &std::path::Path) -> String {
    let loaded = common::demo_config(dir, &[]);
    let file = common::copy_sample(dir, "samples/csv/openemr_future_appointments.csv");
    let store = open_store(&loaded).await.unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-29T14:00:00Z".parse().unwrap()));
    let service = build_service(&loaded, store.clone(), clock.clone()).unwrap();
    let c = loaded.csv_connector(Some("openemr")).unwrap().clone();
    import_csv(&service, &loaded, &c, &file, Some(clock.now()), |_| {})
        .await
        .unwrap();
    service
        .simulator
        .clone()
        .unwrap()
        .script("+12127365001", [PatientAction::Tap("confirm".into())]);
    while !service.tick(50).await.unwrap().is_idle() {}
    store.close().await;
    dir.join("medrelay.toml").to_str().unwrap().to_string()
}

async fn db(dir: &std::path::Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}", dir.join("medrelay.db").display());
    sqlx::SqliteConnection::connect(&url).await.unwrap()
}

#[tokio::test]
async fn editing_an_audit_record_breaks_verification() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");
    let mut conn = db(dir.path()).await;
    let edited = sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE id = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(edited.rows_affected(), 1);
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(out.contains("BROKEN at record 3"), "{out}");
}

#[tokio::test]
async fn deleting_an_audit_record_breaks_verification() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(total > 5);
    sqlx::query("DELETE FROM audit_log WHERE id = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--json"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    // Record 4 is the one missing (record 5's previous hash no longer matches either).
    assert!(out.contains("\"broken\":[4"), "{out}");
}

#[tokio::test]
async fn prune_removes_patient_data_and_keeps_the_chain_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    // Retention is measured from "now": the sample appointments end in December 2026, so a prune run
    // today keeps them. Apply it as of a year later through the store API.
    let loaded = medrelay::config::load(std::path::Path::new(&config)).unwrap();
    let store = open_store(&loaded).await.unwrap();
    let report = medrelay::commands::prune::prune_now(
        &store,
        &loaded,
        "2027-12-31T00:00:00Z".parse().unwrap(),
    )
    .await
    .unwrap();
    store.close().await;
    assert_eq!(report.appointments_scrubbed, 12);
    assert!(report.message_bodies >= 1);
    let mut conn = db(dir.path()).await;
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM appointments WHERE given_name IS NOT NULL OR phone_e164 IS NOT NULL OR family_name IS NOT NULL OR patient_ref IS NOT NULL OR reason IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, 0);
    let bodies: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE body IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(bodies, 0);
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&config, &["audit", "export"]).await;
    assert_eq!(code, 0);
    assert!(
        out.lines().any(|l| l.contains("\"action\":\"prune\"")),
        "{out}"
    );
}

async fn audit_count(conn: &mut sqlx::SqliteConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// The checkpoint files in `dir`, by name.
fn checkpoints(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn deleting_the_newest_audit_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    let total = audit_count(&mut conn).await;
    sqlx::query("DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(out.contains(&format!("BROKEN at record {total}")), "{out}");
    assert!(
        out.contains(&format!("record {total} was deleted")),
        "{out}"
    );
}

#[tokio::test]
async fn deleting_the_newest_ten_audit_records_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    let total = audit_count(&mut conn).await;
    assert!(total > 20, "{total}");
    sqlx::query("DELETE FROM audit_log WHERE id > ?")
        .bind(total - 10)
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    let first = total - 9;
    assert!(
        out.contains(&format!("records {first} to {total} were deleted")),
        "{out}"
    );
    // The service goes on writing (a prune is audited): the gap stays visible.
    let (code, out) = cli(&config, &["prune"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(
        out.contains(&format!("records {first} to {total} were deleted")),
        "{out}"
    );
}

#[tokio::test]
async fn deleting_every_audit_record_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    let total = audit_count(&mut conn).await;
    sqlx::query("DELETE FROM audit_log")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(!out.contains("intact"), "{out}");
    assert!(
        out.contains(&format!("records 1 to {total} were deleted")),
        "{out}"
    );
}

#[tokio::test]
async fn truncating_the_trail_and_its_head_is_detected_by_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    // `audit export` leaves a signed checkpoint next to the database.
    let (code, out) = cli(&config, &["audit", "export"]).await;
    assert_eq!(code, 0, "{out}");
    let written = checkpoints(&dir.path().join("audit-checkpoints"));
    assert_eq!(written.len(), 1, "{written:?}");
    let mut conn = db(dir.path()).await;
    let total = audit_count(&mut conn).await;
    sqlx::query("DELETE FROM audit_log")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_head")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    // The strongest forgery without the key: make the database look freshly created, with the
    // empty unsealed head that migration 0005 writes (the next open seals it). Inside the database
    // nothing is left to contradict it; the checkpoint outside it does.
    sqlx::query(
        "INSERT INTO audit_head (id, records, last_hash, legacy_records, mac) VALUES (1, 0, 'genesis', 0, NULL)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(
        out.contains(&format!("records 1 to {total} were deleted")),
        "{out}"
    );
    assert!(out.contains("checkpoint"), "{out}");
    let file = written[0].to_str().unwrap();
    let (code, out) = cli(&config, &["audit", "verify", "--checkpoint", file]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
}

#[tokio::test]
async fn a_chain_recomputed_without_the_key_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    // Edit a record's detail, then recompute every hash with the old, unkeyed rule (SHA-256 over
    // the previous hash and the fields), and point the head at the new last hash.
    sqlx::query("UPDATE audit_log SET detail = '{\"applied\":0}' WHERE id = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let rows: Vec<(i64, i64, String, String, String, String)> =
        sqlx::query_as("SELECT id, at, actor, action, subject, detail FROM audit_log ORDER BY id")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut prev = "genesis".to_string();
    for (id, at, actor, action, subject, detail) in rows {
        let mut bytes = Vec::new();
        for part in [
            prev.as_str(),
            &at.to_string(),
            &actor,
            &action,
            &subject,
            &detail,
        ] {
            bytes.extend_from_slice(part.as_bytes());
            bytes.push(0x1f);
        }
        let hash = medrelay::wiring::sha256_hex(&bytes);
        sqlx::query("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?")
            .bind(&prev)
            .bind(&hash)
            .bind(id)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET last_hash = ?")
        .bind(&prev)
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(out.contains("BROKEN at record 1"), "{out}");
    assert!(out.contains("does not match its hash"), "{out}");
}

#[tokio::test]
async fn an_edited_or_foreign_checkpoint_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let (code, _) = cli(&config, &["audit", "export"]).await;
    assert_eq!(code, 0);
    let file = checkpoints(&dir.path().join("audit-checkpoints")).remove(0);
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 checkpoint"), "{out}");
    // Claiming fewer records (to cover a truncation) breaks the checkpoint's signature.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    v["records"] = serde_json::json!(v["records"].as_i64().unwrap() - 3);
    std::fs::write(&file, v.to_string()).unwrap();
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, medrelay::exit::AUDIT_BROKEN, "{out}");
    assert!(out.contains("not signed"), "{out}");
}

#[tokio::test]
async fn run_writes_an_audit_checkpoint_to_the_configured_folder() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[audit]\ncheckpoint_dir = \"offsite/checkpoints\"\n");
    std::fs::write(&config, text).unwrap();
    let (code, out) = cli(&config, &["--now", "2026-11-29T14:00:00Z", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    let written = checkpoints(&dir.path().join("offsite/checkpoints"));
    assert_eq!(written.len(), 1, "{written:?}");
    // Daily, not per run: a cron-style `run --once` a minute later adds none.
    let (code, out) = cli(&config, &["--now", "2026-11-29T14:01:00Z", "run", "--once"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        checkpoints(&dir.path().join("offsite/checkpoints")),
        written
    );
    let (code, out) = cli(&config, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 checkpoint"), "{out}");
}

/// Issue 16: a trail whose head was altered gets no checkpoint and one `audit_broken` alert,
/// not one a day (the daily checkpoint finds it again each day).
#[tokio::test]
async fn an_altered_audit_head_raises_audit_broken_once_not_every_day() {
    let dir = tempfile::tempdir().unwrap();
    let config = populated(dir.path()).await;
    let mut conn = db(dir.path()).await;
    sqlx::query("UPDATE audit_head SET records = records - 1")
        .execute(&mut conn)
        .await
        .unwrap();
    for day in [
        "2026-11-29T14:00:00Z",
        "2026-11-30T14:01:00Z",
        "2026-12-01T14:02:00Z",
    ] {
        let (code, out) = cli(&config, &["--now", day, "run", "--once"]).await;
        assert_eq!(code, 0, "{out}");
    }
    let alerts: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT detail, resolved_at FROM alerts WHERE kind = 'audit_broken'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0].0.starts_with("audit trail:"), "{alerts:?}");
    assert_eq!(alerts[0].1, None, "still open: the trail is still broken");
    assert!(checkpoints(&dir.path().join("audit-checkpoints")).is_empty());
}
