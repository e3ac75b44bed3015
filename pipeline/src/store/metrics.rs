//! The numbers `/metrics` exports, read from the store at scrape time: they survive restarts and
//! agree with `medrelay status`, whichever instance serves the scrape. Every label value is a
//! configured name (connector, template, site), a state or a code: never patient data.

use jiff::Timestamp;

use super::on_db;
use super::{Store, StoreResult, secs};

/// One labelled value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn sample(labels: Vec<(&'static str, String)>, value: i64) -> Sample {
    Sample {
        labels,
        value: value as f64,
    }
}

/// What the store holds, for the exporter.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Outbox jobs by `state` and `lane`.
    pub outbox_jobs: Vec<Sample>,
    /// Seconds the oldest due pending job has waited (0 when none is due).
    pub oldest_due_seconds: f64,
    /// Messages sent, by `template` and current `status`.
    pub messages: Vec<Sample>,
    /// Messages whose last error carried a Cloud API `code`.
    pub message_errors: Vec<Sample>,
    /// Imported rows and messages by `connector` and `outcome` (ok, bad, applied).
    pub imported: Vec<Sample>,
    /// Quarantined inputs by `connector`.
    pub quarantined: Vec<Sample>,
    /// Patient replies by `action` and `outcome`.
    pub replies: Vec<Sample>,
    /// Accepted replies not yet written back.
    pub writeback_backlog: f64,
    /// Seconds since the oldest open write-back batch was created (0 when none).
    pub writeback_oldest_open_seconds: f64,
    /// Write-back batches by `target` and `state`.
    pub writeback_batches: Vec<Sample>,
    /// Consent ledger entries by `purpose` and `change` (grant / revoke).
    pub consent_changes: Vec<Sample>,
    /// Open alerts by `kind`.
    pub open_alerts: Vec<Sample>,
    /// Unique recipients counted against the messaging limit (moving 24 h, outside a service
    /// window).
    pub messaging_recipients_24h: f64,
    /// The messaging limit as WhatsApp last stated it (`None`: never stated, or unlimited).
    pub messaging_limit_reported: Option<f64>,
    /// Write groups this process committed (one fsync each); against the writes counted above it
    /// shows how much the group commit folds.
    pub commit_groups: f64,
    /// Inbox conversations not closed, by `state` (open, assigned, waiting, overdue: past the
    /// reply SLA).
    pub inbox_conversations: Vec<Sample>,
}

