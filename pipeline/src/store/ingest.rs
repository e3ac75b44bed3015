//! Ingest SQL: versioned upserts of appointments, the event log, quarantine and snapshot sweeps.

use jiff::Timestamp;
use serde_json::json;

use medrelay_mapping::AppointmentStatus;

use super::on_tx;
use super::{Store, StoreError, StoreResult, audit, secs};
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
    /// `None`: the source says nothing; the stored flag stays.
    pub protected: Option<bool>,
    pub ehr_consent: Option<&'static str>,
    pub content_hash: String,
    pub raw_ref: String,
    /// The sender's message identity (HL7 MSH-3^4^10): a repeat of an applied message is skipped.
    pub message_id: Option<String>,
    /// A status change alone: only key, placer id, version, status and hash are meaningful.
    pub status_only: bool,
    /// The source gave the day only (`start_at` is its first instant; migration 0008).
    pub time_unknown: bool,
}

/// Inserts a new appointment or moves a stored one to a strictly newer source version. Returns the
/// row only when it was inserted or moved; `change_token` is this batch's only if the content changed.
const UPSERT_SQL: &str = "INSERT INTO appointments (source, filler_id, placer_id, sv_at_us, sv_seq, status, start_at, end_at, \
     site, time_zone, location, practitioner, service_type, reason, patient_ref, given_name, family_name, \
     phone_e164, phone_problem, contact_hash, language, protected, ehr_consent, content_hash, \
     seen_as_of_us, created_at, updated_at, change_token, ehr_consent_at_us, ehr_consent_feed, protected_feed, time_unknown) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
     ?21, COALESCE(?22, 0), ?23, ?24, ?25, ?26, ?26, ?27, CASE WHEN ?23 IS NULL THEN NULL ELSE ?4 END, CASE WHEN ?23 IS NULL THEN NULL ELSE ?28 END, \
     CASE WHEN ?22 IS NULL THEN NULL ELSE ?28 END, ?29) \
     ON CONFLICT (source, filler_id) DO UPDATE SET \
     placer_id = excluded.placer_id, sv_at_us = excluded.sv_at_us, sv_seq = excluded.sv_seq, \
     status = excluded.status, start_at = excluded.start_at, end_at = excluded.end_at, \
     time_unknown = excluded.time_unknown, site = excluded.site, time_zone = excluded.time_zone, location = excluded.location, \
     practitioner = excluded.practitioner, service_type = excluded.service_type, reason = excluded.reason, \
     patient_ref = excluded.patient_ref, given_name = excluded.given_name, family_name = excluded.family_name, \
     phone_e164 = excluded.phone_e164, phone_problem = excluded.phone_problem, \
     contact_hash = excluded.contact_hash, language = excluded.language, \
     protected = CASE WHEN ?22 IS NULL THEN appointments.protected ELSE excluded.protected END, \
     ehr_consent = COALESCE(excluded.ehr_consent, appointments.ehr_consent), \
     ehr_consent_at_us = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS appointments.ehr_consent \
       THEN appointments.ehr_consent_at_us ELSE excluded.sv_at_us END, \
     ehr_consent_feed = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS appointments.ehr_consent \
       THEN appointments.ehr_consent_feed ELSE excluded.ehr_consent_feed END, \
     protected_feed = CASE WHEN ?22 IS NULL OR excluded.protected = appointments.protected \
       THEN COALESCE(appointments.protected_feed, excluded.protected_feed) ELSE excluded.protected_feed END, \
     revision = appointments.revision + (excluded.content_hash <> appointments.content_hash), \
     location_rev = CASE WHEN excluded.start_at <> appointments.start_at THEN 0 \
       ELSE appointments.location_rev + (excluded.location IS NOT NULL AND appointments.location IS NOT NULL \
       AND excluded.location <> appointments.location \
       AND excluded.status = 'booked' AND appointments.status = 'booked') END, \
     needs_plan = CASE WHEN excluded.content_hash <> appointments.content_hash THEN 1 ELSE appointments.needs_plan END, \
     patient_cancelled_at = CASE WHEN excluded.start_at <> appointments.start_at THEN NULL ELSE appointments.patient_cancelled_at END, \
     updated_at = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.updated_at ELSE appointments.updated_at END, \
     change_token = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.change_token ELSE appointments.change_token END, \
     content_hash = excluded.content_hash, \
     seen_as_of_us = MAX(appointments.seen_as_of_us, excluded.seen_as_of_us) \
     WHERE (excluded.sv_at_us, excluded.sv_seq) > (appointments.sv_at_us, appointments.sv_seq) \
     RETURNING id, change_token";

