//! Counts for `medrelay status` and `medrelay explain`.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use super::on_db;
use super::{Store, StoreResult, ts};

/// The service at a glance.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusSummary {
    pub appointments_by_status: BTreeMap<String, i64>,
    pub jobs_by_state: BTreeMap<String, i64>,
    pub messages_by_status: BTreeMap<String, i64>,
    pub replies_by_outcome: BTreeMap<String, i64>,
    pub oldest_due_pending: Option<Timestamp>,
    pub quarantined: i64,
    pub writeback_pending: i64,
    pub open_alerts: Vec<(Timestamp, String, String)>,
    pub last_imports: Vec<ImportLine>,
    /// Events that changed nothing although they differed: `older` (than the stored version) and
    /// `unknown` (a status change for an appointment not on record), all time.
    pub ignored_events: BTreeMap<String, i64>,
    /// The newest of them.
    pub recent_ignored: Vec<IgnoredLine>,
    /// Rejected input answered but not kept, over the quarantine quota (see `store::quarantine`).
    pub quarantine_dropped: super::quarantine::DroppedSummary,
}

/// An event that was ignored, for `status` and `explain` (ids, versions and statuses only).
#[derive(Debug, Clone, Serialize)]
pub struct IgnoredLine {
    pub feed: String,
    pub appointment: String,
    /// `older` or `unknown`.
    pub reason: String,
    /// The status the event carried, and the one stored when it was ignored.
    pub status: String,
    pub stored_status: Option<String>,
    /// The event's version time, and the stored version's (older: the stored one is newer).
    pub version_at: Timestamp,
    pub stored_version_at: Option<Timestamp>,
    pub raw_ref: String,
    pub received_at: Timestamp,
}

impl Store {
    /// Whether the database answers a trivial query (for `/readyz`).
    pub async fn ping(&self) -> StoreResult<()> {
        on_db!(self, |db| sqlx::query_scalar::<_, i64>(
            "SELECT CAST(1 AS BIGINT)"
        )
        .fetch_one(db)
        .await)?;
        Ok(())
    }

    /// Embedded migrations that the database has not applied successfully (0 when it is
    /// current). A database migrated by a newer medrelay has applied ones this binary does not
    /// know; they are not counted here.
    pub async fn pending_migrations(&self) -> StoreResult<usize> {
        let applied: Vec<i64> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success"
        )
        .fetch_all(db)
        .await)?;
        let embedded = match self.db() {
            super::Db::Sqlite { .. } => sqlx::migrate!("./migrations/sqlite"),
            super::Db::Postgres { .. } => sqlx::migrate!("./migrations/postgres"),
        };
        Ok(embedded
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .count())
    }

    /// Ignored events, newest first: of one appointment (`Some((source, filler_id))`) or all.
    pub async fn ignored_events(
        &self,
        appointment: Option<(&str, &str)>,
        limit: i64,
    ) -> StoreResult<Vec<IgnoredLine>> {
        let (source, filler) = appointment.unwrap_or(("", ""));
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT feed, source, filler_id, reason, status, stored_status, sv_at_us, stored_sv_at_us, raw_ref, received_at \
             FROM ignored_events WHERE ($1 = '' OR (source = $1 AND filler_id = $2)) ORDER BY id DESC LIMIT $3",
        )
        .bind(source)
        .bind(filler)
        .bind(limit)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        let micros = |us: i64| Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH);
        Ok(rows
            .iter()
            .map(|r| IgnoredLine {
                feed: r.get("feed"),
                appointment: format!(
                    "{}/{}",
                    r.get::<String, _>("source"),
                    r.get::<String, _>("filler_id")
                ),
                reason: r.get("reason"),
                status: r.get("status"),
                stored_status: r.get("stored_status"),
                version_at: micros(r.get("sv_at_us")),
                stored_version_at: r.get::<Option<i64>, _>("stored_sv_at_us").map(micros),
                raw_ref: r.get("raw_ref"),
                received_at: ts(r.get("received_at")),
            })
            .collect())
    }
}

