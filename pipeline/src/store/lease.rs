//! The outbound lease: which instance sends, answers webhooks and writes back.
//!
//! WhatsApp's limits are per business number and a patient must never get a message twice, so
//! with several instances on one PostgreSQL database exactly one of them does the outbound work
//! at a time. It holds a session-level advisory lock on a connection of its own; when that
//! instance dies its connection closes and the lock is free at once, so another instance takes
//! over at its next pass (the poll interval, seconds). Ingest and planning run everywhere.
//! SQLite has one instance by design: the lease is always held.

use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};
use tokio::sync::Mutex;

use super::{Db, Store, StoreResult};

/// The PostgreSQL side: the lease connection, once opened, and whether it holds the lock.
#[derive(Debug, Default)]
pub(crate) struct LeaseSlot {
    conn: Option<PgConnection>,
    held: bool,
}

/// Shared by every clone of one store handle (one instance).
pub(crate) type SharedLease = Arc<Mutex<LeaseSlot>>;

impl Store {
    /// Whether this instance holds the outbound lease `name` now, taking it if it is free.
    /// Checked before every outbound pass; a lost connection loses the lease (and another
    /// instance may already have it).
    pub async fn outbound_lease(&self, name: &str) -> StoreResult<bool> {
        let (options, slot) = match self.db() {
            Db::Sqlite { .. } => return Ok(true),
            Db::Postgres { pool, lease } => (pool.connect_options(), lease.clone()),
        };
        let mut slot = slot.lock().await;
        if slot.held {
            let alive = match slot.conn.as_mut() {
                Some(c) => c.ping().await.is_ok(),
                None => false,
            };
            if alive {
                return Ok(true);
            }
            tracing::warn!(lease = name, "the outbound lease connection was lost");
            *slot = LeaseSlot::default();
        }
        if slot.conn.is_none() {
            let c = PgConnection::connect_with(&PgConnectOptions::clone(&options)).await?;
            slot.conn = Some(c);
        }
        let Some(c) = slot.conn.as_mut() else {
            return Ok(false);
        };
        // Advisory locks are per database: the key names the schema too, so installations that
        // share a server database under different schemas do not take each other's lease.
        let got: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended(current_database() || '/' || current_schema() || '/' || $1, 0))",
        )
        .bind(name)
            .fetch_one(&mut *c)
            .await;
        match got {
            Ok(true) => {
                tracing::info!(lease = name, "this instance took the outbound lease");
                slot.held = true;
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(e) => {
                *slot = LeaseSlot::default();
                Err(e.into())
            }
        }
    }
}
