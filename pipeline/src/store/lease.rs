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

/// The advisory lock key for a lease name (stable across instances and versions: FNV-1a).
fn key(name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

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
        let got: Result<bool, sqlx::Error> = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key(name))
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
