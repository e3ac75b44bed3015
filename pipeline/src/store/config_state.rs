//! The plan's fingerprint (migration 0020): a changed message plan or template set, found at a
//! start or a configuration reload, has future appointments planned again.

use jiff::Timestamp;

use super::on_tx;
use super::{Store, StoreResult, secs};

impl Store {
    /// Records `fingerprint` as the plan in force; when it differs from the one recorded (or none
    /// was), marks every appointment that has not started for planning and returns how many.
    pub async fn plan_changed(&self, fingerprint: &str, now: Timestamp) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let stored: Option<String> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT value FROM config_state WHERE name = 'plan_fingerprint'"
        )
        .fetch_optional(&mut *c)
        .await)?;
        if stored.as_deref() == Some(fingerprint) {
            return Ok(0);
        }
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO config_state (name, value, updated_at) VALUES ('plan_fingerprint', $1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(fingerprint)
        .bind(secs(now))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        // A first fingerprint (a new database, or one from before this migration) is only the
        // baseline: nothing was planned under another plan that this process knows of.
        let marked = if stored.is_some() {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE appointments SET needs_plan = 1 WHERE needs_plan = 0 AND start_at > $1",
            )
            .bind(secs(now))
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?
        } else {
            0
        };
        tx.commit().await?;
        Ok(marked)
    }
}