/// Moves a stored appointment to a strictly newer version by a status change alone (no timing,
/// no patient). The content hash becomes the change's own, so a repeat is unchanged and a later
/// full description of the appointment is a change. Never inserts: there is nothing to remind.
const STATUS_SQL: &str = "UPDATE appointments SET \
     placer_id = COALESCE(?3, placer_id), sv_at_us = ?4, sv_seq = ?5, status = ?6, \
     revision = revision + (content_hash <> ?7), \
     needs_plan = CASE WHEN content_hash <> ?7 THEN 1 ELSE needs_plan END, \
     updated_at = CASE WHEN content_hash <> ?7 THEN ?8 ELSE updated_at END, \
     change_token = CASE WHEN content_hash <> ?7 THEN ?9 ELSE change_token END, \
     content_hash = ?7 \
     WHERE source = ?1 AND filler_id = ?2 AND (?4, ?5) > (sv_at_us, sv_seq) \
     RETURNING id, change_token";

/// One row per applied event.
const EVENT_SQL: &str = "INSERT INTO events (source, filler_id, sv_at_us, sv_seq, import_id, raw_ref, content_hash, received_at, message_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// A message already applied to this appointment, sent again (same message identity, same content).
const REPEAT_SQL: &str = "SELECT 1 FROM events WHERE source = ?1 AND filler_id = ?2 AND message_id = ?3 AND content_hash = ?4 LIMIT 1";

/// An event that changed nothing although it differed from what is stored: older than the stored
/// version, or a status change for an appointment that is not stored.
const IGNORED_SQL: &str = "INSERT INTO ignored_events (feed, source, filler_id, sv_at_us, sv_seq, stored_sv_at_us, \
     status, stored_status, reason, import_id, raw_ref, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// This feed has seen this appointment (also when the row lost to a newer version: the appointment
/// is still present in the feed's input).
const FEED_SQL: &str = "INSERT INTO appointment_feeds (feed, appointment_id, seen_as_of_us) VALUES (?1, ?2, ?3) \
     ON CONFLICT (feed, appointment_id) DO UPDATE SET \
     seen_as_of_us = MAX(appointment_feeds.seen_as_of_us, excluded.seen_as_of_us)";

/// The feed delivered something now (the `feed_silent` alert's evidence; migration 0013).
pub(crate) const FEED_ACTIVITY_SQL: &str = "INSERT INTO feed_activity (feed, last_input_at) VALUES (?1, ?2) \
     ON CONFLICT (feed) DO UPDATE SET last_input_at = MAX(feed_activity.last_input_at, excluded.last_input_at)";

/// Batches larger than this get a write transaction of their own on SQLite.
const ALONE_FROM_ROWS: usize = 64;

/// What a batch's rows did (see [`AcceptReceipt`]).
#[derive(Default)]
pub(crate) struct RowCounts {
    pub(crate) applied: u64,
    pub(crate) older: u64,
    pub(crate) unknown: u64,
}