/// How long an unfinished import may go without committing a batch before `status` calls it
/// incomplete. Batches are committed every few thousand rows (seconds apart even on a loaded
/// machine, about a minute for a slow FHIR server page), so an import this quiet has lost its process
/// (killed, crashed) or failed. Derived from the database alone, so it holds whichever process or
/// machine ran the import.
pub const IMPORT_STALLED_AFTER: SignedDuration = SignedDuration::from_mins(10);

/// Where an import stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// It finished; its totals are final.
    #[default]
    Finished,
    /// Not finished, and a batch was committed within [`IMPORT_STALLED_AFTER`]: still going.
    Running,
    /// Not finished, and nothing committed for longer: its process was killed or it failed. Its
    /// committed batches stay (and are counted); importing the input again completes it.
    Incomplete,
}

/// An import's progress: the state, and the batches it committed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportProgress {
    pub state: ImportState,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Batches committed (one transaction each) and when the newest was.
    pub batches: i64,
    pub last_commit_at: Option<Timestamp>,
}

/// One import, for the summary. The row counts of an unfinished import are those of its
/// committed batches.
#[derive(Debug, Clone, Serialize)]
pub struct ImportLine {
    pub id: i64,
    #[serde(flatten)]
    pub progress: ImportProgress,
    pub source: String,
    pub input_name: String,
    pub mode: String,
    pub rows_ok: i64,
    pub rows_bad: i64,
    pub rows_applied: i64,
    /// Rows older than the stored version of their appointment, ignored.
    pub rows_older: i64,
    pub swept: i64,
}

/// One step of an appointment's plan, for `medrelay explain` and `medrelay plan`.
#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    pub job_id: i64,
    pub step: String,
    pub slot_start: Timestamp,
    pub due: Timestamp,
    pub expires: Timestamp,
    pub state: String,
    pub reason: Option<String>,
    pub plan_note: Option<String>,
    pub attempts: i64,
    pub message_status: Option<String>,
    /// `confirmation`, `reminder`, `follow_up` or `no_show`.
    pub kind: String,
    /// Configured template key the step was planned with.
    pub template: String,
    /// When the message was handed to WhatsApp, if it was.
    pub sent_at: Option<Timestamp>,
    /// WhatsApp's error code when delivery failed after acceptance (e.g. 131026, not on WhatsApp).
    pub error_code: Option<i64>,
}

async fn group(store: &Store, sql: &'static str) -> StoreResult<BTreeMap<String, i64>> {
    let rows = on_db!(store, |db| sqlx::query(sql).fetch_all(db).await.map(|v| v
        .into_iter()
        .map(super::StoredRow::from)
        .collect::<Vec<_>>()))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect())
}

impl Store {
    /// Counts by state, the oldest due job, errors, recent imports (an unfinished one with what
    /// its batches committed, and whether it is still running).
    pub async fn status_summary(&self, now: Timestamp) -> StoreResult<StatusSummary> {
        let mut summary = self.summary_counts(now).await?;
        for line in &mut summary.last_imports {
            self.import_progress(line, now).await?;
        }
        Ok(summary)
    }

