//! Alerts: raising one (with its audit record), whether one is open, resolving them, and the
//! notifications the sink still owes (fired, or resolved since) with what happened to each attempt.

use jiff::Timestamp;
use serde_json::json;

use super::{Store, StoreResult, audit, secs, ts};
use super::{on_db, on_tx};

/// Resolves the open alerts of `kind`, only those whose detail starts with `detail_prefix` when
/// given (one incident among several of a kind); returns how many. Runs on `conn`, so a caller
/// resolves in the same transaction as the change that ends the incident.
pub(crate) async fn resolve(
    conn: &mut super::Tx,
    kind: &str,
    detail_prefix: Option<&str>,
    now: Timestamp,
) -> StoreResult<u64> {
    Ok(on_tx!(conn, |c| sqlx::query(
        "UPDATE alerts SET resolved_at = $1 WHERE kind = $2 AND resolved_at IS NULL \
         AND ($3 IS NULL OR substr(detail, 1, length($3)) = $3)",
    )
    .bind(secs(now))
    .bind(kind)
    .bind(detail_prefix)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Inserts an alert and its audit record on `conn` (the caller's transaction).
pub(crate) async fn insert(
    conn: &mut super::Tx,
    keys: &crate::keys::Keys,
    kind: &str,
    detail: &str,
    now: Timestamp,
) -> StoreResult<()> {
    on_tx!(conn, |c| sqlx::query(
        "INSERT INTO alerts (at, kind, detail) VALUES ($1, $2, $3)"
    )
    .bind(secs(now))
    .bind(kind)
    .bind(detail)
    .execute(&mut *c)
    .await
    .map(|r| r.rows_affected()))?;
    audit::append(
        conn,
        keys,
        now,
        "system",
        "alert",
        kind,
        json!({"detail": detail}),
    )
    .await
}

/// One notification the sink owes: an alert that fired, or one that was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertNotice {
    pub id: i64,
    pub kind: String,
    /// Written without patient data where the alert is raised.
    pub detail: String,
    pub at: Timestamp,
    /// Set for a recovery notice.
    pub resolved_at: Option<Timestamp>,
}

impl AlertNotice {
    /// Whether this tells of a recovery rather than of the alert firing.
    pub fn is_recovery(&self) -> bool {
        self.resolved_at.is_some()
    }
}

/// Seconds before a failed notification is tried again: 30 s doubling, at most 15 min.
pub fn notify_backoff_secs(failures: i64) -> i64 {
    (30i64 << (failures - 1).clamp(0, 5)).min(900)
}

/// An alert as the status page lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlertLine {
    pub at: Timestamp,
    pub kind: String,
    pub detail: String,
    pub resolved_at: Option<Timestamp>,
}

impl Store {
    /// The newest `limit` alerts, open or resolved, newest first.
    pub async fn recent_alerts(&self, limit: i64) -> StoreResult<Vec<AlertLine>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT at, kind, detail, resolved_at FROM alerts ORDER BY at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| AlertLine {
                at: ts(r.get("at")),
                kind: r.get("kind"),
                detail: r.get("detail"),
                resolved_at: r.get::<Option<i64>, _>("resolved_at").map(ts),
            })
            .collect())
    }

    /// The details of the open alerts of `kind` (each names its incident first).
    pub async fn open_alert_details(&self, kind: &str) -> StoreResult<Vec<String>> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT detail FROM alerts WHERE kind = $1 AND resolved_at IS NULL ORDER BY id",
        )
        .bind(kind)
        .fetch_all(db)
        .await)?)
    }

    /// Raises an alert for staff (no PHI in `detail`).
    pub async fn raise_alert(&self, kind: &str, detail: &str, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        insert(&mut tx, &self.keys, kind, detail, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether an alert of `kind` is open (raised and not resolved).
    pub async fn alert_open(&self, kind: &str) -> StoreResult<bool> {
        Ok(on_db!(self, |db| sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM alerts WHERE kind = $1 AND resolved_at IS NULL",
        )
        .bind(kind)
        .fetch_one(db)
        .await)?
            > 0)
    }

    /// Resolves every open alert of `kind` (its condition ended); returns how many.
    pub async fn resolve_alerts(&self, kind: &str, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let resolved = resolve(&mut tx, kind, None, now).await?;
        tx.commit().await?;
        Ok(resolved)
    }

    /// Notifications due at `now`, oldest first: alerts not yet notified, then resolved alerts
    /// whose recovery was not (an alert resolved before its first notice gets both, in order).
    pub async fn due_alert_notices(
        &self,
        now: Timestamp,
        limit: i64,
    ) -> StoreResult<Vec<AlertNotice>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT id, kind, detail, at, resolved_at, notified_at FROM alerts \
             WHERE (notified_at IS NULL OR (resolved_at IS NOT NULL AND recovery_notified_at IS NULL)) \
             AND (next_notify_at IS NULL OR next_notify_at <= $1) ORDER BY id LIMIT $2",
        )
        .bind(secs(now))
        .bind(limit)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| {
                let fired_notice_due = r.get::<Option<i64>, _>("notified_at").is_none();
                AlertNotice {
                    id: r.get("id"),
                    kind: r.get("kind"),
                    detail: r.get("detail"),
                    at: ts(r.get("at")),
                    resolved_at: if fired_notice_due {
                        None
                    } else {
                        r.get::<Option<i64>, _>("resolved_at").map(ts)
                    },
                }
            })
            .collect())
    }

    /// Records that the sink took `notice`.
    pub async fn alert_notified(&self, notice: &AlertNotice, now: Timestamp) -> StoreResult<()> {
        let sql = if notice.is_recovery() {
            "UPDATE alerts SET recovery_notified_at = $1, notify_failures = 0, next_notify_at = NULL WHERE id = $2"
        } else {
            "UPDATE alerts SET notified_at = $1, notify_failures = 0, next_notify_at = NULL WHERE id = $2"
        };
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| sqlx::query(sql)
            .bind(secs(now))
            .bind(notice.id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?;
        tx.commit().await
    }

    /// Records a failed attempt: the notice is due again after its backoff.
    pub async fn alert_notify_failed(
        &self,
        notice: &AlertNotice,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let failures: i64 = on_tx!(tx, |c| {
            sqlx::query_scalar(
            "UPDATE alerts SET notify_failures = notify_failures + 1 WHERE id = $1 RETURNING notify_failures",
        )
        .bind(notice.id)
        .fetch_one(&mut *c).await
        })?;
        on_tx!(tx, |c| sqlx::query(
            "UPDATE alerts SET next_notify_at = $1 WHERE id = $2"
        )
        .bind(secs(now) + notify_backoff_secs(failures))
        .bind(notice.id)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await
    }
}
