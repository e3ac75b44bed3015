//! Post-visit surveys (migration 0022): one record per survey message a patient answered, with
//! the rating its buttons carried, the 0-10 score and the comment asked for afterwards, and the
//! inbox conversation a low answer opened.
//!
//! Every write is keyed so that a re-delivered webhook changes nothing: a survey message is
//! rated once (the first tap counts), a question is answered once.

use jiff::Timestamp;
use medrelay_mapping::reply::Rating;
use serde::Serialize;

use super::{Store, StoreResult, StoredRow, secs, ts};
use super::{on_db, on_tx};

/// What a survey waits for after the rating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SurveyQuestion {
    /// The 0-10 list was sent.
    Score,
    /// The patient was asked for a comment.
    Comment,
}

impl SurveyQuestion {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SurveyQuestion::Score => "score",
            SurveyQuestion::Comment => "comment",
        }
    }

    fn parse(s: &str) -> Option<SurveyQuestion> {
        match s {
            "score" => Some(SurveyQuestion::Score),
            "comment" => Some(SurveyQuestion::Comment),
            _ => None,
        }
    }
}

/// One answered survey (the comment is PHI and not part of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SurveyRecord {
    pub id: i64,
    /// The survey message (outbox job) that was answered.
    pub job_id: i64,
    pub appointment_id: i64,
    pub contact_hash: String,
    pub rating: Rating,
    pub score: Option<u8>,
    pub has_comment: bool,
    /// At or below the configured low rating or score: flagged for follow-up.
    pub low: bool,
    pub conversation_id: Option<i64>,
    pub awaiting: Option<SurveyQuestion>,
    pub asked_at: Option<Timestamp>,
}

const COLUMNS: &str = "id, job_id, appointment_id, contact_hash, rating, score, \
     CAST(CASE WHEN comment IS NULL THEN 0 ELSE 1 END AS BIGINT) AS has_comment, low, conversation_id, awaiting, asked_at";

fn record(r: &StoredRow) -> SurveyRecord {
    SurveyRecord {
        id: r.get("id"),
        job_id: r.get("job_id"),
        appointment_id: r.get("appointment_id"),
        contact_hash: r.get("contact_hash"),
        rating: Rating::parse(&r.get::<String, _>("rating")).unwrap_or(Rating::Ok),
        score: r
            .get::<Option<i64>, _>("score")
            .and_then(|s| u8::try_from(s).ok()),
        has_comment: r.get::<i64, _>("has_comment") == 1,
        low: r.get::<i64, _>("low") == 1,
        conversation_id: r.get("conversation_id"),
        awaiting: r
            .get::<Option<String>, _>("awaiting")
            .as_deref()
            .and_then(SurveyQuestion::parse),
        asked_at: r.get::<Option<i64>, _>("asked_at").map(ts),
    }
}

/// A rating to record.
#[derive(Clone, Debug)]
pub struct NewRating<'a> {
    pub job_id: i64,
    pub appointment_id: i64,
    pub contact_hash: &'a str,
    pub rating: Rating,
    pub low: bool,
    /// The question asked next, if any.
    pub awaiting: Option<SurveyQuestion>,
}

impl Store {
    /// Records the rating of survey message `job_id`. The first tap counts: returns the record
    /// and whether this call created it (false: the survey was already rated, nothing changed).
    pub async fn record_survey_rating(
        &self,
        r: &NewRating<'_>,
        now: Timestamp,
    ) -> StoreResult<(SurveyRecord, bool)> {
        let mut tx = self.write_tx().await?;
        let inserted = on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO survey_responses (job_id, appointment_id, contact_hash, rating, low, awaiting, asked_at, answered_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(r.job_id)
        .bind(r.appointment_id)
        .bind(r.contact_hash)
        .bind(r.rating.as_str())
        .bind(i64::from(r.low))
        .bind(r.awaiting.map(SurveyQuestion::as_str))
        .bind(r.awaiting.map(|_| secs(now)))
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|q| q.rows_affected())
        })? > 0;
        tx.commit().await?;
        let rec = self
            .survey_by_job(r.job_id)
            .await?
            .ok_or_else(|| super::StoreError::Inconsistent("survey record vanished".into()))?;
        Ok((rec, inserted))
    }

    /// The survey answered through message `job_id`, if any.
    pub async fn survey_by_job(&self, job_id: i64) -> StoreResult<Option<SurveyRecord>> {
        let sql = format!("SELECT {COLUMNS} FROM survey_responses WHERE job_id = $1");
        let row = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(job_id)
            .fetch_optional(db)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        Ok(row.as_ref().map(record))
    }

    /// The contact's latest survey still waiting for an answer asked at or after `since`.
    pub async fn survey_awaiting(
        &self,
        contact_hash: &str,
        since: Timestamp,
    ) -> StoreResult<Option<SurveyRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM survey_responses WHERE contact_hash = $1 AND awaiting IS NOT NULL \
             AND asked_at >= $2 ORDER BY asked_at DESC, id DESC LIMIT 1"
        );
        let row = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(contact_hash)
            .bind(secs(since))
            .fetch_optional(db)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        Ok(row.as_ref().map(record))
    }

    /// Records the 0-10 score of survey `id` once (false: it already has one). `low` is or-ed
    /// into the flag; `next` is the question asked next.
    pub async fn record_survey_score(
        &self,
        id: i64,
        score: u8,
        low: bool,
        next: Option<SurveyQuestion>,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let changed = on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE survey_responses SET score = $1, low = CASE WHEN $2 = 1 THEN 1 ELSE low END, \
             awaiting = $3, asked_at = $4, updated_at = $5 WHERE id = $6 AND score IS NULL",
        )
        .bind(i64::from(score))
        .bind(i64::from(low))
        .bind(next.map(SurveyQuestion::as_str))
        .bind(next.map(|_| secs(now)))
        .bind(secs(now))
        .bind(id)
        .execute(&mut *c)
        .await
        .map(|q| q.rows_affected())
        })?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Records the comment (PHI) of survey `id`, once, while it is asked for.
    pub async fn record_survey_comment(
        &self,
        id: i64,
        comment: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let changed = on_tx!(tx, |c| sqlx::query(
            "UPDATE survey_responses SET comment = $1, awaiting = NULL, updated_at = $2 \
             WHERE id = $3 AND awaiting = 'comment' AND comment IS NULL",
        )
        .bind(comment)
        .bind(secs(now))
        .bind(id)
        .execute(&mut *c)
        .await
        .map(|q| q.rows_affected()))?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Links survey `id` to the inbox conversation its low answer opened.
    pub async fn set_survey_conversation(
        &self,
        id: i64,
        conversation_id: i64,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| sqlx::query(
            "UPDATE survey_responses SET conversation_id = $1, updated_at = $2 WHERE id = $3",
        )
        .bind(conversation_id)
        .bind(secs(now))
        .bind(id)
        .execute(&mut *c)
        .await
        .map(|q| q.rows_affected()))?;
        tx.commit().await?;
        Ok(())
    }
}
