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
