//! Incidents: alerts that fire once per incident and recover once (WhatsApp's account news, silent
//! feeds, send halts), and the template holds the sender honours.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::json;

use super::{Store, StoreResult, alerts, audit, secs};
use super::{on_db, on_tx};

impl Store {
    /// Raises an alert of `kind` for the incident named by `key` (the start of its detail, e.g.
    /// `template appointment_reminder`) unless one is already open: a webhook that Meta repeats,
    /// or a second event of the same incident, fires nothing new. Returns whether it fired.
    pub async fn raise_incident(
        &self,
        kind: &str,
        key: &str,
        detail: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        debug_assert!(detail.starts_with(key));
        let mut tx = self.write_tx().await?;
        let open: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT COUNT(*) FROM alerts WHERE kind = $1 AND resolved_at IS NULL \
             AND substr(detail, 1, length($2)) = $2",
        )
        .bind(kind)
        .bind(key)
        .fetch_one(&mut *c)
        .await)?;
        if open > 0 {
            return Ok(false);
        }
        alerts::insert(&mut tx, &self.keys, kind, detail, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Resolves the open alert of `kind` for the incident `key` (it recovered); returns how many.
    pub async fn resolve_incident(
        &self,
        kind: &str,
        key: &str,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let resolved = alerts::resolve(&mut tx, kind, Some(key), now).await?;
        tx.commit().await?;
        Ok(resolved)
    }

    /// Holds template `name` for `cause` (`status` or `category`: the sender defers its steps)
    /// with WhatsApp's `reason`; audited. Holding again keeps the first reason and time.
    pub async fn hold_template(
        &self,
        name: &str,
        cause: &str,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let added = on_tx!(tx, |c| sqlx::query(
            "INSERT INTO template_holds (name, cause, reason, since) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name, cause) DO NOTHING",
        )
        .bind(name)
        .bind(cause)
        .bind(reason)
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        if added > 0 {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "whatsapp",
                "template_hold",
                name,
                json!({"cause": cause, "reason": reason}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases the hold of template `name` for `cause`; audited. Returns whether it was held.
    pub async fn release_template(
        &self,
        name: &str,
        cause: &str,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let removed = on_tx!(tx, |c| sqlx::query(
            "DELETE FROM template_holds WHERE name = $1 AND cause = $2"
        )
        .bind(name)
        .bind(cause)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        if removed > 0 {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "whatsapp",
                "template_release",
                name,
                json!({"cause": cause, "reason": reason}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(removed > 0)
    }

    /// Held templates by name, with why (the oldest hold when there are two).
    pub async fn held_templates(&self) -> StoreResult<HashMap<String, String>> {
        let rows = on_db!(self, |db| sqlx::query(
            "SELECT name, reason FROM template_holds ORDER BY since DESC"
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?;
        Ok(rows
            .iter()
            .map(|r| (r.get("name"), r.get("reason")))
            .collect())
    }
}

impl Store {
    /// When each feed last delivered input (good or bad), for the `feed_silent` alert.
    pub async fn last_inputs(&self) -> StoreResult<HashMap<String, Timestamp>> {
        let rows = on_db!(self, |db| sqlx::query(
            "SELECT feed, last_input_at FROM feed_activity"
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?;
        Ok(rows
            .iter()
            .map(|r| (r.get("feed"), super::ts(r.get("last_input_at"))))
            .collect())
    }
}
