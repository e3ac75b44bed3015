//! The database schema against the migrations this binary embeds, read without applying any
//! (`medrelay db status`); `Store::open` applies them (`medrelay db migrate`, or any command).

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, PgConnection};

use super::{StoreLocation, StoreResult};

/// One migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Migration {
    pub version: i64,
    pub description: String,
}

/// Where a database stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SchemaStatus {
    /// `sqlite` or `postgres`.
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

/// One applied-migration row: version, description, success.
type AppliedRow = (i64, String, bool);

/// Reads the schema state of the store at `location` without changing it.
pub async fn schema_status(location: &StoreLocation) -> StoreResult<SchemaStatus> {
    let (backend, known) = match location {
        StoreLocation::Sqlite(_) => ("sqlite", known(&sqlx::migrate!("./migrations/sqlite"))),
        StoreLocation::Postgres(_) => ("postgres", known(&sqlx::migrate!("./migrations/postgres"))),
    };
    let mut status = SchemaStatus {
        backend,
        exists: true,
        version: 0,
        applied: 0,
        pending: Vec::new(),
        unknown: Vec::new(),
        failed: Vec::new(),
    };
    let rows: Vec<AppliedRow> = match location {
        StoreLocation::Sqlite(path) => {
            status.exists = path.exists();
            if !status.exists {
                status.pending = known;
                return Ok(status);
            }
            sqlite_applied(path).await?
        }
        StoreLocation::Postgres(url) => postgres_applied(url).await?,
    };
    let mut applied = Vec::new();
    for (version, description, success) in rows {
        let m = Migration {
            version,
            description,
        };
        if success {
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

fn known(migrator: &sqlx::migrate::Migrator) -> Vec<Migration> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| Migration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect()
}

async fn sqlite_applied(path: &Path) -> StoreResult<Vec<AppliedRow>> {
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
        sqlx::query_as(
            "SELECT version, description, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&pool)
        .await?
    } else {
        Vec::new()
    };
    pool.close().await;
    Ok(rows)
}

async fn postgres_applied(url: &str) -> StoreResult<Vec<AppliedRow>> {
    let mut c = PgConnection::connect_with(&PgConnectOptions::from_str(url)?).await?;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::TEXT")
        .fetch_one(&mut c)
        .await?;
    let rows = if table.is_some() {
        sqlx::query_as(
            "SELECT version, description, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&mut c)
        .await?
    } else {
        Vec::new()
    };
    c.close().await?;
    Ok(rows)
}
