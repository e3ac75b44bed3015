//! The PostgreSQL side of the batch upsert (`ingest::accept_rows`): the same statements as the
//! SQLite hot path (which runs them through rusqlite on the writer's handle), in PostgreSQL's
//! dialect (`GREATEST`, `IS NOT DISTINCT FROM`, boolean to integer casts), executed through sqlx.

use sqlx::PgConnection;

use super::StoreResult;
use super::ingest::{AppointmentRow, RowCounts};
use medrelay_mapping::AppointmentStatus;

/// PostgreSQL form of `ingest::UPSERT_SQL`.
pub(crate) const UPSERT_SQL: &str = "INSERT INTO appointments (source, filler_id, placer_id, sv_at_us, sv_seq, status, start_at, end_at, \
     site, time_zone, location, practitioner, service_type, reason, patient_ref, given_name, family_name, \
     phone_e164, phone_problem, contact_hash, language, protected, ehr_consent, content_hash, \
     seen_as_of_us, created_at, updated_at, change_token, ehr_consent_at_us, ehr_consent_feed, protected_feed, time_unknown) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
     $21, COALESCE($22, 0), $23, $24, $25, $26, $26, $27, CASE WHEN $23 IS NULL THEN NULL ELSE $4 END, CASE WHEN $23 IS NULL THEN NULL ELSE $28 END, \
     CASE WHEN $22 IS NULL THEN NULL ELSE $28 END, $29) \
     ON CONFLICT (source, filler_id) DO UPDATE SET \
     placer_id = excluded.placer_id, sv_at_us = excluded.sv_at_us, sv_seq = excluded.sv_seq, \
     status = excluded.status, start_at = excluded.start_at, end_at = excluded.end_at, \
     time_unknown = excluded.time_unknown, site = excluded.site, time_zone = excluded.time_zone, location = excluded.location, \
     practitioner = excluded.practitioner, service_type = excluded.service_type, reason = excluded.reason, \
     patient_ref = excluded.patient_ref, given_name = excluded.given_name, family_name = excluded.family_name, \
     phone_e164 = excluded.phone_e164, phone_problem = excluded.phone_problem, \
     contact_hash = excluded.contact_hash, language = excluded.language, \
     protected = CASE WHEN $22 IS NULL THEN appointments.protected ELSE excluded.protected END, \
     ehr_consent = COALESCE(excluded.ehr_consent, appointments.ehr_consent), \
     ehr_consent_at_us = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS NOT DISTINCT FROM appointments.ehr_consent \
       THEN appointments.ehr_consent_at_us ELSE excluded.sv_at_us END, \
     ehr_consent_feed = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS NOT DISTINCT FROM appointments.ehr_consent \
       THEN appointments.ehr_consent_feed ELSE excluded.ehr_consent_feed END, \
     protected_feed = CASE WHEN $22 IS NULL OR excluded.protected = appointments.protected \
       THEN COALESCE(appointments.protected_feed, excluded.protected_feed) ELSE excluded.protected_feed END, \
     revision = appointments.revision + (excluded.content_hash <> appointments.content_hash)::INT, \
     location_rev = CASE WHEN excluded.start_at <> appointments.start_at THEN 0 \
       ELSE appointments.location_rev + (excluded.location IS NOT NULL AND appointments.location IS NOT NULL \
       AND excluded.location <> appointments.location \
       AND excluded.status = 'booked' AND appointments.status = 'booked')::INT END, \
     needs_plan = CASE WHEN excluded.content_hash <> appointments.content_hash THEN 1 ELSE appointments.needs_plan END, \
     patient_cancelled_at = CASE WHEN excluded.start_at <> appointments.start_at THEN NULL ELSE appointments.patient_cancelled_at END, \
     updated_at = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.updated_at ELSE appointments.updated_at END, \
     change_token = CASE WHEN excluded.content_hash <> appointments.content_hash THEN excluded.change_token ELSE appointments.change_token END, \
     content_hash = excluded.content_hash, \
     seen_as_of_us = GREATEST(appointments.seen_as_of_us, excluded.seen_as_of_us) \
     WHERE (excluded.sv_at_us, excluded.sv_seq) > (appointments.sv_at_us, appointments.sv_seq) \
     RETURNING id, change_token";

