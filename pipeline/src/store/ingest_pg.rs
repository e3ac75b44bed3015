//! The PostgreSQL side of the batch upsert (`ingest::accept_rows`): the same semantics as the
//! SQLite hot path (which runs prepared statements row by row through rusqlite on the writer's
//! handle), as set-based statements over column arrays (`UNNEST`) in PostgreSQL's dialect
//! (`GREATEST`, `IS NOT DISTINCT FROM`, boolean to integer casts): a network round trip costs
//! more than SQLite's function call, so the batch travels once per statement, not once per row.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::StoreResult;
use super::ingest::{AppointmentRow, RowCounts};
use medrelay_mapping::AppointmentStatus;

/// PostgreSQL form of `ingest::IGNORED_SQL`.
pub(crate) const IGNORED_SQL: &str = "INSERT INTO ignored_events (feed, source, filler_id, sv_at_us, sv_seq, stored_sv_at_us, \
     status, stored_status, reason, import_id, raw_ref, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// PostgreSQL form of `ingest::FEED_ACTIVITY_SQL`.
pub(crate) const FEED_ACTIVITY_SQL: &str = "INSERT INTO feed_activity (feed, last_input_at) VALUES ($1, $2) \
     ON CONFLICT (feed) DO UPDATE SET last_input_at = GREATEST(feed_activity.last_input_at, excluded.last_input_at)";

/// [`super::ingest`]'s `upsert_rows` on PostgreSQL, set-based: the batch goes to the server as
/// column arrays (`UNNEST`), a handful of statements per batch instead of three or four round trips
/// per row (BENCHMARKS.md, "CSV import on PostgreSQL").
///
/// The outcome equals the row-by-row order of the SQLite path. `ON CONFLICT DO UPDATE` may touch a
/// row only once per statement, so the batch runs in rounds: round k holds the k-th occurrence of
/// each appointment key, and rows of different keys never affect each other.
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
    let mut occurrences: HashMap<(&str, &str), usize> = HashMap::with_capacity(rows.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let k = occurrences
            .entry((r.source.as_str(), r.filler_id.as_str()))
            .or_insert(0);
        if rounds.len() <= *k {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    let batch = Batch {
        import_id,
        feed,
        as_of_us,
        now_s,
        token,
    };
    for round in &rounds {
        upsert_round(c, &batch, rows, round, &mut counts).await?;
    }
    Ok(counts)
}

/// What every row of a batch shares.
struct Batch<'a> {
    import_id: Option<i64>,
    feed: &'a str,
    as_of_us: i64,
    now_s: i64,
    token: i64,
}

