//! Ingest SQL: versioned upserts of appointments, the event log, quarantine and snapshot sweeps.

use jiff::Timestamp;
use serde_json::json;
use sqlx::QueryBuilder;

use super::{Store, StoreResult, audit, secs};
use crate::ingest::{AcceptReceipt, ImportInfo, ImportSummary, Rejected};

/// One appointment flattened into its columns (built by `crate::ingest`).
#[derive(Debug, Clone)]
pub(crate) struct AppointmentRow {
    pub source: String,
    pub filler_id: String,
    pub placer_id: Option<String>,
    pub sv_at_us: i64,
    pub sv_seq: i64,
    pub status: &'static str,
    pub start_at: i64,
    pub end_at: Option<i64>,
    pub site: String,
    pub time_zone: String,
    pub location: Option<String>,
    pub practitioner: Option<String>,
    pub service_type: Option<String>,
    pub reason: Option<String>,
    pub patient_ref: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub phone_e164: Option<String>,
    pub phone_problem: Option<String>,
    pub contact_hash: Option<String>,
    pub language: Option<String>,
    pub protected: bool,
    pub ehr_consent: Option<&'static str>,
    pub content_hash: String,
    pub raw_ref: String,
}

/// Rows per multi-row statement: fewer, larger statements are the cheapest way through sqlx's worker
/// thread. 800 rows x (up to 40) binds stays below SQLite's 32766 variable limit.
const CHUNK: usize = 800;

/// Rewrites the filler id of rows that name an appointment only by its placer id (alias): a row
/// whose (system, filler id) is unknown, but whose placer id matches an appointment of the same
/// system (stored, or earlier in this batch), updates that appointment instead of creating a twin.
/// One query for the whole batch; `None` when nothing needed rewriting.
async fn resolve_placer_aliases(
    tx: &mut sqlx::SqliteConnection,
    rows: &[AppointmentRow],
) -> StoreResult<Option<Vec<AppointmentRow>>> {
    let probes: Vec<(usize, &str, &str, &str)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            r.placer_id
                .as_deref()
                .filter(|p| !p.is_empty())
                .map(|p| (i, r.source.as_str(), r.filler_id.as_str(), p))
        })
        .collect();
    if probes.is_empty() {
        return Ok(None);
    }
    let json = serde_json::to_string(&probes).unwrap_or_else(|_| "[]".into());
    // For each probe: does its filler id exist, and which stored appointment has its placer id?
    let found: Vec<(i64, bool, Option<String>)> = sqlx::query_as(
        "SELECT json_extract(j.value, '$[0]'),          EXISTS (SELECT 1 FROM appointments b WHERE b.source = json_extract(j.value, '$[1]')                  AND b.filler_id = json_extract(j.value, '$[2]')),          (SELECT a.filler_id FROM appointments a WHERE a.source = json_extract(j.value, '$[1]')                  AND a.placer_id = json_extract(j.value, '$[3]') ORDER BY a.id LIMIT 1)          FROM json_each(?) j",
    )
    .bind(json)
    .fetch_all(&mut *tx)
    .await?;
    let stored: std::collections::HashMap<usize, (bool, Option<String>)> = found
        .into_iter()
        .map(|(i, exists, target)| (i as usize, (exists, target)))
        .collect();
    let mut out: Option<Vec<AppointmentRow>> = None;
    // (system, placer) -> filler id, for rows earlier in this batch; and fillers seen in the batch.
    let mut by_placer: std::collections::HashMap<(String, String), String> = Default::default();
    let mut fillers: std::collections::HashSet<(String, String)> = Default::default();
    for (i, r) in rows.iter().enumerate() {
        let key = (r.source.clone(), r.filler_id.clone());
        let mut filler = r.filler_id.clone();
        if let (Some(placer), Some((exists, target))) = (r.placer_id.as_ref(), stored.get(&i))
            && !*exists
            && !fillers.contains(&key)
        {
            let alias = target
                .clone()
                .or_else(|| by_placer.get(&(r.source.clone(), placer.clone())).cloned());
            if let Some(t) = alias.filter(|t| *t != r.filler_id) {
                let v = out.get_or_insert_with(|| rows.to_vec());
                v[i].filler_id = t.clone();
                filler = t;
            }
        }
        if let Some(p) = &r.placer_id {
            by_placer
                .entry((r.source.clone(), p.clone()))
                .or_insert_with(|| filler.clone());
        }
        fillers.insert((r.source.clone(), filler));
    }
    Ok(out)
}