/// PostgreSQL form of `ingest::STATUS_SQL`.
pub(crate) const STATUS_SQL: &str = "UPDATE appointments SET \
     placer_id = COALESCE($3, placer_id), sv_at_us = $4, sv_seq = $5, status = $6, \
     revision = revision + (content_hash <> $7)::INT, \
     needs_plan = CASE WHEN content_hash <> $7 THEN 1 ELSE needs_plan END, \
     updated_at = CASE WHEN content_hash <> $7 THEN $8 ELSE updated_at END, \
     change_token = CASE WHEN content_hash <> $7 THEN $9 ELSE change_token END, \
     content_hash = $7 \
     WHERE source = $1 AND filler_id = $2 AND ($4, $5) > (sv_at_us, sv_seq) \
     RETURNING id, change_token";

/// PostgreSQL form of `ingest::EVENT_SQL`.
pub(crate) const EVENT_SQL: &str = "INSERT INTO events (source, filler_id, sv_at_us, sv_seq, import_id, raw_ref, content_hash, received_at, message_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// PostgreSQL form of `ingest::REPEAT_SQL`.
pub(crate) const REPEAT_SQL: &str = "SELECT 1 FROM events WHERE source = $1 AND filler_id = $2 AND message_id = $3 AND content_hash = $4 LIMIT 1";

/// PostgreSQL form of `ingest::IGNORED_SQL`.
pub(crate) const IGNORED_SQL: &str = "INSERT INTO ignored_events (feed, source, filler_id, sv_at_us, sv_seq, stored_sv_at_us, \
     status, stored_status, reason, import_id, raw_ref, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// PostgreSQL form of `ingest::FEED_SQL`.
pub(crate) const FEED_SQL: &str = "INSERT INTO appointment_feeds (feed, appointment_id, seen_as_of_us) VALUES ($1, $2, $3) \
     ON CONFLICT (feed, appointment_id) DO UPDATE SET \
     seen_as_of_us = GREATEST(appointment_feeds.seen_as_of_us, excluded.seen_as_of_us)";

/// PostgreSQL form of `ingest::FEED_ACTIVITY_SQL`.
pub(crate) const FEED_ACTIVITY_SQL: &str = "INSERT INTO feed_activity (feed, last_input_at) VALUES ($1, $2) \
     ON CONFLICT (feed) DO UPDATE SET last_input_at = GREATEST(feed_activity.last_input_at, excluded.last_input_at)";