/// The array form of the full upsert: `UPSERT_SQL` with each `$n` a column of `UNNEST`. Where the
/// row form asks whether the source said anything about protection (`$22 IS NULL`), this asks
/// `excluded.protected_feed IS NULL`, which the insert sets to NULL exactly then.
const UPSERT_ARRAYS_SQL: &str = "INSERT INTO appointments (source, filler_id, placer_id, sv_at_us, sv_seq, status, start_at, end_at, \
     site, time_zone, location, practitioner, service_type, reason, patient_ref, given_name, family_name, \
     phone_e164, phone_problem, contact_hash, language, protected, ehr_consent, content_hash, \
     seen_as_of_us, created_at, updated_at, change_token, ehr_consent_at_us, ehr_consent_feed, protected_feed, time_unknown) \
     SELECT t.source, t.filler_id, t.placer_id, t.sv_at_us, t.sv_seq, t.status, t.start_at, t.end_at, \
     t.site, t.time_zone, t.location, t.practitioner, t.service_type, t.reason, t.patient_ref, t.given_name, t.family_name, \
     t.phone_e164, t.phone_problem, t.contact_hash, t.language, COALESCE(t.protected, 0), t.ehr_consent, t.content_hash, \
     $24, $25, $25, $26, CASE WHEN t.ehr_consent IS NULL THEN NULL ELSE t.sv_at_us END, \
     CASE WHEN t.ehr_consent IS NULL THEN NULL ELSE $27 END, CASE WHEN t.protected IS NULL THEN NULL ELSE $27 END, t.time_unknown \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[], \
     $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::text[], \
     $18::text[], $19::text[], $20::text[], $21::text[], $22::bigint[], $23::text[], $28::text[], $29::bigint[]) \
     AS t(source, filler_id, placer_id, sv_at_us, sv_seq, status, start_at, end_at, site, time_zone, location, \
     practitioner, service_type, reason, patient_ref, given_name, family_name, phone_e164, phone_problem, \
     contact_hash, language, protected, ehr_consent, content_hash, time_unknown) \
     ON CONFLICT (source, filler_id) DO UPDATE SET \
     placer_id = excluded.placer_id, sv_at_us = excluded.sv_at_us, sv_seq = excluded.sv_seq, \
     status = excluded.status, start_at = excluded.start_at, end_at = excluded.end_at, \
     time_unknown = excluded.time_unknown, site = excluded.site, time_zone = excluded.time_zone, location = excluded.location, \
     practitioner = excluded.practitioner, service_type = excluded.service_type, reason = excluded.reason, \
     patient_ref = excluded.patient_ref, given_name = excluded.given_name, family_name = excluded.family_name, \
     phone_e164 = excluded.phone_e164, phone_problem = excluded.phone_problem, \
     contact_hash = excluded.contact_hash, language = excluded.language, \
     protected = CASE WHEN excluded.protected_feed IS NULL THEN appointments.protected ELSE excluded.protected END, \
     ehr_consent = COALESCE(excluded.ehr_consent, appointments.ehr_consent), \
     ehr_consent_at_us = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS NOT DISTINCT FROM appointments.ehr_consent \
       THEN appointments.ehr_consent_at_us ELSE excluded.sv_at_us END, \
     ehr_consent_feed = CASE WHEN excluded.ehr_consent IS NULL OR excluded.ehr_consent IS NOT DISTINCT FROM appointments.ehr_consent \
       THEN appointments.ehr_consent_feed ELSE excluded.ehr_consent_feed END, \
     protected_feed = CASE WHEN excluded.protected_feed IS NULL OR excluded.protected = appointments.protected \
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
     RETURNING source, filler_id, id, change_token";

/// The array form of `STATUS_SQL` (in `UPDATE ... FROM`, `SET` expressions read the old row).
const STATUS_ARRAYS_SQL: &str = "UPDATE appointments a SET \
     placer_id = COALESCE(t.placer_id, a.placer_id), sv_at_us = t.sv_at_us, sv_seq = t.sv_seq, status = t.status, \
     revision = a.revision + (a.content_hash <> t.content_hash)::INT, \
     needs_plan = CASE WHEN a.content_hash <> t.content_hash THEN 1 ELSE a.needs_plan END, \
     updated_at = CASE WHEN a.content_hash <> t.content_hash THEN $8 ELSE a.updated_at END, \
     change_token = CASE WHEN a.content_hash <> t.content_hash THEN $9 ELSE a.change_token END, \
     content_hash = t.content_hash \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $10::text[]) \
     AS t(i, source, filler_id, placer_id, sv_at_us, sv_seq, status, content_hash) \
     WHERE a.source = t.source AND a.filler_id = t.filler_id AND (t.sv_at_us, t.sv_seq) > (a.sv_at_us, a.sv_seq) \
     RETURNING t.i, a.id, a.change_token";

/// The rows of a round that repeat a message already applied to their appointment.
const REPEATS_ARRAYS_SQL: &str = "SELECT t.i FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[]) \
     AS t(i, source, filler_id, message_id, content_hash) \
     WHERE EXISTS (SELECT 1 FROM events e WHERE e.source = t.source AND e.filler_id = t.filler_id \
       AND e.message_id = t.message_id AND e.content_hash = t.content_hash)";

