//! The durable store. All SQL lives under this module, so that a PostgreSQL backend is an addition
//! (a second implementation of these methods with its own migrations), not a rewrite.
//!
//! SQLite is opened in WAL mode with `synchronous = FULL` (a committed batch survives power loss: the
//! promise behind every ACK). Every write goes through the one writer task ([`writer`]), which
//! commits the work of producers waiting at the same time in one group; reads use a pool of
//! read-only connections, which WAL never blocks.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::SqliteRow;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Decode, Postgres, Row, Sqlite, Type};
use sqlx::{Connection, PgConnection, PgPool, SqliteConnection, SqlitePool};

use crate::keys::Keys;

pub mod alerts;
pub mod audit;
pub mod config_state;
pub mod consent;
pub mod copy;
pub mod holds;
pub mod inbound;
pub mod inbox;
pub mod ingest;
mod ingest_pg;
mod lease;
pub mod limits;
pub mod metrics;
pub mod outbox;
pub mod quarantine;
pub mod report;
pub mod retention;
pub mod schema;
pub mod slots;
pub mod status;
pub mod subscriptions;
pub mod survey;
pub mod testing;
pub mod users;
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

/// Where an installation's database lives: an SQLite file (the embedded default) or a
/// PostgreSQL server (several instances sharing one database).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    /// A `postgres://` URL. Never logged: it may carry a password.
    Postgres(String),
}

impl StoreLocation {
    /// `postgres://` and `postgresql://` URLs name a server; anything else is an SQLite path
    /// (`sqlite://` stripped).
    pub fn parse(s: &str) -> StoreLocation {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            StoreLocation::Postgres(s.to_owned())
        } else {
            StoreLocation::Sqlite(PathBuf::from(s.strip_prefix("sqlite://").unwrap_or(s)))
        }
    }

    /// The backend's name, for status output.
    pub fn backend(&self) -> &'static str {
        match self {
            StoreLocation::Sqlite(_) => "sqlite",
            StoreLocation::Postgres(_) => "postgres",
        }
    }
}

/// The backend behind a [`Store`]. Every store method runs the same domain logic against
/// either; where the SQL differs (JSON functions, scalar `max`, locking) the method says so
/// explicitly, through the `pg` flag of [`on_db!`] and [`on_tx!`].
#[derive(Clone, Debug)]
pub(crate) enum Db {
    /// Read-only pool plus the one writer task.
    Sqlite { pool: SqlitePool, writer: Writer },
    /// The pool, and this instance's outbound lease (see [`lease`]).
    Postgres {
        pool: PgPool,
        lease: lease::SharedLease,
    },
}

/// Handle to the database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    keys: Keys,
}

/// A write transaction on either backend; dropped without [`Tx::commit`], it is rolled back.
#[derive(Debug)]
pub(crate) enum Tx {
    Sqlite(WriteTx),
    /// A read transaction on SQLite's read-only pool (one snapshot for several queries).
    SqliteRead(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// The connection of a [`Tx`], typed per backend (see [`on_tx!`]).
pub(crate) enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

impl Tx {
    /// The connection, to run one statement (or a few) on.
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(t) => Conn::Sqlite(t),
            Tx::SqliteRead(t) => Conn::Sqlite(t),
            Tx::Postgres(t) => Conn::Postgres(t),
        }
    }

    /// Commits; returns once the work is durable.
    pub(crate) async fn commit(self) -> StoreResult<()> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::SqliteRead(t) => Ok(t.commit().await?),
            Tx::Postgres(t) => Ok(t.commit().await?),
        }
    }
}