impl Store {
    /// Records the start of an import and returns its id.
    pub async fn begin_import(&self, info: &ImportInfo, now: Timestamp) -> StoreResult<i64> {
        let id = sqlx::query_scalar(
            "INSERT INTO imports (source, input_name, input_sha256, mode, as_of_us, started_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&info.source)
        .bind(&info.input_name)
        .bind(&info.input_sha256)
        .bind(info.mode.as_str())
        .bind(info.as_of.as_microsecond())
        .bind(secs(now))
        .fetch_one(self.pool())
        .await?;
        Ok(id)
    }

    /// Commits one batch: appointment upserts (newest source version wins), events, quarantine and an
    /// audit record, in one transaction. Returns only after the commit.
    ///
    /// `source` is the feed (connector) the batch came from; each row's own `source` is the system
    /// its ids belong to, which keys the appointment. Every row records that this feed has seen its
    /// appointment (the basis of the feed's snapshot sweep).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn accept_rows(
        &self,
        import_id: Option<i64>,
        source: &str,
        as_of: Timestamp,
        rows: &[AppointmentRow],
        rejected: &[Rejected],
        touch_seen: bool,
        now: Timestamp,
    ) -> StoreResult<AcceptReceipt> {
        let now_s = secs(now);
        let as_of_us = as_of.as_microsecond();
        let mut tx = self.write_tx().await?;
        let mut applied = 0u64;
        let resolved = resolve_placer_aliases(&mut tx, rows).await?;
        let rows = resolved.as_deref().unwrap_or(rows);
        let token: i64 = sqlx::query_scalar(
            "INSERT INTO ingest_batches (import_id, committed_at) VALUES (?, ?) RETURNING id",
        )
        .bind(import_id)
        .bind(now_s)
        .fetch_one(&mut *tx)
        .await?;
        for chunk in rows.chunks(CHUNK) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO appointments (source, filler_id, placer_id, sv_at_us, sv_seq, status, start_at, end_at, \
                 site, time_zone, location, practitioner, service_type, reason, patient_ref, given_name, family_name, \
                 phone_e164, phone_problem, contact_hash, language, protected, ehr_consent, content_hash, \
                 seen_as_of_us, created_at, updated_at, change_token) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.source.clone())
                    .push_bind(r.filler_id.clone())
                    .push_bind(r.placer_id.clone())
                    .push_bind(r.sv_at_us)
                    .push_bind(r.sv_seq)
                    .push_bind(r.status)
                    .push_bind(r.start_at)
                    .push_bind(r.end_at)
                    .push_bind(r.site.clone())
                    .push_bind(r.time_zone.clone())
                    .push_bind(r.location.clone())
                    .push_bind(r.practitioner.clone())
                    .push_bind(r.service_type.clone())
                    .push_bind(r.reason.clone())
                    .push_bind(r.patient_ref.clone())
                    .push_bind(r.given_name.clone())
                    .push_bind(r.family_name.clone())
                    .push_bind(r.phone_e164.clone())
                    .push_bind(r.phone_problem.clone())
                    .push_bind(r.contact_hash.clone())
                    .push_bind(r.language.clone())
                    .push_bind(r.protected)
                    .push_bind(r.ehr_consent)
                    .push_bind(r.content_hash.clone())
                    .push_bind(as_of_us)
                    .push_bind(now_s)
                    .push_bind(now_s)
                    .push_bind(token);
            });
            q.push(
                " ON CONFLICT (source, filler_id) DO UPDATE SET \
                 placer_id = excluded.placer_id, sv_at_us = excluded.sv_at_us, sv_seq = excluded.sv_seq, \
                 status = excluded.status, start_at = excluded.start_at, end_at = excluded.end_at, \
                 site = excluded.site, time_zone = excluded.time_zone, location = excluded.location, \
                 practitioner = excluded.practitioner, service_type = excluded.service_type, reason = excluded.reason, \
                 patient_ref = excluded.patient_ref, given_name = excluded.given_name, family_name = excluded.family_name, \
                 phone_e164 = excluded.phone_e164, phone_problem = excluded.phone_problem, \
                 contact_hash = excluded.contact_hash, language = excluded.language, protected = excluded.protected, \
                 ehr_consent = excluded.ehr_consent, \
                 revision = appointments.revision + (excluded.content_hash <> appointments.content_hash), \
                 needs_plan = CASE WHEN excluded.content_hash <> appointments.content_hash THEN 1 ELSE appointments.needs_plan END, \
                 patient_cancelled_at = CASE WHEN excluded.start_at <> appointments.start_at THEN NULL ELSE appointments.patient_cancelled_at END, \
                 updated_at = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.updated_at ELSE appointments.updated_at END, \
                 change_token = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.change_token ELSE appointments.change_token END, \
                 content_hash = excluded.content_hash, \
                 seen_as_of_us = MAX(appointments.seen_as_of_us, excluded.seen_as_of_us) \
                 WHERE (excluded.sv_at_us, excluded.sv_seq) > (appointments.sv_at_us, appointments.sv_seq) \
                 RETURNING filler_id, change_token",
            );
            // Rows returned were inserted or moved to a newer version; only those whose content
            // changed carry this batch's token.
            let returned: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
            applied += returned.iter().filter(|(_, t)| *t == token).count() as u64;
            let newer: std::collections::HashSet<&str> =
                returned.iter().map(|(f, _)| f.as_str()).collect();
            let events: Vec<&AppointmentRow> = chunk
                .iter()
                .filter(|r| newer.contains(r.filler_id.as_str()))
                .collect();
            if !events.is_empty() {
                let mut e = QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO events (source, filler_id, sv_at_us, sv_seq, import_id, raw_ref, content_hash, received_at) ",
                );
                e.push_values(events, |mut b, r| {
                    b.push_bind(r.source.clone())
                        .push_bind(r.filler_id.clone())
                        .push_bind(r.sv_at_us)
                        .push_bind(r.sv_seq)
                        .push_bind(import_id)
                        .push_bind(r.raw_ref.clone())
                        .push_bind(r.content_hash.clone())
                        .push_bind(now_s);
                });
                e.build().execute(&mut *tx).await?;
            }

            // This feed has seen these appointments (also rows that lost to a newer version: the
            // appointment is still present in the feed's input).
            let keys: Vec<(&str, &str)> = chunk
                .iter()
                .map(|r| (r.source.as_str(), r.filler_id.as_str()))
                .collect();
            sqlx::query(
                "INSERT INTO appointment_feeds (feed, appointment_id, seen_as_of_us) \
                 SELECT ?1, a.id, ?2 FROM json_each(?3) j JOIN appointments a \
                 ON a.source = json_extract(j.value, '$[0]') AND a.filler_id = json_extract(j.value, '$[1]') \
                 WHERE true \
                 ON CONFLICT (feed, appointment_id) DO UPDATE SET \
                 seen_as_of_us = MAX(appointment_feeds.seen_as_of_us, excluded.seen_as_of_us)",
            )
            .bind(source)
            .bind(as_of_us)
            .bind(serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
        }
        let bad_ids: Vec<&str> = rejected
            .iter()
            .filter_map(|r| r.filler_id.as_deref())
            .collect();
        if touch_seen && !bad_ids.is_empty() {
            // Bad rows whose id was readable still prove the appointment is present in this
            // snapshot (only appointments this feed already knows can be meant).
            sqlx::query(
                "UPDATE appointment_feeds SET seen_as_of_us = ?1 WHERE feed = ?2 AND seen_as_of_us < ?1 \
                 AND appointment_id IN (SELECT a.id FROM appointments a JOIN appointment_feeds f \
                     ON f.appointment_id = a.id AND f.feed = ?2 \
                     WHERE a.filler_id IN (SELECT value FROM json_each(?3)))",
            )
            .bind(as_of_us)
            .bind(source)
            .bind(serde_json::to_string(&bad_ids).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *tx)
            .await?;
        }
        for r in rejected {
            sqlx::query(
                "INSERT INTO quarantine (source, import_id, location, column_name, reason, raw, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(source)
            .bind(import_id)
            .bind(&r.location)
            .bind(&r.column)
            .bind(&r.reason)
            .bind(&r.raw)
            .bind(now_s)
            .execute(&mut *tx)
            .await?;
        }
        let receipt = AcceptReceipt {
            applied,
            unchanged: rows.len() as u64 - applied,
            quarantined: rejected.len() as u64,
        };
        audit::append(
            &mut tx,
            now,
            &format!("connector:{source}"),
            "ingest",
            &import_id.map_or_else(|| "batch".to_string(), |i| format!("import:{i}")),
            json!({"applied": receipt.applied, "unchanged": receipt.unchanged, "quarantined": receipt.quarantined}),
        )
        .await?;
        tx.commit().await?;
        Ok(receipt)
    }

    /// Cancels the appointments that feed `source` listed in an earlier input but not in this snapshot
    /// (as of `as_of`), limited to future appointments (a "future appointments" export drops past
    /// visits) and optionally to `horizon` after `as_of` (an export that covers only the next N days).
    /// An appointment known only through another feed of the same system is never touched: this feed
    /// cannot testify to its absence. Nor is one changed after `as_of` (by any feed). The content hash
    /// is altered so that the appointment re-appearing unchanged counts as a change and is re-planned.
    pub async fn sweep_snapshot(
        &self,
        import_id: i64,
        source: &str,
        as_of: Timestamp,
        horizon_end: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let as_of_us = as_of.as_microsecond();
        let swept = sqlx::query(
            "UPDATE appointments SET status = 'cancelled', sv_at_us = ?1, sv_seq = 0, revision = revision + 1, \
             needs_plan = 1, updated_at = ?2, content_hash = 'swept:' || content_hash \
             WHERE id IN (SELECT appointment_id FROM appointment_feeds WHERE feed = ?3 AND seen_as_of_us < ?1) \
             AND sv_at_us < ?1 \
             AND status NOT IN ('cancelled', 'noshow', 'entered-in-error', 'fulfilled') \
             AND start_at > ?4 AND start_at <= ?5",
        )
        .bind(as_of_us)
        .bind(secs(now))
        .bind(source)
        .bind(secs(as_of))
        .bind(horizon_end.map_or(i64::MAX, secs))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        audit::append(
            &mut tx,
            now,
            &format!("connector:{source}"),
            "snapshot_sweep",
            &format!("import:{import_id}"),
            json!({"cancelled_absent": swept}),
        )
        .await?;
        tx.commit().await?;
        Ok(swept)
    }

    /// Records how an import ended.
    pub async fn finish_import(
        &self,
        import_id: i64,
        summary: &ImportSummary,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE imports SET finished_at = ?, rows_ok = ?, rows_bad = ?, rows_applied = ?, swept = ?, sweep_note = ? WHERE id = ?",
        )
        .bind(secs(now))
        .bind(summary.rows_ok as i64)
        .bind(summary.rows_bad as i64)
        .bind(summary.applied as i64)
        .bind(summary.swept as i64)
        .bind(&summary.sweep_note)
        .bind(import_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