/// What is stored for the rows of a round that moved nothing.
const STORED_ARRAYS_SQL: &str = "SELECT t.i, a.id, a.sv_at_us, a.status, a.content_hash \
     FROM UNNEST($1::bigint[], $2::text[], $3::text[]) AS t(i, source, filler_id) \
     LEFT JOIN appointments a ON a.source = t.source AND a.filler_id = t.filler_id";

/// One event per applied row, in row order.
const EVENTS_ARRAYS_SQL: &str = "INSERT INTO events (source, filler_id, sv_at_us, sv_seq, import_id, raw_ref, content_hash, received_at, message_id) \
     SELECT t.source, t.filler_id, t.sv_at_us, t.sv_seq, $5, t.raw_ref, t.content_hash, $6, t.message_id \
     FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY \
     AS t(source, filler_id, sv_at_us, sv_seq, raw_ref, content_hash, message_id, n) ORDER BY t.n";

/// This feed has seen these appointments (ids distinct).
const FEEDS_ARRAYS_SQL: &str = "INSERT INTO appointment_feeds (feed, appointment_id, seen_as_of_us) \
     SELECT $1, id, $3 FROM UNNEST($2::bigint[]) AS t(id) \
     ON CONFLICT (feed, appointment_id) DO UPDATE SET \
     seen_as_of_us = GREATEST(appointment_feeds.seen_as_of_us, excluded.seen_as_of_us)";

/// What is stored for a row's key, if anything: id, version, status, content hash.
type Stored = (Option<i64>, Option<i64>, Option<String>, Option<String>);