/// Runs `$body` against the read pool of whichever backend `$store` has: `$db` is the pool
/// (`&SqlitePool` or `&PgPool`), `$pg` (optional) whether it is PostgreSQL. The body is compiled
/// once per backend, so the same SQL text serves both where it can (placeholders are `$1`...).
macro_rules! on_db {
    ($store:expr, |$db:ident, $pg:ident| $body:expr) => {
        match $store.db() {
            $crate::store::Db::Sqlite { pool: $db, .. } => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::store::Db::Postgres { pool: $db, .. } => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
    ($store:expr, |$db:ident| $body:expr) => {
        on_db!($store, |$db, _pg| $body)
    };
}

/// Runs `$body` on the connection of the [`Tx`] `$tx`: `$c` is `&mut SqliteConnection` or
/// `&mut PgConnection`, `$pg` (optional) whether it is PostgreSQL. See [`on_db!`].
macro_rules! on_tx {
    ($tx:expr, |$c:ident, $pg:ident| $body:expr) => {
        match $tx.conn() {
            $crate::store::Conn::Sqlite($c) => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::store::Conn::Postgres($c) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
    ($tx:expr, |$c:ident| $body:expr) => {
        on_tx!($tx, |$c, _pg| $body)
    };
}
pub(crate) use {on_db, on_tx};

/// A row from either backend, read by column name or index like a sqlx row (`row.get("id")`).
#[derive(Debug)]
pub(crate) enum StoredRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

/// A value both backends decode (i64, String, &str, bool, `Vec<u8>`, f64, their `Option`s...).
pub(crate) trait Column<'r>:
    Decode<'r, Sqlite> + Type<Sqlite> + Decode<'r, Postgres> + Type<Postgres>
{
}
impl<'r, T> Column<'r> for T where
    T: Decode<'r, Sqlite> + Type<Sqlite> + Decode<'r, Postgres> + Type<Postgres>
{
}

/// A column name or position on both backends.
pub(crate) trait ColumnRef: ColumnIndex<SqliteRow> + ColumnIndex<PgRow> {}
impl<I: ColumnIndex<SqliteRow> + ColumnIndex<PgRow>> ColumnRef for I {}

impl StoredRow {
    /// The column's value; panics like `sqlx::Row::get` on a type the schema cannot hold (a bug,
    /// caught by the tests that run on both backends). The message names the column, not the value.
    pub(crate) fn get<'r, T: Column<'r>, I: ColumnRef>(&'r self, index: I) -> T {
        match self {
            StoredRow::Sqlite(r) => r.get(index),
            StoredRow::Postgres(r) => r.get(index),
        }
    }
}

impl From<SqliteRow> for StoredRow {
    fn from(r: SqliteRow) -> Self {
        StoredRow::Sqlite(r)
    }
}

impl From<PgRow> for StoredRow {
    fn from(r: PgRow) -> Self {
        StoredRow::Postgres(r)
    }
}

/// The two-argument maximum: SQLite's scalar `max(a, b)`, PostgreSQL's `GREATEST(a, b)`.
pub(crate) fn greatest(pg: bool) -> &'static str {
    if pg { "GREATEST" } else { "MAX" }
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
    /// Opens (creating if needed) the store at `location` and applies the embedded migrations.
    pub async fn connect(location: &StoreLocation, keys: Keys) -> StoreResult<Store> {
        match location {
            StoreLocation::Sqlite(path) => Store::open(path, keys).await,
            StoreLocation::Postgres(url) => Store::open_postgres(url, keys).await,
        }
    }

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
        let store = Store {
            db: Db::Sqlite { pool, writer },
            keys,
        };
        audit::seal_after_upgrade(&store).await?;
        Ok(store)
    }

    /// Connects to the PostgreSQL database at `url` and applies the embedded migrations (under
    /// the migrator's advisory lock, so instances starting together migrate once).
    async fn open_postgres(url: &str, keys: Keys) -> StoreResult<Store> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let store = Store {
            db: Db::Postgres {
                pool,
                lease: Default::default(),
            },
            keys,
        };
        audit::seal_after_upgrade(&store).await?;
        Ok(store)
    }

    /// The backend, for [`on_db!`].
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match &self.db {
            Db::Sqlite { .. } => "sqlite",
            Db::Postgres { .. } => "postgres",
        }
    }

    /// The derived keys (contact hashes, button signatures, the audit chain).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Starts a write transaction. SQLite: waits for the writing connection (everything done
    /// on it until `commit()` is kept or dropped together, and `commit()` returns once the group
    /// holding it is durable). PostgreSQL: a READ COMMITTED transaction from the pool.
    pub(crate) async fn write_tx(&self) -> StoreResult<Tx> {
        match &self.db {
            Db::Sqlite { writer, .. } => Ok(Tx::Sqlite(writer.begin().await?)),
            Db::Postgres { pool, .. } => Ok(Tx::Postgres(pool.begin().await?)),
        }
    }

    /// A write transaction for a large batch: on SQLite a transaction of its own, outside the
    /// writer's group commit and its savepoints ([`writer::Writer::begin_alone`]); on PostgreSQL
    /// the same as [`Store::write_tx`].
    pub(crate) async fn write_tx_alone(&self) -> StoreResult<Tx> {
        match &self.db {
            Db::Sqlite { writer, .. } => Ok(Tx::Sqlite(writer.begin_alone().await?)),
            Db::Postgres { pool, .. } => Ok(Tx::Postgres(pool.begin().await?)),
        }
    }

    /// A read-only transaction: several queries see one snapshot (SQLite: a deferred
    /// transaction on a reader; PostgreSQL: REPEATABLE READ, READ ONLY).
    pub(crate) async fn read_tx(&self) -> StoreResult<Tx> {
        match &self.db {
            Db::Sqlite { pool, .. } => Ok(Tx::SqliteRead(pool.begin().await?)),
            Db::Postgres { pool, .. } => {
                let mut t = pool.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *t)
                    .await?;
                Ok(Tx::Postgres(t))
            }
        }
    }

    /// Write groups this process committed (SQLite's group commit; PostgreSQL: 0, each
    /// transaction commits on its own).
    pub(crate) fn commit_groups(&self) -> u64 {
        match &self.db {
            Db::Sqlite { writer, .. } => writer.commits(),
            Db::Postgres { .. } => 0,
        }
    }

    /// The SQLite writer, for its own tests.
    #[cfg(test)]
    pub(crate) fn sqlite_writer(&self) -> &Writer {
        match &self.db {
            Db::Sqlite { writer, .. } => writer,
            Db::Postgres { .. } => panic!("sqlite_writer is for SQLite tests"),
        }
    }

    /// The read-only SQLite pool, for SQLite-specific tests.
    #[cfg(test)]
    pub(crate) fn sqlite_pool(&self) -> &SqlitePool {
        match &self.db {
            Db::Sqlite { pool, .. } => pool,
            Db::Postgres { .. } => panic!("sqlite_pool is for SQLite tests"),
        }
    }

    /// A separate writing pool on the same file, for tests that play someone editing the database
    /// behind medrelay's back.
    #[cfg(test)]
    pub(crate) async fn tamper_pool(&self) -> SqlitePool {
        let Db::Sqlite { pool, .. } = &self.db else {
            panic!("tamper_pool is for SQLite tests");
        };
        let options = (*pool.connect_options()).clone().read_only(false);
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("a second connection to the test database")
    }

    /// Closes the readers, then the writer (the last connection checkpoints the WAL).
    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { pool, writer } => {
                pool.close().await;
                writer.close().await;
            }
            Db::Postgres { pool, .. } => pool.close().await,
        }
    }
}
