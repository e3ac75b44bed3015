//! The database schema against the migrations this binary embeds, read without applying any
//! (`medrelay db status`); `Store::open` applies them (`medrelay db migrate`, or any command).

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use super::StoreResult;

/// One migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub version: i64,
    pub description: String,
}

/// Where a database stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaStatus {
    /// `sqlite` (PostgreSQL comes with issue 12).
    pub backend: &'static str,
    /// Whether the database exists at all (a new installation has none until first use).
    pub exists: bool,
    /// The newest migration applied (0: none).
    pub version: i64,
    pub applied: usize,
    /// Embedded migrations not applied yet, oldest first.
    pub pending: Vec<Migration>,
    /// Applied migrations this binary does not know (the database was migrated by a newer
    /// medrelay: run that one, or restore).
    pub unknown: Vec<Migration>,
    /// Migrations recorded as failed (`success = 0`).
    pub failed: Vec<Migration>,
}

/// Reads the schema state of the SQLite database at `path` without changing it.
pub async fn schema_status(path: &Path) -> StoreResult<SchemaStatus> {
    let embedded = sqlx::migrate!("./migrations/sqlite");
    let known: Vec<Migration> = embedded
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect();
    let mut status = SchemaStatus {
        backend: "sqlite",
        exists: path.exists(),
        version: 0,
        applied: 0,
        pending: Vec::new(),
        unknown: Vec::new(),
        failed: Vec::new(),
    };
    if !status.exists {
        status.pending = known;
        return Ok(status);
    }
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let table: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&pool)
    .await?;
    let rows = if table.is_some() {
        sqlx::query("SELECT version, description, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await?
    } else {
        Vec::new()
    };
    pool.close().await;
    let mut applied = Vec::new();
    for r in &rows {
        let m = Migration {
            version: r.get("version"),
            description: r.get("description"),
        };
        if r.get::<bool, _>("success") {
            if !known.iter().any(|k| k.version == m.version) {
                status.unknown.push(m.clone());
            }
            applied.push(m);
        } else {
            status.failed.push(m);
        }
    }
    status.applied = applied.len();
    status.version = applied.iter().map(|m| m.version).max().unwrap_or(0);
    status.pending = known
        .into_iter()
        .filter(|k| !applied.iter().any(|a| a.version == k.version))
        .collect();
    Ok(status)
}