/// [`super::ingest`]'s `upsert_rows` on PostgreSQL: the same rows, statements and counts, one
/// round trip per statement inside the caller's transaction.
pub(crate) async fn upsert_rows(
    c: &mut PgConnection,
    import_id: Option<i64>,
    feed: &str,
    as_of_us: i64,
    now_s: i64,
    token: i64,
    rows: &[AppointmentRow],
) -> StoreResult<RowCounts> {
    let mut counts = RowCounts::default();
    for r in rows {
        if let Some(message_id) = &r.message_id {
            let repeat: Option<i32> = sqlx::query_scalar(REPEAT_SQL)
                .bind(&r.source)
                .bind(&r.filler_id)
                .bind(message_id)
                .bind(&r.content_hash)
                .fetch_optional(&mut *c)
                .await?;
            if repeat.is_some() {
                // The same message again (a resend, a re-imported file): unchanged.
                let id: Option<i64> = sqlx::query_scalar(
                    "SELECT id FROM appointments WHERE source = $1 AND filler_id = $2",
                )
                .bind(&r.source)
                .bind(&r.filler_id)
                .fetch_optional(&mut *c)
                .await?;
                if let Some(id) = id {
                    seen(c, feed, id, as_of_us).await?;
                }
                continue;
            }
        }
        let moved: Option<(i64, i64)> = if r.status_only {
            sqlx::query_as(STATUS_SQL)
                .bind(&r.source)
                .bind(&r.filler_id)
                .bind(&r.placer_id)
                .bind(r.sv_at_us)
                .bind(r.sv_seq)
                .bind(r.status)
                .bind(&r.content_hash)
                .bind(now_s)
                .bind(token)
                .fetch_optional(&mut *c)
                .await?
        } else {
            sqlx::query_as(UPSERT_SQL)
                .bind(&r.source)
                .bind(&r.filler_id)
                .bind(&r.placer_id)
                .bind(r.sv_at_us)
                .bind(r.sv_seq)
                .bind(r.status)
                .bind(r.start_at)
                .bind(r.end_at)
                .bind(&r.site)
                .bind(&r.time_zone)
                .bind(&r.location)
                .bind(&r.practitioner)
                .bind(&r.service_type)
                .bind(&r.reason)
                .bind(&r.patient_ref)
                .bind(&r.given_name)
                .bind(&r.family_name)
                .bind(&r.phone_e164)
                .bind(&r.phone_problem)
                .bind(&r.contact_hash)
                .bind(&r.language)
                .bind(r.protected.map(i64::from))
                .bind(r.ehr_consent)
                .bind(&r.content_hash)
                .bind(as_of_us)
                .bind(now_s)
                .bind(token)
                .bind(feed)
                .bind(i64::from(r.time_unknown))
                .fetch_optional(&mut *c)
                .await?
        };
        let id = match moved {
            Some((id, change_token)) => {
                if change_token == token {
                    counts.applied += 1;
                }
                sqlx::query(EVENT_SQL)
                    .bind(&r.source)
                    .bind(&r.filler_id)
                    .bind(r.sv_at_us)
                    .bind(r.sv_seq)
                    .bind(import_id)
                    .bind(&r.raw_ref)
                    .bind(&r.content_hash)
                    .bind(now_s)
                    .bind(&r.message_id)
                    .execute(&mut *c)
                    .await?;
                id
            }
            None => {
                let stored: Option<(i64, i64, String, String)> = sqlx::query_as(
                    "SELECT id, sv_at_us, status, content_hash FROM appointments WHERE source = $1 AND filler_id = $2",
                )
                .bind(&r.source)
                .bind(&r.filler_id)
                .fetch_optional(&mut *c)
                .await?;
                let Some((id, stored_at_us, stored_status, stored_hash)) = stored else {
                    counts.unknown += 1;
                    ignored(c, feed, r, None, None, "unknown", import_id, now_s).await?;
                    continue;
                };
                let same =
                    stored_hash == r.content_hash || (r.status_only && stored_status == r.status);
                if !same {
                    counts.older += 1;
                    ignored(
                        c,
                        feed,
                        r,
                        Some(stored_at_us),
                        Some(&stored_status),
                        "older",
                        import_id,
                        now_s,
                    )
                    .await?;
                    let cancels = AppointmentStatus::from_code(r.status)
                        .is_some_and(AppointmentStatus::is_withdrawn);
                    let booked = AppointmentStatus::from_code(&stored_status)
                        .is_some_and(|s| !s.is_withdrawn());
                    if cancels && booked {
                        sqlx::query(
                            "INSERT INTO alerts (at, kind, detail) VALUES ($1, 'older_cancellation_ignored', $2)",
                        )
                        .bind(now_s)
                        .bind(format!(
                            "feed {feed}: a `{}` event for {}/{} ({}) is older than the stored version and was ignored; the appointment stays {stored_status}: check the sender's clock or the connector's `ordering`",
                            r.status, r.source, r.filler_id, r.raw_ref
                        ))
                        .execute(&mut *c)
                        .await?;
                    }
                }
                id
            }
        };
        seen(c, feed, id, as_of_us).await?;
    }
    Ok(counts)
}

async fn seen(c: &mut PgConnection, feed: &str, id: i64, as_of_us: i64) -> StoreResult<()> {
    sqlx::query(FEED_SQL)
        .bind(feed)
        .bind(id)
        .bind(as_of_us)
        .execute(&mut *c)
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn ignored(
    c: &mut PgConnection,
    feed: &str,
    r: &AppointmentRow,
    stored_at_us: Option<i64>,
    stored_status: Option<&str>,
    reason: &str,
    import_id: Option<i64>,
    now_s: i64,
) -> StoreResult<()> {
    sqlx::query(IGNORED_SQL)
        .bind(feed)
        .bind(&r.source)
        .bind(&r.filler_id)
        .bind(r.sv_at_us)
        .bind(r.sv_seq)
        .bind(stored_at_us)
        .bind(r.status)
        .bind(stored_status)
        .bind(reason)
        .bind(import_id)
        .bind(&r.raw_ref)
        .bind(now_s)
        .execute(&mut *c)
        .await?;
    Ok(())
}
