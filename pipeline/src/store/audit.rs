//! Append-only, hash-chained audit trail.
//!
//! Each record's hash covers the previous record's hash and its own fields, so editing or deleting any
//! record (other than truncating the newest ones, which the stored head count catches) breaks
//! verification. Records carry hashes and ids, never PHI.

use jiff::Timestamp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection};

use super::{Store, StoreResult, secs, ts};

/// The first record's `prev_hash`.
pub const GENESIS: &str = "genesis";

/// One audit record as exported.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

fn chain_hash(
    prev: &str,
    at: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [prev, &at.to_string(), actor, action, subject, detail] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    hex::encode(h.finalize())
}

/// Appends one record inside the caller's (immediate) transaction.
pub(crate) async fn append(
    conn: &mut SqliteConnection,
    at: Timestamp,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> StoreResult<()> {
    let prev: Option<String> =
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    let prev = prev.unwrap_or_else(|| GENESIS.to_string());
    let detail = detail.to_string();
    let hash = chain_hash(&prev, secs(at), actor, action, subject, &detail);
    sqlx::query(
        "INSERT INTO audit_log (at, actor, action, subject, detail, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(secs(at))
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(detail)
    .bind(prev)
    .bind(hash)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The outcome of `medrelay audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    pub records: i64,
    /// The first broken record id and why, if any.
    pub broken: Option<(i64, String)>,
}

impl Store {
    /// Appends one audit record in its own transaction.
    pub async fn audit(
        &self,
        at: Timestamp,
        actor: &str,
        action: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        append(&mut tx, at, actor, action, subject, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Recomputes the chain. Any edited, inserted or deleted record breaks it.
    pub async fn audit_verify(&self) -> StoreResult<AuditVerification> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log ORDER BY id",
        )
        .fetch_all(self.pool())
        .await?;
        let mut prev = GENESIS.to_string();
        let mut last_id = 0i64;
        for row in &rows {
            let id: i64 = row.get("id");
            let stored_prev: String = row.get("prev_hash");
            let hash: String = row.get("hash");
            if stored_prev != prev {
                return Ok(AuditVerification {
                    records: rows.len() as i64,
                    broken: Some((
                        id,
                        "previous hash does not match: a record before it was changed or deleted"
                            .into(),
                    )),
                });
            }
            if id != last_id + 1 {
                return Ok(AuditVerification {
                    records: rows.len() as i64,
                    broken: Some((
                        id,
                        format!("record ids jump from {last_id} to {id}: records were deleted"),
                    )),
                });
            }
            let expected = chain_hash(
                &prev,
                row.get("at"),
                row.get::<&str, _>("actor"),
                row.get::<&str, _>("action"),
                row.get::<&str, _>("subject"),
                row.get::<&str, _>("detail"),
            );
            if expected != hash {
                return Ok(AuditVerification {
                    records: rows.len() as i64,
                    broken: Some((
                        id,
                        "record content does not match its hash: it was edited".into(),
                    )),
                });
            }
            prev = hash;
            last_id = id;
        }
        Ok(AuditVerification {
            records: rows.len() as i64,
            broken: None,
        })
    }

    /// Records since `since`, oldest first (for `medrelay audit export`).
    pub async fn audit_since(&self, since: Timestamp) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log WHERE at >= ? ORDER BY id",
        )
        .bind(secs(since))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord {
                id: r.get("id"),
                at: ts(r.get("at")),
                actor: r.get("actor"),
                action: r.get("action"),
                subject: r.get("subject"),
                detail: serde_json::from_str(r.get::<&str, _>("detail"))
                    .unwrap_or(serde_json::Value::Null),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
            })
            .collect())
    }
}
