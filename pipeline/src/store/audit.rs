//! Append-only audit trail, chained with a key and sealed by a keyed head record.
//!
//! Record `n`'s hash is an HMAC-SHA256 with a key derived from the installation secret
//! ([`Keys::audit_mac`]) over `n`, the previous record's hash and the record's own fields. Editing,
//! inserting or deleting a record breaks the chain, and someone who can write the database but does
//! not hold the secret cannot recompute it. The head (`audit_head`: the record count and the newest
//! record's hash, sealed with the same key) is updated in the same transaction as every append, so
//! deleting the newest record, the newest N or all of them breaks verification too; so does removing
//! or editing the head itself.
//!
//! What the database alone cannot show is the trail and its head replaced together by an earlier
//! state of themselves (an older copy of the file put back) or emptied together with a fresh
//! unsealed head (a new install, as far as the file can tell). Signed checkpoints kept outside the
//! database ([`crate::checkpoint`], written by `medrelay audit export` and daily by `medrelay run`)
//! catch both: [`Store::audit_verify_against`].
//!
//! Records written before keying (migration 0005) keep their unkeyed SHA-256 chain and are verified
//! with that rule. How many there were is part of the sealed head, and the first keyed record (an
//! `audit_keyed` event written when the head is first sealed) chains onto the last of them, so they
//! cannot be edited either without the secret. Nothing is re-keyed: rewriting the old hashes under
//! the key would bless whatever was changed before the upgrade.
//!
//! Records carry hashes and ids, never PHI.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Store, StoreError, StoreResult, secs, ts};
use super::{on_db, on_tx};
use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::keys::Keys;

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

/// The hash of a record written before keying: SHA-256, no key (kept only to verify those).
fn legacy_hash(
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

/// The fields a keyed record's hash covers.
struct RecordFields<'a> {
    id: i64,
    prev: &'a str,
    at: i64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    detail: &'a str,
}

impl RecordFields<'_> {
    fn with_parts<T>(&self, f: impl FnOnce(&[&str]) -> T) -> T {
        let (id, at) = (self.id.to_string(), self.at.to_string());
        f(&[
            "record",
            &id,
            self.prev,
            &at,
            self.actor,
            self.action,
            self.subject,
            self.detail,
        ])
    }

    fn hash(&self, keys: &Keys) -> String {
        self.with_parts(|p| keys.audit_mac(p))
    }

    fn matches(&self, keys: &Keys, stored: &str) -> bool {
        self.with_parts(|p| keys.audit_mac_matches(p, stored))
    }
}

/// The head record as stored.
struct Head {
    records: i64,
    last_hash: String,
    legacy_records: i64,
    mac: Option<String>,
}

fn head_parts(records: i64, last_hash: &str, legacy_records: i64) -> [String; 4] {
    [
        "head".to_string(),
        records.to_string(),
        last_hash.to_string(),
        legacy_records.to_string(),
    ]
}

impl Head {
    /// Sealed with this installation's key and unchanged since.
    fn sealed(&self, keys: &Keys) -> bool {
        let parts = head_parts(self.records, &self.last_hash, self.legacy_records);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.mac
            .as_deref()
            .is_some_and(|m| keys.audit_mac_matches(&parts, m))
    }
}

/// The chain head. With `lock` (an append) on PostgreSQL the head row stays locked until the
/// caller's transaction ends: chain writers of every instance take turns, so the chain cannot
/// fork (SQLite has one writer anyway).
async fn load_head(conn: &mut super::Tx, lock: bool) -> StoreResult<Option<Head>> {
    let row = on_tx!(conn, |c, pg| sqlx::query(if pg && lock {
        "SELECT records, last_hash, legacy_records, mac FROM audit_head WHERE id = 1 FOR UPDATE"
    } else {
        "SELECT records, last_hash, legacy_records, mac FROM audit_head WHERE id = 1"
    })
    .fetch_optional(&mut *c)
    .await
    .map(|v| v.map(super::StoredRow::from)))?;
    Ok(row.map(|r| Head {
        records: r.get("records"),
        last_hash: r.get("last_hash"),
        legacy_records: r.get("legacy_records"),
        mac: r.get("mac"),
    }))
}