/// Applies a batch row by row with prepared statements: upsert (or status update), event (when
/// applied), feed mark; a row that differs from the stored appointment but is older is recorded in
/// `ignored_events` (with an alert when it would have cancelled a booked appointment), never
/// counted as unchanged.
///
/// This is the bulk-import hot path (BENCHMARKS.md): one prepared statement per kind, executed in a
/// loop on the transaction's own connection, measured about twice as fast as multi-row statements
/// through sqlx's worker thread.
fn upsert_rows(
    conn: &rusqlite::Connection,
    import_id: Option<i64>,
    feed: &str,
    as_of_us: i64,
    now_s: i64,
    token: i64,
    rows: &[AppointmentRow],
) -> StoreResult<RowCounts> {
    use rusqlite::{OptionalExtension, params};
    let mut upsert = conn.prepare(UPSERT_SQL)?;
    let mut status_update = conn.prepare(STATUS_SQL)?;
    let mut event = conn.prepare(EVENT_SQL)?;
    let mut seen = conn.prepare(FEED_SQL)?;
    let mut repeat = conn.prepare(REPEAT_SQL)?;
    let mut ignored = conn.prepare(IGNORED_SQL)?;
    let mut lookup = conn.prepare(
        "SELECT id, sv_at_us, status, content_hash FROM appointments WHERE source = ?1 AND filler_id = ?2",
    )?;
    let mut counts = RowCounts::default();
    for r in rows {
        if let Some(message_id) = &r.message_id
            && repeat
                .query_row(
                    params![r.source, r.filler_id, message_id, r.content_hash],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
        {
            // The same message again (a resend, a re-imported file): unchanged, whenever it came.
            if let Some((id, ..)) = lookup
                .query_row(params![r.source, r.filler_id], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?
            {
                seen.execute(params![feed, id, as_of_us])?;
            }
            continue;
        }
        let moved: Option<(i64, i64)> = if r.status_only {
            status_update
                .query_row(
                    params![
                        r.source,
                        r.filler_id,
                        r.placer_id,
                        r.sv_at_us,
                        r.sv_seq,
                        r.status,
                        r.content_hash,
                        now_s,
                        token,
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?
        } else {
            upsert
                .query_row(
                    params![
                        r.source,
                        r.filler_id,
                        r.placer_id,
                        r.sv_at_us,
                        r.sv_seq,
                        r.status,
                        r.start_at,
                        r.end_at,
                        r.site,
                        r.time_zone,
                        r.location,
                        r.practitioner,
                        r.service_type,
                        r.reason,
                        r.patient_ref,
                        r.given_name,
                        r.family_name,
                        r.phone_e164,
                        r.phone_problem,
                        r.contact_hash,
                        r.language,
                        r.protected,
                        r.ehr_consent,
                        r.content_hash,
                        as_of_us,
                        now_s,
                        token,
                        feed,
                        r.time_unknown,
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?
        };
        let id = match moved {
            Some((id, change_token)) => {
                if change_token == token {
                    counts.applied += 1;
                }
                event.execute(params![
                    r.source,
                    r.filler_id,
                    r.sv_at_us,
                    r.sv_seq,
                    import_id,
                    r.raw_ref,
                    r.content_hash,
                    now_s,
                    r.message_id,
                ])?;
                id
            }
            None => {
                let stored: Option<(i64, i64, String, String)> = lookup
                    .query_row(params![r.source, r.filler_id], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })
                    .optional()?;
                let Some((id, stored_at_us, stored_status, stored_hash)) = stored else {
                    // Only a status change can miss: there is no appointment to change.
                    counts.unknown += 1;
                    ignored.execute(params![
                        feed,
                        r.source,
                        r.filler_id,
                        r.sv_at_us,
                        r.sv_seq,
                        Option::<i64>::None,
                        r.status,
                        Option::<String>::None,
                        "unknown",
                        import_id,
                        r.raw_ref,
                        now_s,
                    ])?;
                    continue;
                };
                let same =
                    stored_hash == r.content_hash || (r.status_only && stored_status == r.status);
                if !same {
                    counts.older += 1;
                    ignored.execute(params![
                        feed,
                        r.source,
                        r.filler_id,
                        r.sv_at_us,
                        r.sv_seq,
                        stored_at_us,
                        r.status,
                        stored_status,
                        "older",
                        import_id,
                        r.raw_ref,
                        now_s,
                    ])?;
                    let cancels = AppointmentStatus::from_code(r.status)
                        .is_some_and(AppointmentStatus::is_withdrawn);
                    let booked = AppointmentStatus::from_code(&stored_status)
                        .is_some_and(|s| !s.is_withdrawn());
                    if cancels && booked {
                        conn.execute(
                            "INSERT INTO alerts (at, kind, detail) VALUES (?1, 'older_cancellation_ignored', ?2)",
                            params![
                                now_s,
                                format!(
                                    "feed {feed}: a `{}` event for {}/{} ({}) is older than the stored version and was ignored; the appointment stays {stored_status}: check the sender's clock or the connector's `ordering`",
                                    r.status, r.source, r.filler_id, r.raw_ref
                                )
                            ],
                        )?;
                    }
                }
                id
            }
        };
        seen.execute(params![feed, id, as_of_us])?;
    }
    Ok(counts)
}

/// Rewrites the filler id of rows that name an appointment only by its placer id (alias): a row
/// whose (system, filler id) is unknown, but whose placer id matches an appointment of the same
/// system (stored, or earlier in this batch), updates that appointment instead of creating a twin.
/// One query for the whole batch; `None` when nothing needed rewriting.
async fn resolve_placer_aliases(
    tx: &mut super::Tx,
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
    let found: Vec<(i64, bool, Option<String>)> = on_tx!(tx, |c, pg| {
        sqlx::query_as(if pg {
            "SELECT (j->>0)::BIGINT, EXISTS (SELECT 1 FROM appointments b WHERE b.source = j->>1 \
             AND b.filler_id = j->>2), (SELECT a.filler_id FROM appointments a WHERE a.source = j->>1 \
             AND a.placer_id = j->>3 ORDER BY a.id LIMIT 1) FROM jsonb_array_elements($1::jsonb) j"
        } else {
            "SELECT json_extract(j.value, '$[0]'),          EXISTS (SELECT 1 FROM appointments b WHERE b.source = json_extract(j.value, '$[1]')                  AND b.filler_id = json_extract(j.value, '$[2]')),          (SELECT a.filler_id FROM appointments a WHERE a.source = json_extract(j.value, '$[1]')                  AND a.placer_id = json_extract(j.value, '$[3]') ORDER BY a.id LIMIT 1)          FROM json_each($1) j"
        },
    )
    .bind(json)
    .fetch_all(&mut *c).await
    })?;
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
        let mut tx = self.write_tx().await?;
        let id = on_tx!(tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO imports (source, input_name, input_sha256, mode, as_of_us, started_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(&info.source)
        .bind(&info.input_name)
        .bind(&info.input_sha256)
        .bind(info.mode.as_str())
        .bind(info.as_of.as_microsecond())
        .bind(secs(now))
        .fetch_one(&mut *c).await
        })?;
        // An import that starts is input, even one that turns out empty.
        on_tx!(tx, |c, pg| sqlx::query(if pg {
            super::ingest_pg::FEED_ACTIVITY_SQL
        } else {
            FEED_ACTIVITY_SQL
        })
        .bind(&info.source)
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
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
        // A message or two (MLLP, a notification) shares its commit with whoever else is
        // writing; an import batch gets a transaction of its own (see `Writer::begin_alone`).
        let mut tx = if rows.len() + rejected.len() > ALONE_FROM_ROWS {
            self.write_tx_alone().await?
        } else {
            self.write_tx().await?
        };
        let resolved = resolve_placer_aliases(&mut tx, rows).await?;
        let rows = resolved.as_deref().unwrap_or(rows);
        let token: i64 = on_tx!(tx, |c| sqlx::query_scalar(
            "INSERT INTO ingest_batches (import_id, committed_at) VALUES ($1, $2) RETURNING id",
        )
        .bind(import_id)
        .bind(now_s)
        .fetch_one(&mut *c)
        .await)?;
        let counts = match tx.conn() {
            super::Conn::Postgres(c) => {
                super::ingest_pg::upsert_rows(c, import_id, source, as_of_us, now_s, token, rows)
                    .await?
            }
            super::Conn::Sqlite(c) => {
                // The per-row statements run on the raw SQLite handle of this very transaction (see
                // `upsert_rows`): no statement text per batch, no argument boxing, no worker hand-offs.
                let mut handle = c.lock_handle().await?;
                // SAFETY: the handle is locked away from sqlx's worker for the lifetime of `handle`,
                // and `conn` (which does not close the handle on drop) is dropped before it.
                let conn =
                    unsafe { rusqlite::Connection::from_handle(handle.as_raw_handle().as_ptr()) }
                        .map_err(StoreError::from)?;
                let run = || upsert_rows(&conn, import_id, source, as_of_us, now_s, token, rows);
                // A batch is tens of milliseconds of synchronous SQLite work: on the service's
                // multi-threaded runtime, let other tasks (webhooks, the sender) move to another worker.
                let counts = match tokio::runtime::Handle::current().runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
                    _ => run(),
                }?;
                drop(conn);
                counts
            }
        };
        let bad_ids: Vec<&str> = rejected
            .iter()
            .filter_map(|r| r.filler_id.as_deref())
            .collect();
        if touch_seen && !bad_ids.is_empty() {
            // Bad rows whose id was readable still prove the appointment is present in this
            // snapshot (only appointments this feed already knows can be meant).
            on_tx!(tx, |c, pg| {
                sqlx::query(if pg {
                "UPDATE appointment_feeds SET seen_as_of_us = $1 WHERE feed = $2 AND seen_as_of_us < $1 \
                 AND appointment_id IN (SELECT a.id FROM appointments a JOIN appointment_feeds f \
                     ON f.appointment_id = a.id AND f.feed = $2 \
                     WHERE a.filler_id IN (SELECT jsonb_array_elements_text($3::jsonb)))"
            } else {
            "UPDATE appointment_feeds SET seen_as_of_us = $1 WHERE feed = $2 AND seen_as_of_us < $1 \
                 AND appointment_id IN (SELECT a.id FROM appointments a JOIN appointment_feeds f \
                     ON f.appointment_id = a.id AND f.feed = $2 \
                     WHERE a.filler_id IN (SELECT value FROM json_each($3)))"
            },
            )
            .bind(as_of_us)
            .bind(source)
            .bind(serde_json::to_string(&bad_ids).unwrap_or_else(|_| "[]".into()))
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
        }
        for r in rejected {
            on_tx!(tx, |c| {
                sqlx::query(
                "INSERT INTO quarantine (source, import_id, location, column_name, reason, raw, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(source)
            .bind(import_id)
            .bind(&r.location)
            .bind(&r.column)
            .bind(&r.reason)
            .bind(&r.raw)
            .bind(now_s)
            .execute(&mut *c).await.map(|r| r.rows_affected())
            })?;
        }
        on_tx!(tx, |c, pg| sqlx::query(if pg {
            super::ingest_pg::FEED_ACTIVITY_SQL
        } else {
            FEED_ACTIVITY_SQL
        })
        .bind(source)
        .bind(now_s)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected()))?;
        let receipt = AcceptReceipt {
            applied: counts.applied,
            unchanged: rows.len() as u64 - counts.applied - counts.older - counts.unknown,
            older_ignored: counts.older,
            unknown_ignored: counts.unknown,
            quarantined: rejected.len() as u64,
        };
        audit::append(
            &mut tx,
            &self.keys,
            now,
            &format!("connector:{source}"),
            "ingest",
            &import_id.map_or_else(|| "batch".to_string(), |i| format!("import:{i}")),
            json!({"applied": receipt.applied, "unchanged": receipt.unchanged, "older_ignored": receipt.older_ignored, "unknown_ignored": receipt.unknown_ignored, "quarantined": receipt.quarantined}),
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
        let swept = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE appointments SET status = 'cancelled', sv_at_us = $1, sv_seq = 0, revision = revision + 1, \
             needs_plan = 1, updated_at = $2, content_hash = 'swept:' || content_hash \
             WHERE id IN (SELECT appointment_id FROM appointment_feeds WHERE feed = $3 AND seen_as_of_us < $1) \
             AND sv_at_us < $1 \
             AND status NOT IN ('cancelled', 'noshow', 'entered-in-error', 'fulfilled') \
             AND start_at > $4 AND start_at <= $5",
        )
        .bind(as_of_us)
        .bind(secs(now))
        .bind(source)
        .bind(secs(as_of))
        .bind(horizon_end.map_or(i64::MAX, secs))
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        audit::append(
            &mut tx,
            &self.keys,
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
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE imports SET finished_at = $1, rows_ok = $2, rows_bad = $3, rows_applied = $4, rows_older = $5, rows_unknown = $6, swept = $7, sweep_note = $8 WHERE id = $9",
        )
        .bind(secs(now))
        .bind(summary.rows_ok as i64)
        .bind(summary.rows_bad as i64)
        .bind(summary.applied as i64)
        .bind(summary.older_ignored as i64)
        .bind(summary.unknown_ignored as i64)
        .bind(summary.swept as i64)
        .bind(&summary.sweep_note)
        .bind(import_id)
        .execute(&mut *c).await.map(|r| r.rows_affected())
        })?;
        tx.commit().await
    }
}
