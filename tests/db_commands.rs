//! `medrelay db status|migrate` (issue 12's operations, SQLite): the schema against the
//! migrations this binary embeds, read without changing anything; migrating on purpose; and a
//! database migrated by a newer medrelay is reported, not silently used.

mod common;
use common::cli_with_config as cli;

use sqlx::Connection;

fn embedded() -> usize {
    std::fs::read_dir(common::root().join("pipeline/migrations/sqlite"))
        .unwrap()
        .count()
}

#[tokio::test]
async fn db_status_reads_the_schema_without_changing_it_and_migrate_applies_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    common::demo_config(dir.path(), &[]);
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    let n = embedded();

    let (code, out) = cli(config, &["db", "status"]).await;
    assert_eq!(code, 1, "not current: {out}");
    assert!(
        out.starts_with("backend sqlite, no database yet, schema version 0"),
        "{out}"
    );
    assert_eq!(out.matches("  pending: ").count(), n, "{out}");
    assert!(
        !dir.path().join("medrelay.db").exists(),
        "status created nothing"
    );

    let (code, out) = cli(config, &["db", "migrate"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(&format!("{n} migration(s) applied")),
        "{out}"
    );
    assert!(out.contains("current"), "{out}");

    let (code, out) = cli(config, &["--json", "db", "status"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["applied"], n);
    assert_eq!(v["pending"].as_array().unwrap().len(), 0);
    assert_eq!(v["backend"], "sqlite");

    // A newer medrelay migrated this database: this binary says so and exits 1.
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.path().join("medrelay.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99990101, 'from the future', CURRENT_TIMESTAMP, 1, x'00', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, out) = cli(config, &["db", "status"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "unknown to this binary (migrated by a newer medrelay): 99990101 from the future"
        ),
        "{out}"
    );
}

/// `db copy` (issue 12): an SQLite installation that has imported, planned, sent and audited is
/// moved to a new PostgreSQL schema; the target's `status --json` (through a configuration that
/// names the server) equals the source's, its audit trail verifies, and the service goes on
/// there: its ids continue after the copied ones. Needs `MEDRELAY_TEST_POSTGRES`; skipped (and
/// says so) without it. `.ci/run` sets it.
#[ignore = "PostgreSQL: set MEDRELAY_TEST_POSTGRES and run with --include-ignored (.ci/run does)"]
#[tokio::test]
async fn db_copy_moves_an_installation_to_postgres_and_the_target_verifies() {
    use medrelay_pipeline::clock::{Clock, ManualClock};
    use medrelay_pipeline::store::{StoreLocation, testing};
    use std::sync::Arc;
    assert!(
        testing::postgres_requested(),
        "this test needs {} (a PostgreSQL server)",
        testing::TEST_POSTGRES_ENV
    );
    let dir = tempfile::tempdir().unwrap();
    let loaded = common::demo_config(dir.path(), &[]);
    let file = common::copy_sample(dir.path(), "samples/csv/openemr_future_appointments.csv");
    let clock = Arc::new(ManualClock::new("2026-11-29T13:30:00Z".parse().unwrap()));
    let (store, service, _) =
        common::service_with_import(&loaded, clock.clone(), "openemr", &file).await;
    for _ in 0..5 {
        service.tick(100).await.unwrap();
    }
    let sent = service.simulator.as_ref().unwrap().sent().len();
    assert!(sent > 0, "the source installation sent messages");
    store.close().await;

    let StoreLocation::Postgres(url) = testing::location(&dir.path().join("unused.db"))
        .await
        .unwrap()
    else {
        unreachable!("postgres requested")
    };
    let config = dir.path().join("medrelay.toml");
    let config = config.to_str().unwrap();
    let from = format!("sqlite://{}", dir.path().join("medrelay.db").display());
    // The target URL through the environment, as an operator keeps a password out of argv.
    unsafe { std::env::set_var("MEDRELAY_COPY_TARGET", &url) };
    let (code, out) = cli(
        config,
        &[
            "db",
            "copy",
            "--from",
            &from,
            "--to",
            "env:MEDRELAY_COPY_TARGET",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("status on the target equals the source's"),
        "{out}"
    );
    assert!(out.contains("audit trail verifies on the target"), "{out}");

    // Independently: status --json through a configuration naming the server equals the
    // SQLite one's.
    let (_, source_status) = cli(config, &["--json", "status"]).await;
    let text = std::fs::read_to_string(dir.path().join("medrelay.toml")).unwrap();
    let pg_config = dir.path().join("pg.toml");
    unsafe { std::env::set_var("MEDRELAY_PG_URL_FOR_COPY_TEST", &url) };
    std::fs::write(
        &pg_config,
        text.replacen(
            "[store]\n",
            "[store]\nurl_env = \"MEDRELAY_PG_URL_FOR_COPY_TEST\"\n",
            1,
        ),
    )
    .unwrap();
    let pg_config = pg_config.to_str().unwrap();
    let (code, target_status) = cli(pg_config, &["--json", "status"]).await;
    assert_eq!(code, 0, "{target_status}");
    let strip_time = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        v.as_object_mut().unwrap().remove("now");
        v
    };
    assert_eq!(strip_time(&source_status), strip_time(&target_status));
    let (code, out) = cli(pg_config, &["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");

    // A second copy into the same (now used) target is refused.
    let (code, out) = cli(
        config,
        &[
            "db",
            "copy",
            "--from",
            &from,
            "--to",
            "env:MEDRELAY_COPY_TARGET",
        ],
    )
    .await;
    assert_ne!(code, 0, "{out}");

    // The service continues on PostgreSQL: new rows get ids after the copied ones.
    let pg_loaded = medrelay::config::load(std::path::Path::new(pg_config)).unwrap();
    let store = medrelay::wiring::open_store(&pg_loaded).await.unwrap();
    clock.advance(jiff::SignedDuration::from_hours(30));
    let service =
        medrelay::wiring::build_service(&pg_loaded, store.clone(), clock.clone()).unwrap();
    for _ in 0..5 {
        service.tick(100).await.unwrap();
    }
    store
        .audit(
            clock.now(),
            "staff",
            "note",
            "after-copy",
            serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(store.audit_verify().await.unwrap().broken, None);
    store.close().await;
}
