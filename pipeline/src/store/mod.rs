//! The durable store. All SQL lives under this module, so that a PostgreSQL backend is an addition
//! (a second implementation of these methods with its own migrations), not a rewrite.
//!
//! SQLite is opened in WAL mode with `synchronous = FULL` (a committed batch survives power loss: the
//! promise behind every ACK). Every write goes through the one writer task ([`writer`]), which
//! commits the work of producers waiting at the same time in one group; reads use a pool of
//! read-only connections, which WAL never blocks.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection, SqlitePool};

use crate::keys::Keys;

pub mod alerts;
pub mod audit;
pub mod config_state;
pub mod consent;
pub mod holds;
pub mod inbound;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod quarantine;
pub mod report;
pub mod retention;
pub mod schema;
pub mod status;
pub mod subscriptions;
pub mod watch;
pub mod writeback;
mod writer;

pub(crate) use writer::WriteTx;
use writer::Writer;

/// A store failure. Carries database error text (table and column names), never row values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// From the bulk-import path, which runs prepared statements on the raw SQLite handle.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A write could not be committed (the database writer's report; no row values).
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Read-only connections.
    pool: SqlitePool,
    writer: Writer,
    keys: Keys,
}

/// Seconds since the epoch, the storage form of an instant.
pub(crate) fn secs(t: Timestamp) -> i64 {
    t.as_second()
}

/// Back from storage.
pub(crate) fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies the embedded migrations.
    pub async fn open(path: &Path, keys: Keys) -> StoreResult<Store> {
        let base = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768");
        let write_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Checkpoint less often (every ~32 MB of WAL) so bulk imports do not copy pages back
            // to the database file after every few batches.
            .pragma("wal_autocheckpoint", "8192");
        let mut conn = SqliteConnection::connect_with(&write_options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
        // Writes through a reader fail loudly ("readonly database") instead of queueing behind
        // the writer in SQLite's busy handler.
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.read_only(true))
            .await?;
        let writer = Writer::spawn(conn, write_options);
        let store = Store { pool, writer, keys };
        audit::seal_after_upgrade(&store).await?;
        Ok(store)
    }

    /// The derived keys (contact hashes, button signatures, the audit chain).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The read-only pool, for this module's submodules only.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Waits for the writing connection: everything done on it until `commit()` is kept (or
    /// dropped) together, and `commit()` returns once it is durable.
    pub(crate) async fn write_tx(&self) -> StoreResult<WriteTx> {
        self.writer.begin().await
    }

    /// A separate writing pool on the same file, for tests that play someone editing the database
    /// behind medrelay's back.
    #[cfg(test)]
    pub(crate) async fn tamper_pool(&self) -> SqlitePool {
        let options = (*self.pool.connect_options()).clone().read_only(false);
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("a second connection to the test database")
    }

    /// Closes the readers, then the writer (the last connection checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}