/// One round: rows of distinct appointment keys (indices into `rows`, in row order).
async fn upsert_round(
    c: &mut PgConnection,
    b: &Batch<'_>,
    rows: &[AppointmentRow],
    round: &[usize],
    counts: &mut RowCounts,
) -> StoreResult<()> {
    let column = |f: &dyn Fn(&AppointmentRow) -> Option<String>,
                  of: &[usize]|
     -> Vec<Option<String>> { of.iter().map(|&i| f(&rows[i])).collect() };
    let text = |f: &dyn Fn(&AppointmentRow) -> String, of: &[usize]| -> Vec<String> {
        of.iter().map(|&i| f(&rows[i])).collect()
    };
    let int = |f: &dyn Fn(&AppointmentRow) -> i64, of: &[usize]| -> Vec<i64> {
        of.iter().map(|&i| f(&rows[i])).collect()
    };
    let index = |of: &[usize]| -> Vec<i64> { of.iter().map(|&i| i as i64).collect() };

    // 1. Repeats of an applied message: unchanged (they still mark the feed's sighting).
    let with_id: Vec<usize> = round
        .iter()
        .copied()
        .filter(|&i| rows[i].message_id.is_some())
        .collect();
    let mut repeat = vec![false; rows.len()];
    if !with_id.is_empty() {
        let found: Vec<i64> = sqlx::query_scalar(REPEATS_ARRAYS_SQL)
            .bind(index(&with_id))
            .bind(text(&|r| r.source.clone(), &with_id))
            .bind(text(&|r| r.filler_id.clone(), &with_id))
            .bind(column(&|r| r.message_id.clone(), &with_id))
            .bind(text(&|r| r.content_hash.clone(), &with_id))
            .fetch_all(&mut *c)
            .await?;
        for i in found {
            repeat[i as usize] = true;
        }
    }

    // 2. Full descriptions: insert or move to a strictly newer version.
    let full: Vec<usize> = round
        .iter()
        .copied()
        .filter(|&i| !repeat[i] && !rows[i].status_only)
        .collect();
    // Row index -> (appointment id, change token) for the rows that inserted or moved.
    let mut moved: HashMap<usize, (i64, i64)> = HashMap::with_capacity(round.len());
    if !full.is_empty() {
        let by_key: HashMap<(&str, &str), usize> = full
            .iter()
            .map(|&i| ((rows[i].source.as_str(), rows[i].filler_id.as_str()), i))
            .collect();
        let returned: Vec<(String, String, i64, i64)> = sqlx::query_as(UPSERT_ARRAYS_SQL)
            .bind(text(&|r| r.source.clone(), &full))
            .bind(text(&|r| r.filler_id.clone(), &full))
            .bind(column(&|r| r.placer_id.clone(), &full))
            .bind(int(&|r| r.sv_at_us, &full))
            .bind(int(&|r| r.sv_seq, &full))
            .bind(text(&|r| r.status.to_owned(), &full))
            .bind(int(&|r| r.start_at, &full))
            .bind(
                full.iter()
                    .map(|&i| rows[i].end_at)
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(text(&|r| r.site.clone(), &full))
            .bind(text(&|r| r.time_zone.clone(), &full))
            .bind(column(&|r| r.location.clone(), &full))
            .bind(column(&|r| r.practitioner.clone(), &full))
            .bind(column(&|r| r.service_type.clone(), &full))
            .bind(column(&|r| r.reason.clone(), &full))
            .bind(column(&|r| r.patient_ref.clone(), &full))
            .bind(column(&|r| r.given_name.clone(), &full))
            .bind(column(&|r| r.family_name.clone(), &full))
            .bind(column(&|r| r.phone_e164.clone(), &full))
            .bind(column(&|r| r.phone_problem.clone(), &full))
            .bind(column(&|r| r.contact_hash.clone(), &full))
            .bind(column(&|r| r.language.clone(), &full))
            .bind(
                full.iter()
                    .map(|&i| rows[i].protected.map(i64::from))
                    .collect::<Vec<Option<i64>>>(),
            )
            .bind(column(&|r| r.ehr_consent.map(str::to_owned), &full))
            .bind(b.as_of_us)
            .bind(b.now_s)
            .bind(b.token)
            .bind(b.feed)
            .bind(text(&|r| r.content_hash.clone(), &full))
            .bind(int(&|r| i64::from(r.time_unknown), &full))
            .fetch_all(&mut *c)
            .await?;
        for (source, filler_id, id, change_token) in returned {
            if let Some(&i) = by_key.get(&(source.as_str(), filler_id.as_str())) {
                moved.insert(i, (id, change_token));
            }
        }
    }

    // 3. Status changes alone: move a stored appointment, never insert.
    let status: Vec<usize> = round
        .iter()
        .copied()
        .filter(|&i| !repeat[i] && rows[i].status_only)
        .collect();
    if !status.is_empty() {
        let returned: Vec<(i64, i64, i64)> = sqlx::query_as(STATUS_ARRAYS_SQL)
            .bind(index(&status))
            .bind(text(&|r| r.source.clone(), &status))
            .bind(text(&|r| r.filler_id.clone(), &status))
            .bind(column(&|r| r.placer_id.clone(), &status))
            .bind(int(&|r| r.sv_at_us, &status))
            .bind(int(&|r| r.sv_seq, &status))
            .bind(text(&|r| r.status.to_owned(), &status))
            .bind(b.now_s)
            .bind(b.token)
            .bind(text(&|r| r.content_hash.clone(), &status))
            .fetch_all(&mut *c)
            .await?;
        for (i, id, change_token) in returned {
            moved.insert(i as usize, (id, change_token));
        }
    }

    // 4. An event per applied row.
    let applied: Vec<usize> = round
        .iter()
        .copied()
        .filter(|i| moved.contains_key(i))
        .collect();
    if !applied.is_empty() {
        counts.applied += applied.iter().filter(|i| moved[i].1 == b.token).count() as u64;
        sqlx::query(EVENTS_ARRAYS_SQL)
            .bind(text(&|r| r.source.clone(), &applied))
            .bind(text(&|r| r.filler_id.clone(), &applied))
            .bind(int(&|r| r.sv_at_us, &applied))
            .bind(int(&|r| r.sv_seq, &applied))
            .bind(b.import_id)
            .bind(b.now_s)
            .bind(text(&|r| r.raw_ref.clone(), &applied))
            .bind(text(&|r| r.content_hash.clone(), &applied))
            .bind(column(&|r| r.message_id.clone(), &applied))
            .execute(&mut *c)
            .await?;
    }

    // 5. The rest moved nothing: a repeat, the same version again, an older one, or unknown.
    let mut seen_ids: Vec<i64> = applied.iter().map(|i| moved[i].0).collect();
    let rest: Vec<usize> = round
        .iter()
        .copied()
        .filter(|i| !moved.contains_key(i))
        .collect();
    if !rest.is_empty() {
        let stored: Vec<(i64, Stored)> = sqlx::query_as(STORED_ARRAYS_SQL)
            .bind(index(&rest))
            .bind(text(&|r| r.source.clone(), &rest))
            .bind(text(&|r| r.filler_id.clone(), &rest))
            .fetch_all(&mut *c)
            .await?
            .into_iter()
            .map(|(i, id, at, status, hash)| (i, (id, at, status, hash)))
            .collect();
        let mut stored: HashMap<usize, Stored> = stored
            .into_iter()
            .map(|(i, row)| (i as usize, row))
            .collect();
        for &i in &rest {
            let r = &rows[i];
            let (id, stored_at_us, stored_status, stored_hash) =
                stored.remove(&i).unwrap_or((None, None, None, None));
            let Some(id) = id else {
                if !repeat[i] {
                    counts.unknown += 1;
                    ignored(c, b, r, None, None, "unknown").await?;
                }
                continue;
            };
            seen_ids.push(id);
            if repeat[i] {
                continue;
            }
            let stored_status = stored_status.unwrap_or_default();
            let same = stored_hash.as_deref() == Some(r.content_hash.as_str())
                || (r.status_only && stored_status == r.status);
            if same {
                continue;
            }
            counts.older += 1;
            ignored(c, b, r, stored_at_us, Some(&stored_status), "older").await?;
            let cancels =
                AppointmentStatus::from_code(r.status).is_some_and(AppointmentStatus::is_withdrawn);
            let booked =
                AppointmentStatus::from_code(&stored_status).is_some_and(|s| !s.is_withdrawn());
            if cancels && booked {
                sqlx::query(
                    "INSERT INTO alerts (at, kind, detail) VALUES ($1, 'older_cancellation_ignored', $2)",
                )
                .bind(b.now_s)
                .bind(format!(
                    "feed {}: a `{}` event for {}/{} ({}) is older than the stored version and was ignored; the appointment stays {stored_status}: check the sender's clock or the connector's `ordering`",
                    b.feed, r.status, r.source, r.filler_id, r.raw_ref
                ))
                .execute(&mut *c)
                .await?;
            }
        }
    }

    // 6. The feed's sightings.
    seen_ids.sort_unstable();
    seen_ids.dedup();
    if !seen_ids.is_empty() {
        sqlx::query(FEEDS_ARRAYS_SQL)
            .bind(b.feed)
            .bind(seen_ids)
            .bind(b.as_of_us)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn ignored(
    c: &mut PgConnection,
    b: &Batch<'_>,
    r: &AppointmentRow,
    stored_at_us: Option<i64>,
    stored_status: Option<&str>,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(IGNORED_SQL)
        .bind(b.feed)
        .bind(&r.source)
        .bind(&r.filler_id)
        .bind(r.sv_at_us)
        .bind(r.sv_seq)
        .bind(stored_at_us)
        .bind(r.status)
        .bind(stored_status)
        .bind(reason)
        .bind(b.import_id)
        .bind(&r.raw_ref)
        .bind(b.now_s)
        .execute(&mut *c)
        .await?;
    Ok(())
}