    /// Fills `line.progress`; for an unfinished import also its row counts, summed from the audit
    /// records of its committed batches (the totals are only written when an import finishes).
    async fn import_progress(&self, line: &mut ImportLine, now: Timestamp) -> StoreResult<()> {
        let r = on_db!(self, |db| sqlx::query(
            "SELECT started_at, finished_at, \
             (SELECT COUNT(*) FROM ingest_batches WHERE import_id = $1) AS batches, \
             (SELECT MAX(committed_at) FROM ingest_batches WHERE import_id = $1) AS last_commit \
             FROM imports WHERE id = $1",
        )
        .bind(line.id)
        .fetch_one(db)
        .await
        .map(super::StoredRow::from))?;
        let started: i64 = r.get("started_at");
        let finished: Option<i64> = r.get("finished_at");
        let last_commit: Option<i64> = r.get("last_commit");
        line.progress = ImportProgress {
            state: ImportState::Finished,
            started_at: Some(ts(started)),
            finished_at: finished.map(ts),
            batches: r.get("batches"),
            last_commit_at: last_commit.map(ts),
        };
        if finished.is_some() {
            return Ok(());
        }
        let quiet_since = ts(last_commit.unwrap_or(started).max(started));
        line.progress.state = if now.duration_since(quiet_since) > IMPORT_STALLED_AFTER {
            ImportState::Incomplete
        } else {
            ImportState::Running
        };
        let c = on_db!(self, |db, pg| {
            sqlx::query(if pg {
            "SELECT CAST(COALESCE(SUM((detail::jsonb->>'applied')::BIGINT), 0) AS BIGINT) AS applied, \
             CAST(COALESCE(SUM((detail::jsonb->>'unchanged')::BIGINT), 0) \
               + COALESCE(SUM((detail::jsonb->>'older_ignored')::BIGINT), 0) \
               + COALESCE(SUM((detail::jsonb->>'unknown_ignored')::BIGINT), 0) AS BIGINT) AS not_applied, \
             CAST(COALESCE(SUM((detail::jsonb->>'quarantined')::BIGINT), 0) AS BIGINT) AS rejected \
             FROM audit_log WHERE action = 'ingest' AND subject = $1"
        } else {
            "SELECT COALESCE(SUM(json_extract(detail, '$.applied')), 0) AS applied, \
             COALESCE(SUM(json_extract(detail, '$.unchanged')), 0) \
               + COALESCE(SUM(json_extract(detail, '$.older_ignored')), 0) \
               + COALESCE(SUM(json_extract(detail, '$.unknown_ignored')), 0) AS not_applied, \
             COALESCE(SUM(json_extract(detail, '$.quarantined')), 0) AS rejected \
             FROM audit_log WHERE action = 'ingest' AND subject = $1"
        })
        .bind(format!("import:{}", line.id))
        .fetch_one(db)
        .await
        .map(super::StoredRow::from)
        })?;
        let applied: i64 = c.get("applied");
        line.rows_applied = applied;
        line.rows_ok = applied + c.get::<i64, _>("not_applied");
        line.rows_bad = c.get("rejected");
        Ok(())
    }