impl Store {
    /// Reads every exported number in one pass of small aggregate queries.
    pub async fn metrics(&self, now: Timestamp) -> StoreResult<StoreMetrics> {
        let mut m = StoreMetrics::default();
        for r in on_db!(self, |db| {
            sqlx::query(
            "SELECT state, lane, COUNT(*) AS n FROM outbox GROUP BY state, lane ORDER BY state, lane",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })? {
            m.outbox_jobs.push(sample(
                vec![
                    ("state", r.get("state")),
                    ("lane", r.get::<i64, _>("lane").to_string()),
                ],
                r.get("n"),
            ));
        }
        let oldest: Option<i64> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT MIN(due_at) FROM outbox WHERE state = 'pending' AND due_at <= $1",
        )
        .bind(secs(now))
        .fetch_one(db)
        .await)?;
        m.oldest_due_seconds = oldest.map_or(0, |t| (secs(now) - t).max(0)) as f64;
        for r in on_db!(self, |db| {
            sqlx::query(
            "SELECT o.template, m.status, COUNT(*) AS n FROM messages m JOIN outbox o ON o.id = m.job_id \
             GROUP BY o.template, m.status ORDER BY 1, 2",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })? {
            m.messages.push(sample(
                vec![("template", r.get("template")), ("status", r.get("status"))],
                r.get("n"),
            ));
        }
        for r in on_db!(self, |db| sqlx::query(
            "SELECT error_code, COUNT(*) AS n FROM messages WHERE error_code IS NOT NULL \
             GROUP BY error_code ORDER BY 1",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?
        {
            m.message_errors.push(sample(
                vec![("code", r.get::<i64, _>("error_code").to_string())],
                r.get("n"),
            ));
        }
        for r in on_db!(self, |db| {
            sqlx::query(
            "SELECT source, CAST(SUM(rows_ok) AS BIGINT) AS ok, CAST(SUM(rows_bad) AS BIGINT) AS bad, CAST(SUM(rows_applied) AS BIGINT) AS applied \
             FROM imports GROUP BY source ORDER BY source",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })? {
            let source: String = r.get("source");
            for outcome in ["ok", "bad", "applied"] {
                m.imported.push(sample(
                    vec![("connector", source.clone()), ("outcome", outcome.into())],
                    r.get::<Option<i64>, _>(outcome).unwrap_or(0),
                ));
            }
        }
        for r in on_db!(self, |db| sqlx::query(
            "SELECT source, COUNT(*) AS n FROM quarantine GROUP BY source ORDER BY source",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?
        {
            m.quarantined
                .push(sample(vec![("connector", r.get("source"))], r.get("n")));
        }
        for r in on_db!(self, |db| sqlx::query(
            "SELECT COALESCE(action, 'none') AS action, outcome, COUNT(*) AS n FROM replies \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?
        {
            m.replies.push(sample(
                vec![("action", r.get("action")), ("outcome", r.get("outcome"))],
                r.get("n"),
            ));
        }
        m.writeback_backlog = on_db!(self, |db| sqlx::query_scalar::<_, i64>(
            super::writeback::BACKLOG_SQL
        )
        .fetch_one(db)
        .await)? as f64;
        let oldest_open: Option<i64> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT MIN(created_at) FROM writeback_batches WHERE completed_at IS NULL",
        )
        .fetch_one(db)
        .await)?;
        m.writeback_oldest_open_seconds = oldest_open.map_or(0, |t| (secs(now) - t).max(0)) as f64;
        for r in on_db!(self, |db| sqlx::query(
            "SELECT target, CASE WHEN skipped_at IS NOT NULL THEN 'skipped' \
             WHEN completed_at IS NOT NULL THEN 'written' WHEN refused != 0 THEN 'refused' \
             WHEN failed_at IS NOT NULL THEN 'failing' ELSE 'pending' END AS state, COUNT(*) AS n \
             FROM writeback_batches GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?
        {
            m.writeback_batches.push(sample(
                vec![("target", r.get("target")), ("state", r.get("state"))],
                r.get("n"),
            ));
        }
        for r in on_db!(self, |db| sqlx::query(
            "SELECT purpose, CASE WHEN granted != 0 THEN 'grant' ELSE 'revoke' END AS change, \
             COUNT(*) AS n FROM consent_ledger GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(db)
        .await
        .map(|v| v
            .into_iter()
            .map(super::StoredRow::from)
            .collect::<Vec<_>>()))?
        {
            m.consent_changes.push(sample(
                vec![("purpose", r.get("purpose")), ("change", r.get("change"))],
                r.get("n"),
            ));
        }
        for r in on_db!(self, |db| {
            sqlx::query(
            "SELECT kind, COUNT(*) AS n FROM alerts WHERE resolved_at IS NULL GROUP BY kind ORDER BY kind",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })? {
            m.open_alerts
                .push(sample(vec![("kind", r.get("kind"))], r.get("n")));
        }
        m.messaging_recipients_24h = self
            .recipients_since(now - jiff::SignedDuration::from_hours(24))
            .await?
            .len() as f64;
        m.messaging_limit_reported = self
            .reported_messaging_limit()
            .await?
            .and_then(|r| r.limit)
            .map(f64::from);
        m.commit_groups = self.commit_groups() as f64;
        let inbox = self.inbox_counts(now).await?;
        for (state, n) in [
            ("open", inbox.open),
            ("assigned", inbox.assigned),
            ("waiting", inbox.waiting),
            ("overdue", inbox.overdue),
        ] {
            m.inbox_conversations
                .push(sample(vec![("state", state.to_owned())], n));
        }
        Ok(m)
    }
}
