//! Opening a store for a test on the backend the test run asks for, so that one suite checks
//! both backends (a conformance suite, not two copies).
//!
//! With `MEDRELAY_TEST_POSTGRES=postgres://user@host:port/database` set, every test that opens
//! its store through [`open`] runs against that server, in a schema of its own (created empty,
//! left behind for inspection: use a throwaway database). Unset, the test gets SQLite at the path
//! it names.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, PgConnection};

use super::{Store, StoreLocation, StoreResult};
use crate::keys::Keys;

/// The environment variable naming the PostgreSQL server for tests.
pub const TEST_POSTGRES_ENV: &str = "MEDRELAY_TEST_POSTGRES";

/// Opens a fresh store for a test: SQLite at `path`, or a new PostgreSQL schema when
/// [`TEST_POSTGRES_ENV`] is set.
pub async fn open(path: &Path, keys: Keys) -> StoreResult<Store> {
    match fresh_postgres_url().await? {
        Some(url) => Store::connect(&StoreLocation::Postgres(url), keys).await,
        None => Store::open(path, keys).await,
    }
}

/// The location a test's configuration should name: `sqlite_path`, or a URL of a new, empty
/// PostgreSQL schema when [`TEST_POSTGRES_ENV`] is set.
pub async fn location(sqlite_path: &Path) -> StoreResult<StoreLocation> {
    Ok(match fresh_postgres_url().await? {
        Some(url) => StoreLocation::Postgres(url),
        None => StoreLocation::Sqlite(sqlite_path.to_owned()),
    })
}

/// Whether this test run uses PostgreSQL.
pub fn postgres_requested() -> bool {
    std::env::var_os(TEST_POSTGRES_ENV).is_some_and(|v| !v.is_empty())
}

/// A URL for a fresh schema on the server named by [`TEST_POSTGRES_ENV`], if it is set.
async fn fresh_postgres_url() -> StoreResult<Option<String>> {
    match std::env::var(TEST_POSTGRES_ENV) {
        Ok(base) if !base.is_empty() => Ok(Some(fresh_schema_url(&base).await?)),
        _ => Ok(None),
    }
}

/// Creates a schema on the server at `base`, named after this process, a counter and the
/// clock, and returns a URL whose connections use it (tests and benchmarks).
pub async fn fresh_schema_url(base: &str) -> StoreResult<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let schema = format!(
        "t_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        jiff::Timestamp::now().as_microsecond() % 1_000_000_000
    );
    let mut c = PgConnection::connect(base).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await?;
    c.close().await?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}