    async fn summary_counts(&self, now: Timestamp) -> StoreResult<StatusSummary> {
        let oldest: Option<i64> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT MIN(due_at) FROM outbox WHERE state = 'pending' AND due_at <= $1",
        )
        .bind(now.as_second())
        .fetch_one(db)
        .await)?;
        let alerts = on_db!(self, |db| {
            sqlx::query(
            "SELECT at, kind, detail FROM alerts WHERE resolved_at IS NULL ORDER BY id DESC LIMIT 20",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        let imports = on_db!(self, |db| {
            sqlx::query(
            "SELECT id, source, input_name, mode, rows_ok, rows_bad, rows_applied, rows_older, swept FROM imports ORDER BY id DESC LIMIT 5",
        )
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(StatusSummary {
            appointments_by_status: group(
                self,
                "SELECT status, COUNT(*) FROM appointments GROUP BY status",
            )
            .await?,
            jobs_by_state: group(self, "SELECT state, COUNT(*) FROM outbox GROUP BY state").await?,
            messages_by_status: group(
                self,
                "SELECT status, COUNT(*) FROM messages GROUP BY status",
            )
            .await?,
            replies_by_outcome: group(
                self,
                "SELECT outcome || COALESCE(':' || action, ''), COUNT(*) FROM replies GROUP BY 1",
            )
            .await?,
            oldest_due_pending: oldest.map(ts),
            quarantined: on_db!(self, |db| sqlx::query_scalar(
                "SELECT COUNT(*) FROM quarantine"
            )
            .fetch_one(db)
            .await)?,
            writeback_pending: on_db!(self, |db| sqlx::query_scalar(
                super::writeback::BACKLOG_SQL
            )
            .fetch_one(db)
            .await)?,
            open_alerts: alerts
                .iter()
                .map(|r| (ts(r.get("at")), r.get("kind"), r.get("detail")))
                .collect(),
            last_imports: imports
                .iter()
                .map(|r| ImportLine {
                    id: r.get("id"),
                    progress: ImportProgress::default(),
                    source: r.get("source"),
                    input_name: r.get("input_name"),
                    mode: r.get("mode"),
                    rows_ok: r.get("rows_ok"),
                    rows_bad: r.get("rows_bad"),
                    rows_applied: r.get("rows_applied"),
                    rows_older: r.get("rows_older"),
                    swept: r.get("swept"),
                })
                .collect(),
            ignored_events: group(
                self,
                "SELECT reason, COUNT(*) FROM ignored_events GROUP BY reason",
            )
            .await?,
            recent_ignored: self.ignored_events(None, 5).await?,
            quarantine_dropped: self
                .quarantine_dropped(now - jiff::SignedDuration::from_hours(24))
                .await?,
        })
    }

    /// Finds an appointment id by `source/filler_id` or by filler id alone.
    pub async fn find_appointment(&self, reference: &str) -> StoreResult<Option<i64>> {
        let (source, id) = reference.split_once('/').unwrap_or(("", reference));
        Ok(on_db!(self, |db| {
            sqlx::query_scalar(
            "SELECT id FROM appointments WHERE filler_id = $1 AND ($2 = '' OR source = $2) ORDER BY id LIMIT 1",
        )
        .bind(id)
        .bind(source)
        .fetch_optional(db).await
        })?)
    }

    /// Every step ever planned for an appointment, with its message status.
    pub async fn steps_of(&self, appointment_id: i64) -> StoreResult<Vec<StepLine>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT o.id, o.step, o.kind, o.template, o.slot_start, o.due_at, o.expires_at, o.state, o.state_reason, o.plan_note, o.attempts, \
             m.status AS mstatus, m.sent_at, m.error_code \
             FROM outbox o LEFT JOIN messages m ON m.wamid = o.wamid WHERE o.appointment_id = $1 ORDER BY o.slot_start, o.due_at, o.id",
        )
        .bind(appointment_id)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| StepLine {
                job_id: r.get("id"),
                step: r.get("step"),
                slot_start: ts(r.get("slot_start")),
                due: ts(r.get("due_at")),
                expires: ts(r.get("expires_at")),
                state: r.get("state"),
                reason: r.get("state_reason"),
                plan_note: r.get("plan_note"),
                attempts: r.get("attempts"),
                message_status: r.get("mstatus"),
                kind: r.get("kind"),
                template: r.get("template"),
                sent_at: r.get::<Option<i64>, _>("sent_at").map(ts),
                error_code: r.get("error_code"),
            })
            .collect())
    }

    /// The feeds (connectors) that have listed an appointment, for `medrelay explain`: one
    /// appointment may come from several feeds of one system.
    pub async fn feeds_of(&self, appointment_id: i64) -> StoreResult<Vec<String>> {
        Ok(on_db!(self, |db| sqlx::query_scalar(
            "SELECT feed FROM appointment_feeds WHERE appointment_id = $1 ORDER BY feed",
        )
        .bind(appointment_id)
        .fetch_all(db)
        .await)?)
    }

    /// Appointment ids with a start in `[from, to)`.
    pub async fn appointments_between(
        &self,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<i64>> {
        Ok(on_db!(self, |db| {
            sqlx::query_scalar(
            "SELECT id FROM appointments WHERE start_at >= $1 AND start_at < $2 ORDER BY start_at, id",
        )
        .bind(from.as_second())
        .bind(to.as_second())
        .fetch_all(db).await
        })?)
    }
}

/// One quarantined input, without its raw bytes.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineLine {
    pub id: i64,
    pub source: String,
    pub location: String,
    pub column: Option<String>,
    pub reason: String,
    pub received_at: Timestamp,
}

impl Store {
    /// The newest quarantined inputs (location, column, reason: never the raw bytes).
    pub async fn quarantine_lines(&self, limit: i64) -> StoreResult<Vec<QuarantineLine>> {
        let rows = on_db!(self, |db| {
            sqlx::query(
            "SELECT id, source, location, column_name, reason, received_at FROM quarantine ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(db).await.map(|v| v.into_iter().map(super::StoredRow::from).collect::<Vec<_>>())
        })?;
        Ok(rows
            .iter()
            .map(|r| QuarantineLine {
                id: r.get("id"),
                source: r.get("source"),
                location: r.get("location"),
                column: r.get("column_name"),
                reason: r.get("reason"),
                received_at: ts(r.get("received_at")),
            })
            .collect())
    }
}
