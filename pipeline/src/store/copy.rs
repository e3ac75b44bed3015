//! `medrelay db copy`: moving an installation from its SQLite file to a PostgreSQL database.
//!
//! Every table is copied whole, parents before children (foreign keys), in one PostgreSQL
//! transaction: the target has either all of it or nothing. Rows travel as JSON
//! (`json_object` on SQLite, `jsonb_populate_recordset` on PostgreSQL, which converts each value
//! to the target column's type); blobs as `\x` hex, PostgreSQL's bytea text form. Ids are kept,
//! so the audit chain, which hashes them, verifies on the target, and the identity sequences are
//! moved past the copied ids.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{Db, Store, StoreError, StoreResult};

/// Rows per round trip.
const CHUNK: i64 = 1_000;

/// What was copied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    /// Rows per table, in copy order.
    pub tables: Vec<(String, u64)>,
}

/// Tables of the SQLite store, parents before children.
async fn tables_in_order(pool: &sqlx::SqlitePool) -> StoreResult<Vec<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in &names {
        let refs: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list($1)")
                .bind(n)
                .fetch_all(pool)
                .await?;
        parents.insert(
            n.clone(),
            refs.into_iter()
                .filter(|r| r != n && names.contains(r))
                .collect(),
        );
    }
    let mut ordered = Vec::new();
    let mut done = BTreeSet::new();
    while ordered.len() < names.len() {
        let ready: Vec<String> = names
            .iter()
            .filter(|n| !done.contains(*n) && parents[*n].iter().all(|p| done.contains(p)))
            .cloned()
            .collect();
        if ready.is_empty() {
            return Err(StoreError::Inconsistent(
                "the tables' foreign keys form a cycle; cannot order the copy".into(),
            ));
        }
        for n in ready {
            done.insert(n.clone());
            ordered.push(n);
        }
    }
    Ok(ordered)
}

/// Copies the SQLite store `from` into the migrated, unused PostgreSQL store `to`. Refused when
/// the target already holds an audit trail (it is in use) or the schema versions differ.
pub async fn copy_sqlite_to_postgres(from: &Store, to: &Store) -> StoreResult<CopyReport> {
    let (Db::Sqlite { pool: src, .. }, Db::Postgres { pool: dst, .. }) = (from.db(), to.db())
    else {
        return Err(StoreError::Inconsistent(
            "db copy moves an SQLite installation to PostgreSQL (--from sqlite://... --to postgres://...)".into(),
        ));
    };
    let src_version: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(src)
            .await?;
    let dst_version: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(dst)
            .await?;
    if src_version != dst_version {
        return Err(StoreError::Inconsistent(format!(
            "schema versions differ (source {src_version}, target {dst_version}); run both with the same medrelay"
        )));
    }
    let mut tx = dst.begin().await?;
    let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_log")
        .fetch_one(&mut *tx)
        .await?;
    if used > 0 {
        return Err(StoreError::Inconsistent(
            "the target database already has an audit trail: it is in use; copy into a new one"
                .into(),
        ));
    }
    let tables = tables_in_order(src).await?;
    // Rows a fresh schema seeds (the audit head) give way to the source's.
    for t in tables.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {t}")))
            .execute(&mut *tx)
            .await?;
    }
    let mut report = CopyReport::default();
    for t in &tables {
        let cols: Vec<(String, String)> =
            sqlx::query_as("SELECT name, UPPER(type) FROM pragma_table_info($1) ORDER BY cid")
                .bind(t)
                .fetch_all(src)
                .await?;
        let object = cols
            .iter()
            .map(|(c, ty)| {
                if ty.contains("BLOB") {
                    format!(
                        "'{c}', CASE WHEN \"{c}\" IS NULL THEN NULL ELSE '\\x' || hex(\"{c}\") END"
                    )
                } else {
                    format!("'{c}', \"{c}\"")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let without_rowid: bool = sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = $1 AND sql LIKE '%WITHOUT ROWID%'",
        )
        .bind(t)
        .fetch_one(src)
        .await?;
        let key: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk")
                .bind(t)
                .fetch_all(src)
                .await?;
        let key = key
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut copied = 0u64;
        let mut last_rowid = i64::MIN;
        loop {
            // Pages by rowid; a WITHOUT ROWID table (keyed by its primary key) by offset.
            let page = if without_rowid {
                format!(
                    "SELECT json_group_array(json_object({object})), COUNT(*), 0 FROM \
                     (SELECT * FROM {t} ORDER BY {key} LIMIT $2 OFFSET {copied}) WHERE $1 IS NOT NULL"
                )
            } else {
                format!(
                    "SELECT json_group_array(json_object({object})), COUNT(*), MAX(rid) FROM \
                     (SELECT rowid AS rid, * FROM {t} WHERE rowid > $1 ORDER BY rowid LIMIT $2)"
                )
            };
            let (json, n, max_rowid): (Option<String>, i64, Option<i64>) =
                sqlx::query_as(sqlx::AssertSqlSafe(page))
                    .bind(last_rowid)
                    .bind(CHUNK)
                    .fetch_one(src)
                    .await?;
            if n == 0 {
                break;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {t} SELECT * FROM jsonb_populate_recordset(NULL::{t}, $1::jsonb)"
            )))
            .bind(json.unwrap_or_else(|| "[]".into()))
            .execute(&mut *tx)
            .await?;
            copied += n as u64;
            last_rowid = max_rowid.unwrap_or(last_rowid);
        }
        // Identity columns continue after the copied ids.
        let identity: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::TEXT FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 AND is_identity = 'YES'",
        )
        .bind(t)
        .fetch_all(&mut *tx)
        .await?;
        for c in identity {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{t}', '{c}'), \
                 GREATEST(COALESCE((SELECT MAX({c}) FROM {t}), 0), 1), \
                 (SELECT MAX({c}) FROM {t}) IS NOT NULL)"
            )))
            .execute(&mut *tx)
            .await?;
        }
        report.tables.push((t.clone(), copied));
    }
    tx.commit().await?;
    Ok(report)
}