async fn write_head(
    conn: &mut super::Tx,
    keys: &Keys,
    records: i64,
    last_hash: &str,
    legacy_records: i64,
) -> StoreResult<()> {
    let parts = head_parts(records, last_hash, legacy_records);
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    on_tx!(conn, |c| {
        sqlx::query(
        "UPDATE audit_head SET records = $1, last_hash = $2, legacy_records = $3, mac = $4 WHERE id = 1",
    )
    .bind(records)
    .bind(last_hash)
    .bind(legacy_records)
    .bind(keys.audit_mac(&parts))
    .execute(&mut *c).await.map(|r| r.rows_affected())
    })?;
    Ok(())
}

/// The newest record's id and hash.
async fn last_record(conn: &mut super::Tx) -> StoreResult<Option<(i64, String)>> {
    Ok(on_tx!(conn, |c| sqlx::query_as(
        "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1"
    )
    .fetch_optional(&mut *c)
    .await)?)
}

/// Writes one keyed record with its explicit id and returns its hash.
async fn insert_record(
    conn: &mut super::Tx,
    keys: &Keys,
    f: &RecordFields<'_>,
) -> StoreResult<String> {
    let hash = f.hash(keys);
    on_tx!(conn, |c| {
        sqlx::query(
        "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(f.id)
    .bind(f.at)
    .bind(f.actor)
    .bind(f.action)
    .bind(f.subject)
    .bind(f.detail)
    .bind(f.prev)
    .bind(&hash)
    .execute(&mut *c).await.map(|r| r.rows_affected())
    })?;
    Ok(hash)
}

/// Appends one record inside the caller's (immediate) transaction, and moves the head to it in the
/// same transaction.
///
/// The record continues the chain from the head: after the newest records were deleted, its id and
/// previous hash still follow the deleted ones, so the gap stays visible. Without a valid head
/// (removed or altered), it continues from the newest stored record and the head is left as it is:
/// `audit verify` keeps reporting the damage, and the service keeps running.
pub(crate) async fn append(
    conn: &mut super::Tx,
    keys: &Keys,
    at: Timestamp,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> StoreResult<()> {
    let detail = detail.to_string();
    let head = load_head(conn, true).await?.filter(|h| h.sealed(keys));
    let (id, prev) = match &head {
        Some(h) => (h.records + 1, h.last_hash.clone()),
        None => last_record(conn)
            .await?
            .map_or((1, GENESIS.to_string()), |(id, hash)| (id + 1, hash)),
    };
    let fields = RecordFields {
        id,
        prev: &prev,
        at: secs(at),
        actor,
        action,
        subject,
        detail: &detail,
    };
    let hash = insert_record(conn, keys, &fields).await?;
    if let Some(h) = head {
        write_head(conn, keys, id, &hash, h.legacy_records).await?;
    }
    Ok(())
}

/// Seals the head that migration 0005 wrote unsealed (SQL cannot compute the HMAC); called by
/// [`Store::open`]. A head is sealed only while it still describes the trail exactly as the
/// migration found it: nothing appended since, the newest record the one it names. If records were
/// written before keying, one keyed `audit_keyed` record marks the boundary (it chains onto the last
/// unkeyed record). Any other unsealed head is left unsealed, and `audit verify` reports it.
pub(crate) async fn seal_after_upgrade(store: &Store) -> StoreResult<()> {
    let unsealed: Option<i64> = on_db!(store, |db| sqlx::query_scalar(
        "SELECT id FROM audit_head WHERE id = 1 AND mac IS NULL"
    )
    .fetch_optional(db)
    .await)?;
    if unsealed.is_none() {
        return Ok(());
    }
    let keys = store.keys();
    let mut tx = store.write_tx().await?;
    let Some(h) = load_head(&mut tx, true).await? else {
        return Ok(());
    };
    if h.mac.is_some() {
        return Ok(()); // another process sealed it first
    }
    let (last_id, last_hash) = last_record(&mut tx)
        .await?
        .unwrap_or((0, GENESIS.to_string()));
    if h.records != h.legacy_records || last_id != h.records || last_hash != h.last_hash {
        tracing::warn!(
            "the audit head is unsealed and does not describe the trail; it stays unsealed (see `medrelay audit verify`)"
        );
        return Ok(());
    }
    if h.legacy_records == 0 {
        write_head(&mut tx, keys, 0, GENESIS, 0).await?;
    } else {
        let detail = json!({"legacy_records": h.legacy_records, "rule": "hmac-sha256"}).to_string();
        let fields = RecordFields {
            id: last_id + 1,
            prev: &last_hash,
            at: secs(Timestamp::now()),
            actor: "system",
            action: "audit_keyed",
            subject: "audit",
            detail: &detail,
        };
        let hash = insert_record(&mut tx, keys, &fields).await?;
        write_head(&mut tx, keys, last_id + 1, &hash, h.legacy_records).await?;
        tracing::info!(
            legacy_records = h.legacy_records,
            "audit trail keyed: earlier records keep their unkeyed chain, the next ones are keyed"
        );
    }
    tx.commit().await?;
    Ok(())
}

/// The outcome of `medrelay audit verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditVerification {
    pub records: i64,
    /// Records written before keying (ids 1 to this), verified with the unkeyed rule.
    pub legacy_records: i64,
    /// The checkpoints compared (file names).
    pub checkpoints: Vec<String>,
    /// The first broken record id and why, if any (0: not one record, e.g. an unreadable
    /// checkpoint).
    pub broken: Option<(i64, String)>,
}

/// "record 7 was deleted" / "records 7 to 9 were deleted".
fn deleted(from: i64, to: i64) -> String {
    if from == to {
        format!("record {from} was deleted")
    } else {
        format!("records {from} to {to} were deleted")
    }
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
        append(&mut tx, &self.keys, at, actor, action, subject, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Verifies the chain and the head without checkpoints: any edited, inserted or deleted
    /// record (also the newest ones, also all of them) and any change to the head break it.
    pub async fn audit_verify(&self) -> StoreResult<AuditVerification> {
        self.audit_verify_against(&[]).await
    }

    /// Verifies the chain, the head, and the trail against each checkpoint: a checkpoint that is
    /// not signed with this installation's key, one counting more records than the trail has, or
    /// one naming another hash at its position breaks it.
    pub async fn audit_verify_against(
        &self,
        checkpoints: &[CheckpointFile],
    ) -> StoreResult<AuditVerification> {
        // One read transaction: the records and the head as of one moment.
        let mut tx = self.read_tx().await?;
        let rows = on_tx!(tx, |c| {
            sqlx::query(
            "SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log ORDER BY id",
        )
        .fetch_all(&mut *c).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        let head = load_head(&mut tx, false).await?;
        drop(tx);
        let keys = &self.keys;
        let head_ok = head.as_ref().is_some_and(|h| h.sealed(keys));
        // Without a valid head the boundary is not vouched for; take the keying record's word for
        // it so that the first problem reported is the real one.
        let legacy = match &head {
            Some(h) if head_ok => h.legacy_records,
            _ => rows
                .iter()
                .find(|r| r.get::<&str, _>("action") == "audit_keyed")
                .map(|r| r.get::<i64, _>("id") - 1)
                .or(head.as_ref().map(|h| h.legacy_records))
                .unwrap_or(0),
        };
        let mut v = AuditVerification {
            records: rows.len() as i64,
            legacy_records: legacy,
            checkpoints: checkpoints.iter().map(|c| c.name.clone()).collect(),
            broken: None,
        };
        let mut prev = GENESIS.to_string();
        let mut last_id = 0i64;
        for row in &rows {
            let id: i64 = row.get("id");
            let stored_prev: &str = row.get("prev_hash");
            let hash: &str = row.get("hash");
            if id != last_id + 1 {
                v.broken = Some((last_id + 1, deleted(last_id + 1, id - 1)));
                return Ok(v);
            }
            if stored_prev != prev {
                v.broken = Some((
                    id,
                    "previous hash does not match: a record before it was changed".into(),
                ));
                return Ok(v);
            }
            let (at, actor, action, subject, detail) = (
                row.get::<i64, _>("at"),
                row.get::<&str, _>("actor"),
                row.get::<&str, _>("action"),
                row.get::<&str, _>("subject"),
                row.get::<&str, _>("detail"),
            );
            let intact = if id <= legacy {
                legacy_hash(&prev, at, actor, action, subject, detail) == hash
            } else {
                RecordFields {
                    id,
                    prev: &prev,
                    at,
                    actor,
                    action,
                    subject,
                    detail,
                }
                .matches(keys, hash)
            };
            if !intact {
                v.broken = Some((
                    id,
                    "record content does not match its hash: it was edited, or its hash was not computed with this installation's key".into(),
                ));
                return Ok(v);
            }
            prev = hash.to_string();
            last_id = id;
        }
        v.broken = match &head {
            None => Some((
                last_id + 1,
                "the head record (record count and newest hash) is missing: the newest records may have been deleted".into(),
            )),
            Some(h) if h.mac.is_none() => Some((
                last_id + 1,
                "the head record is not sealed: it was reset without the installation secret".into(),
            )),
            Some(_) if !head_ok => Some((
                last_id + 1,
                "the head record was altered: its seal does not match".into(),
            )),
            Some(h) if h.records > last_id => Some((
                last_id + 1,
                format!(
                    "{} (the head counts {} records)",
                    deleted(last_id + 1, h.records),
                    h.records
                ),
            )),
            Some(h) if h.records < last_id => Some((
                h.records + 1,
                "record is not counted by the head: it was added without the installation secret"
                    .into(),
            )),
            Some(h) if h.last_hash != prev => Some((
                last_id,
                "the newest record is not the one the head names: it was replaced".into(),
            )),
            Some(_) => None,
        };
        if v.broken.is_some() {
            return Ok(v);
        }
        for file in checkpoints {
            let c = match &file.checkpoint {
                Ok(c) => c,
                Err(why) => {
                    v.broken = Some((0, format!("checkpoint {} {why}", file.name)));
                    return Ok(v);
                }
            };
            let problem = if !c.signed_by(keys) {
                Some((
                    c.records,
                    format!(
                        "checkpoint {} is not signed with this installation's key: it was edited or comes from another installation",
                        file.name
                    ),
                ))
            } else if c.records > last_id {
                Some((
                    last_id + 1,
                    format!(
                        "{} (checkpoint {} of {} counted {} records)",
                        deleted(last_id + 1, c.records),
                        file.name,
                        c.at,
                        c.records
                    ),
                ))
            } else {
                let hash_there = match c.records {
                    0 => GENESIS,
                    n => rows[(n - 1) as usize].get::<&str, _>("hash"),
                };
                (hash_there != c.last_hash).then(|| {
                    (
                        c.records,
                        format!(
                            "the record differs from the one checkpoint {} of {} names: the trail was replaced",
                            file.name, c.at
                        ),
                    )
                })
            };
            if problem.is_some() {
                v.broken = problem;
                return Ok(v);
            }
        }
        Ok(v)
    }

    /// A signed checkpoint of the trail as its head describes it now (for a file outside the
    /// database). Refused when the head is missing or altered: a checkpoint must not vouch for a
    /// trail that already fails verification.
    pub async fn audit_checkpoint(&self, now: Timestamp) -> StoreResult<Checkpoint> {
        let mut tx = self.read_tx().await?;
        let head = load_head(&mut tx, false)
            .await?
            .filter(|h| h.sealed(&self.keys))
            .ok_or_else(|| {
                StoreError::Inconsistent(
                    "the audit head record is missing or altered, so no checkpoint was written; run `medrelay audit verify`"
                        .into(),
                )
            })?;
        Ok(Checkpoint::new(
            &self.keys,
            head.records,
            head.last_hash,
            now,
        ))
    }

    /// Records since `since`, oldest first (for `medrelay audit export`).
    pub async fn audit_since(&self, since: Timestamp) -> StoreResult<Vec<AuditRecord>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT id, at, actor, action, subject, detail, prev_hash, hash FROM audit_log WHERE at >= $1 ORDER BY id",
        )
        .bind(secs(since))
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    /// A database as medrelay left it before keying: migrations 0001 to 0004 and `records`
    /// records chained with the unkeyed rule.
    async fn legacy_database(path: &Path, records: i64) {
        let options = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::migrate!("./migrations/sqlite")
            .run_to(4, &pool)
            .await
            .unwrap();
        let mut prev = GENESIS.to_string();
        for id in 1..=records {
            prev = insert_legacy(&pool, id, &prev, &json!({"applied": id}).to_string()).await;
        }
        pool.close().await;
    }

    /// Writes record `id` with the unkeyed rule (replacing it if present); returns its hash.
    async fn insert_legacy(pool: &sqlx::SqlitePool, id: i64, prev: &str, detail: &str) -> String {
        let at = 1_790_000_000 + id;
        let hash = legacy_hash(prev, at, "connector:openemr", "ingest", "batch", detail);
        sqlx::query(
            "INSERT OR REPLACE INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash) VALUES ($1, $2, 'connector:openemr', 'ingest', 'batch', $3, $4, $5)",
        )
        .bind(id)
        .bind(at)
        .bind(detail)
        .bind(prev)
        .bind(&hash)
        .execute(pool)
        .await
        .unwrap();
        hash
    }

    #[tokio::test]
    async fn records_written_before_keying_keep_their_unkeyed_chain_and_cannot_be_edited() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medrelay.db");
        legacy_database(&path, 5).await;
        let keys = Keys::from_secret(b"installation secret");
        let store = Store::open(&path, keys.clone()).await.unwrap();
        let v = store.audit_verify().await.unwrap();
        assert_eq!(v.broken, None, "{v:?}");
        assert_eq!((v.records, v.legacy_records), (6, 5));
        let records = store.audit_since(Timestamp::UNIX_EPOCH).await.unwrap();
        assert_eq!(records[5].action, "audit_keyed");
        assert_eq!(records[5].prev_hash, records[4].hash);
        assert_eq!(records[5].detail["legacy_records"], 5);
        store
            .audit(
                Timestamp::now(),
                "staff",
                "consent_revoke",
                "c_1",
                json!({}),
            )
            .await
            .unwrap();
        store.close().await;
        // Opening again seals nothing twice.
        let store = Store::open(&path, keys.clone()).await.unwrap();
        let v = store.audit_verify().await.unwrap();
        assert_eq!((v.records, v.legacy_records, v.broken), (7, 5, None));

        // An unkeyed record edited and the unkeyed chain recomputed up to the boundary: the first
        // keyed record still names the old hash.
        let mut prev = GENESIS.to_string();
        for id in 1..=5 {
            let detail = if id == 2 {
                json!({"applied": 0}).to_string()
            } else {
                json!({"applied": id}).to_string()
            };
            prev = insert_legacy(&store.tamper_pool().await, id, &prev, &detail).await;
        }
        let v = store.audit_verify().await.unwrap();
        let (at, why) = v.broken.unwrap();
        assert_eq!(at, 6, "{why}");
        assert!(why.contains("previous hash"), "{why}");
        store.close().await;
    }

    #[tokio::test]
    async fn the_keying_boundary_cannot_be_moved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medrelay.db");
        legacy_database(&path, 3).await;
        let store = Store::open(&path, Keys::from_secret(b"s")).await.unwrap();
        // Claiming the keyed records were unkeyed (to recompute them without the key) breaks the
        // head's seal.
        sqlx::query("UPDATE audit_head SET legacy_records = 4")
            .execute(&store.tamper_pool().await)
            .await
            .unwrap();
        let v = store.audit_verify().await.unwrap();
        assert!(v.broken.unwrap().1.contains("head record was altered"));
        // With the head altered, appends go on (chained onto the newest record) and the damage
        // stays reported; no checkpoint vouches for it.
        store
            .audit(Timestamp::now(), "system", "alert", "x", json!({}))
            .await
            .unwrap();
        let v = store.audit_verify().await.unwrap();
        assert!(v.broken.unwrap().1.contains("head record was altered"));
        assert!(store.audit_checkpoint(Timestamp::now()).await.is_err());
        store.close().await;
    }

    #[tokio::test]
    async fn a_fresh_database_starts_with_a_sealed_empty_head() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::from_secret(b"s");
        let store = crate::store::testing::open(&dir.path().join("m.db"), keys.clone())
            .await
            .unwrap();
        let v = store.audit_verify().await.unwrap();
        assert_eq!((v.records, v.legacy_records, v.broken), (0, 0, None));
        let c = store.audit_checkpoint(Timestamp::now()).await.unwrap();
        assert_eq!((c.records, c.last_hash.as_str()), (0, GENESIS));
        assert!(c.signed_by(&keys));
        store.close().await;
    }

    /// Two handles on one database (two instances) appending at once: on PostgreSQL the head
    /// row lock makes them take turns, on SQLite the write lock does; the chain never forks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_of_two_instances_keep_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::from_secret(b"s");
        let location = crate::store::testing::location(&dir.path().join("m.db"))
            .await
            .unwrap();
        let a = Store::connect(&location, keys.clone()).await.unwrap();
        let b = Store::connect(&location, keys.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = if i % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                for n in 0..25 {
                    store
                        .audit(
                            Timestamp::now(),
                            "staff",
                            "note",
                            &format!("w{i}"),
                            json!({"n": n}),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for store in [&a, &b] {
            let v = store.audit_verify().await.unwrap();
            assert_eq!((v.records, &v.broken), (200, &None), "{v:?}");
        }
        a.close().await;
        b.close().await;
    }
}
