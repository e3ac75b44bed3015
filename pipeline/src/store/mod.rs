//! The durable store. All SQL lives under this module, so that a PostgreSQL backend is an addition
//! (a second implementation of these methods with its own migrations), not a rewrite.
//!
//! SQLite is opened in WAL mode with `synchronous = FULL` (a committed batch survives power loss: the
//! promise behind every ACK) and a busy timeout; read-then-write transactions use `BEGIN IMMEDIATE`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

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
    #[error("stored data is inconsistent: {0}")]
    Inconsistent(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
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
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768")
            // Checkpoint less often (every ~32 MB of WAL) so bulk imports do not copy pages back
            // to the database file after every few batches.
            .pragma("wal_autocheckpoint", "8192");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let store = Store { pool, keys };
        audit::seal_after_upgrade(&store).await?;
        Ok(store)
    }

    /// The derived keys (contact hashes, button signatures, the audit chain).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The pool, for this module's submodules only.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction that takes the write lock at once (no SQLITE_BUSY on upgrade).
    pub(crate) async fn write_tx(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Closes the pool (checkpointing the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
