//! The staff inbox (migration 0021): conversations opened by what a patient writes that no
//! automation answers, what was said in them both ways, and the staff replies waiting to be sent.
//!
//! Reading a conversation's content is an access to PHI: callers that show it to a person go
//! through [`Store::open_conversation`], which writes the access into the audit chain in the same
//! transaction as the read.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::{Store, StoreError, StoreResult, StoredRow, alerts, audit, secs, ts};
use super::{on_db, on_tx};

/// Alert kind for a conversation that waited past its reply SLA without a staff answer.
pub const INBOX_SLA_ALERT: &str = "inbox_sla";

/// Where a conversation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationState {
    /// A patient wrote and no one has taken it.
    Open,
    /// A staff member took it.
    Assigned,
    /// Staff answered; waiting for the patient.
    Waiting,
    Closed,
}

impl ConversationState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationState::Open => "open",
            ConversationState::Assigned => "assigned",
            ConversationState::Waiting => "waiting",
            ConversationState::Closed => "closed",
        }
    }

    fn parse(s: &str) -> ConversationState {
        match s {
            "assigned" => ConversationState::Assigned,
            "waiting" => ConversationState::Waiting,
            "closed" => ConversationState::Closed,
            _ => ConversationState::Open,
        }
    }
}

/// Why a patient's message needs a person.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationReason {
    /// An emergency phrase (the safety reply went out; a person must call).
    Emergency,
    /// Free text no keyword or tap explains.
    FreeText,
    /// An image, document, audio, location or another message type.
    Media,
    /// A low post-visit survey answer: flagged for a follow-up call.
    Survey,
}

impl ConversationReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationReason::Emergency => "emergency",
            ConversationReason::FreeText => "free_text",
            ConversationReason::Media => "media",
            ConversationReason::Survey => "survey",
        }
    }

    /// Emergencies are answered first (priority 0).
    pub fn priority(self) -> i64 {
        match self {
            ConversationReason::Emergency => 0,
            _ => 1,
        }
    }

    fn parse(s: &str) -> ConversationReason {
        match s {
            "emergency" => ConversationReason::Emergency,
            "media" => ConversationReason::Media,
            "survey" => ConversationReason::Survey,
            _ => ConversationReason::FreeText,
        }
    }
}

/// A patient's message to file in the inbox.
#[derive(Clone, Debug)]
pub struct PatientMessage<'a> {
    /// The inbound message id (`replies.wa_message_id`).
    pub wa_message_id: &'a str,
    pub contact_hash: &'a str,
    /// PHI: the number to answer.
    pub phone_e164: &'a str,
    pub reason: ConversationReason,
    /// `text`, or the media type.
    pub kind: &'a str,
    /// PHI: the text or the media caption.
    pub body: Option<&'a str>,
    pub media_id: Option<&'a str>,
    pub received_at: Timestamp,
    /// The appointment it is about when that is known (a survey answer); `None`: the latest
    /// appointment messaged to the contact.
    pub appointment_id: Option<i64>,
}

/// A conversation in a list: no patient data (the contact is its keyed hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationLine {
    pub id: i64,
    pub contact_hash: String,
    pub site: Option<String>,
    pub appointment_id: Option<i64>,
    pub state: ConversationState,
    pub priority: i64,
    pub reason: ConversationReason,
    pub assigned_to: Option<String>,
    pub opened_at: Timestamp,
    pub last_patient_at: Timestamp,
    /// When a staff answer is due; `None` when none is owed.
    pub reply_due_at: Option<Timestamp>,
    pub messages: i64,
}

/// One message of a conversation (PHI: its body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationMessage {
    pub id: i64,
    /// `in` (the patient) or `out` (staff).
    pub direction: String,
    pub kind: String,
    pub body: Option<String>,
    pub media_id: Option<String>,
    pub staff_user: Option<String>,
    /// received | pending | sending | sent | failed | unknown
    pub state: String,
    pub state_detail: Option<String>,
    /// The last delivery status WhatsApp reported for a staff reply.
    pub status: Option<String>,
    pub at: Timestamp,
}

/// The appointment a conversation most likely concerns, as staff need it to answer (PHI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationAppointment {
    pub id: i64,
    pub source: String,
    pub filler_id: String,
    pub start: Timestamp,
    pub time_zone: String,
    pub status: String,
    pub practitioner: Option<String>,
    pub service_type: Option<String>,
    pub location: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

/// A conversation opened for a person (PHI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConversationDetail {
    pub line: ConversationLine,
    pub phone_e164: String,
    pub appointment: Option<ConversationAppointment>,
    /// Oldest first.
    pub messages: Vec<ConversationMessage>,
    /// When the contact last wrote (any message, taps too): the customer service window's start.
    pub last_inbound_at: Option<Timestamp>,
}

/// A staff reply claimed for sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingReply {
    pub id: i64,
    pub conversation_id: i64,
    /// PHI.
    pub phone_e164: String,
    /// `text` or `template`.
    pub kind: String,
    /// The text, or the template's `name` (its language in `language`).
    pub body: String,
    pub language: Option<String>,
}

/// Which conversations a list shows.
#[derive(Clone, Debug, Default)]
pub struct InboxFilter {
    /// Only these sites (a conversation without a site is shown to everyone who may see the
    /// inbox); `None`: all.
    pub sites: Option<Vec<String>>,
    pub include_closed: bool,
}

fn line(r: &StoredRow) -> ConversationLine {
    ConversationLine {
        id: r.get("id"),
        contact_hash: r.get("contact_hash"),
        site: r.get("site"),
        appointment_id: r.get("appointment_id"),
        state: ConversationState::parse(&r.get::<String, _>("state")),
        priority: r.get("priority"),
        reason: ConversationReason::parse(&r.get::<String, _>("reason")),
        assigned_to: r.get("assigned_to"),
        opened_at: ts(r.get("opened_at")),
        last_patient_at: ts(r.get("last_patient_at")),
        reply_due_at: r.get::<Option<i64>, _>("reply_due_at").map(ts),
        messages: r.get("messages"),
    }
}

const LINE_COLUMNS: &str = "c.id, c.contact_hash, c.site, c.appointment_id, c.state, c.priority, c.reason, \
     c.assigned_to, c.opened_at, c.last_patient_at, c.reply_due_at, \
     (SELECT COUNT(*) FROM conversation_messages m WHERE m.conversation_id = c.id) AS messages";

impl Store {
    /// Files a patient's message: appended to the contact's conversation that is not closed, or
    /// a new one about the latest appointment messaged to the contact. `reply_due` starts the
    /// SLA clock when no answer is owed yet. Returns the conversation id and whether it is new.
    pub async fn file_patient_message(
        &self,
        m: &PatientMessage<'_>,
        reply_due: Option<Timestamp>,
        now: Timestamp,
    ) -> StoreResult<(i64, bool)> {
        let mut tx = self.write_tx().await?;
        let open: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT id FROM conversations WHERE contact_hash = $1 AND state <> 'closed'"
        )
        .bind(m.contact_hash)
        .fetch_optional(&mut *c)
        .await)?;
        let (id, new) = match open {
            Some(id) => {
                // A patient who writes again is waiting for an answer: a conversation waiting
                // for the patient is open again, its clock restarted if none is running.
                on_tx!(tx, |c| {
                    sqlx::query(
                    "UPDATE conversations SET last_patient_at = $1, updated_at = $2, \
                     priority = CASE WHEN priority < $3 THEN priority ELSE $3 END, \
                     reason = CASE WHEN $3 = 0 THEN 'emergency' ELSE reason END, \
                     state = CASE WHEN state = 'waiting' THEN CASE WHEN assigned_to IS NULL THEN 'open' ELSE 'assigned' END ELSE state END, \
                     reply_due_at = COALESCE(reply_due_at, $4) WHERE id = $5",
                )
                .bind(secs(m.received_at))
                .bind(secs(now))
                .bind(m.reason.priority())
                .bind(reply_due.map(secs))
                .bind(id)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected())
                })?;
                (id, false)
            }
            None => {
                let about: Option<(i64, String)> = match m.appointment_id {
                    Some(a) => on_tx!(tx, |c| sqlx::query_as(
                        "SELECT id, site FROM appointments WHERE id = $1"
                    )
                    .bind(a)
                    .fetch_optional(&mut *c)
                    .await)?,
                    None => on_tx!(tx, |c| sqlx::query_as(
                        "SELECT a.id, a.site FROM messages m JOIN outbox o ON o.id = m.job_id \
                         JOIN appointments a ON a.id = o.appointment_id \
                         WHERE m.contact_hash = $1 ORDER BY m.sent_at DESC, m.id DESC LIMIT 1",
                    )
                    .bind(m.contact_hash)
                    .fetch_optional(&mut *c)
                    .await)?,
                };
                let id: i64 = on_tx!(tx, |c| {
                    sqlx::query_scalar(
                    "INSERT INTO conversations (contact_hash, phone_e164, site, appointment_id, state, priority, reason, \
                     opened_at, last_patient_at, reply_due_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $8, $9, $10) RETURNING id",
                )
                .bind(m.contact_hash)
                .bind(m.phone_e164)
                .bind(about.as_ref().map(|a| a.1.clone()))
                .bind(about.as_ref().map(|a| a.0))
                .bind(m.reason.priority())
                .bind(m.reason.as_str())
                .bind(secs(now))
                .bind(secs(m.received_at))
                .bind(reply_due.map(secs))
                .bind(secs(now))
                .fetch_one(&mut *c)
                .await
                })?;
                (id, true)
            }
        };
        let reply_id: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT id FROM replies WHERE wa_message_id = $1"
        )
        .bind(m.wa_message_id)
        .fetch_optional(&mut *c)
        .await)?;
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO conversation_messages (conversation_id, direction, reply_id, kind, body, media_id, state, at) \
             VALUES ($1, 'in', $2, $3, $4, $5, 'received', $6)",
        )
        .bind(id)
        .bind(reply_id)
        .bind(m.kind)
        .bind(m.body)
        .bind(m.media_id)
        .bind(secs(m.received_at))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        if new {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                "system",
                "conversation_opened",
                &format!("conversation:{id}"),
                json!({"contact": m.contact_hash, "reason": m.reason.as_str()}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok((id, new))
    }

    /// The media of message `message_id` of conversation `conversation_id`, for `actor` to see:
    /// its Cloud API media id and type, with the access written into the audit chain in the same
    /// transaction (`phi_view` of the message). `None`: no such message, no media, or pruned.
    pub async fn open_media(
        &self,
        conversation_id: i64,
        message_id: i64,
        actor: &str,
        via: &str,
        now: Timestamp,
    ) -> StoreResult<Option<(String, String)>> {
        let mut tx = self.write_tx().await?;
        let media: Option<(String, String)> = on_tx!(tx, |c| sqlx::query_as(
            "SELECT media_id, kind FROM conversation_messages \
             WHERE id = $1 AND conversation_id = $2 AND media_id IS NOT NULL"
        )
        .bind(message_id)
        .bind(conversation_id)
        .fetch_optional(&mut *c)
        .await)?;
        if let Some((_, kind)) = &media {
            audit::append(
                &mut tx,
                &self.keys,
                now,
                actor,
                "phi_view",
                &format!("conversation:{conversation_id}"),
                json!({"via": via, "media_of_message": message_id, "kind": kind}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(media)
    }

    /// The site and language of the latest appointment messaged to `contact_hash`: where a
    /// message from it most likely belongs, and the language to answer in.
    pub async fn contact_context(
        &self,
        contact_hash: &str,
    ) -> StoreResult<Option<(String, Option<String>)>> {
        Ok(on_db!(self, |db| sqlx::query_as(
            "SELECT a.site, a.language FROM messages m JOIN outbox o ON o.id = m.job_id \
             JOIN appointments a ON a.id = o.appointment_id \
             WHERE m.contact_hash = $1 ORDER BY m.sent_at DESC, m.id DESC LIMIT 1",
        )
        .bind(contact_hash)
        .fetch_optional(db)
        .await)?)
    }

    /// Conversations, most urgent first (priority, then the answer due soonest, then the oldest).
    pub async fn conversations(&self, filter: &InboxFilter) -> StoreResult<Vec<ConversationLine>> {
        let sql = format!(
            "SELECT {LINE_COLUMNS} FROM conversations c WHERE ($1 = 1 OR c.state <> 'closed') \
             ORDER BY CASE WHEN c.state = 'closed' THEN 1 ELSE 0 END, c.priority, \
             CASE WHEN c.reply_due_at IS NULL THEN 1 ELSE 0 END, c.reply_due_at, c.last_patient_at DESC, c.id DESC \
             LIMIT 500"
        );
        let rows = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(i64::from(filter.include_closed))
            .fetch_all(db)
            .await
            .map(|v| v.into_iter().map(StoredRow::from).collect::<Vec<_>>()))?;
        Ok(rows
            .iter()
            .map(line)
            .filter(|l| match (&filter.sites, &l.site) {
                (Some(sites), Some(site)) => sites.iter().any(|s| s == site),
                _ => true,
            })
            .collect())
    }

    /// Counts of conversations not closed, by state, and how many owe an answer past due (for
    /// the viewer's page and `/metrics`: no patient data).
    pub async fn inbox_counts(&self, now: Timestamp) -> StoreResult<InboxCounts> {
        let rows: Vec<(String, i64, i64)> = on_db!(self, |db| {
            sqlx::query_as(
            "SELECT state, COUNT(*), COALESCE(SUM(CASE WHEN reply_due_at IS NOT NULL AND reply_due_at <= $1 THEN 1 ELSE 0 END), 0) \
             FROM conversations WHERE state <> 'closed' GROUP BY state",
        )
        .bind(secs(now))
        .fetch_all(db)
        .await
        })?;
        let mut counts = InboxCounts::default();
        for (state, n, overdue) in rows {
            counts.overdue += overdue;
            match state.as_str() {
                "open" => counts.open = n,
                "assigned" => counts.assigned = n,
                _ => counts.waiting += n,
            }
        }
        Ok(counts)
    }

    /// A conversation's list line without its content (no audit record: no PHI in it).
    pub async fn conversation_line(&self, id: i64) -> StoreResult<Option<ConversationLine>> {
        let sql = format!("SELECT {LINE_COLUMNS} FROM conversations c WHERE c.id = $1");
        let row = on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_optional(db)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        Ok(row.as_ref().map(line))
    }

    /// Opens a conversation for `actor` to read: its content, the patient's number and the
    /// appointment, with the access written into the audit chain in the same transaction.
    pub async fn open_conversation(
        &self,
        id: i64,
        actor: &str,
        via: &str,
        now: Timestamp,
    ) -> StoreResult<Option<ConversationDetail>> {
        let mut tx = self.write_tx().await?;
        let sql =
            format!("SELECT {LINE_COLUMNS}, c.phone_e164 FROM conversations c WHERE c.id = $1");
        let row = on_tx!(tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(id)
            .fetch_optional(&mut *c)
            .await
            .map(|r| r.map(StoredRow::from)))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let line = line(&row);
        let phone_e164: String = row.get("phone_e164");
        let appointment = match line.appointment_id {
            Some(a) => on_tx!(tx, |c| sqlx::query(
                "SELECT id, source, filler_id, start_at, time_zone, status, practitioner, service_type, location, \
                 given_name, family_name FROM appointments WHERE id = $1",
            )
            .bind(a)
            .fetch_optional(&mut *c)
            .await
            .map(|r| r.map(StoredRow::from)))?
            .map(|r| ConversationAppointment {
                id: r.get("id"),
                source: r.get("source"),
                filler_id: r.get("filler_id"),
                start: ts(r.get("start_at")),
                time_zone: r.get("time_zone"),
                status: r.get("status"),
                practitioner: r.get("practitioner"),
                service_type: r.get("service_type"),
                location: r.get("location"),
                given_name: r.get("given_name"),
                family_name: r.get("family_name"),
            }),
            None => None,
        };
        let rows = on_tx!(tx, |c| {
            sqlx::query(
            "SELECT id, direction, kind, body, media_id, staff_user, state, state_detail, status, at \
             FROM conversation_messages WHERE conversation_id = $1 ORDER BY at, id",
        )
        .bind(id)
        .fetch_all(&mut *c)
        .await
        .map(|v| v.into_iter().map(StoredRow::from).collect::<Vec<_>>())
        })?;
        let messages = rows
            .iter()
            .map(|r| ConversationMessage {
                id: r.get("id"),
                direction: r.get("direction"),
                kind: r.get("kind"),
                body: r.get("body"),
                media_id: r.get("media_id"),
                staff_user: r.get("staff_user"),
                state: r.get("state"),
                state_detail: r.get("state_detail"),
                status: r.get("status"),
                at: ts(r.get("at")),
            })
            .collect();
        let last_inbound: Option<i64> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT MAX(received_at) FROM replies WHERE contact_hash = $1"
        )
        .bind(&line.contact_hash)
        .fetch_one(&mut *c)
        .await)?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "phi_view",
            &format!("conversation:{id}"),
            json!({"via": via}),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(ConversationDetail {
            line,
            phone_e164,
            appointment,
            messages,
            last_inbound_at: last_inbound.map(ts),
        }))
    }

    /// When `contact_hash` last wrote (any message): the customer service window runs 24 h
    /// from it.
    pub async fn last_inbound_at(&self, contact_hash: &str) -> StoreResult<Option<Timestamp>> {
        let at: Option<i64> = on_db!(self, |db| sqlx::query_scalar(
            "SELECT MAX(received_at) FROM replies WHERE contact_hash = $1"
        )
        .bind(contact_hash)
        .fetch_one(db)
        .await)?;
        Ok(at.map(ts))
    }

    /// Queues a staff reply (`kind` text, or template with `body` its name) to be sent once by
    /// the service; the conversation waits for the patient and owes no answer. Audited.
    pub async fn queue_staff_reply(
        &self,
        conversation: i64,
        actor: &str,
        kind: &str,
        body: &str,
        now: Timestamp,
    ) -> StoreResult<i64> {
        let mut tx = self.write_tx().await?;
        let state: Option<String> = on_tx!(tx, |c| sqlx::query_scalar(
            "SELECT state FROM conversations WHERE id = $1"
        )
        .bind(conversation)
        .fetch_optional(&mut *c)
        .await)?;
        match state.as_deref() {
            None => {
                return Err(StoreError::Inconsistent(format!(
                    "no conversation {conversation}"
                )));
            }
            Some("closed") => {
                return Err(StoreError::Inconsistent(format!(
                    "conversation {conversation} is closed"
                )));
            }
            Some(_) => {}
        }
        let id: i64 = on_tx!(tx, |c| {
            sqlx::query_scalar(
            "INSERT INTO conversation_messages (conversation_id, direction, kind, body, staff_user, state, at) \
             VALUES ($1, 'out', $2, $3, $4, 'pending', $5) RETURNING id",
        )
        .bind(conversation)
        .bind(kind)
        .bind(body)
        .bind(actor)
        .bind(secs(now))
        .fetch_one(&mut *c)
        .await
        })?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE conversations SET state = 'waiting', reply_due_at = NULL, sla_alerted_at = NULL, \
             assigned_to = COALESCE(assigned_to, $1), updated_at = $2 WHERE id = $3",
        )
        .bind(actor)
        .bind(secs(now))
        .bind(conversation)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        alerts::resolve(&mut tx, INBOX_SLA_ALERT, Some(&sla_key(conversation)), now).await?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "staff_reply",
            &format!("conversation:{conversation}"),
            json!({"message": id, "kind": kind}),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Assigns a conversation to `user` (taking it), or closes it; both audited. Returns false
    /// when there is no such conversation or it is already closed.
    pub async fn set_conversation_state(
        &self,
        conversation: i64,
        actor: &str,
        state: ConversationState,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let changed = match state {
            ConversationState::Closed => on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE conversations SET state = 'closed', closed_at = $1, closed_by = $2, reply_due_at = NULL, \
                 updated_at = $1 WHERE id = $3 AND state <> 'closed'",
            )
            .bind(secs(now))
            .bind(actor)
            .bind(conversation)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?,
            _ => on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE conversations SET state = CASE WHEN state = 'open' THEN 'assigned' ELSE state END, \
                 assigned_to = $1, updated_at = $2 WHERE id = $3 AND state <> 'closed'",
            )
            .bind(actor)
            .bind(secs(now))
            .bind(conversation)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?,
        };
        if changed > 0 {
            if state == ConversationState::Closed {
                alerts::resolve(&mut tx, INBOX_SLA_ALERT, Some(&sla_key(conversation)), now)
                    .await?;
            }
            audit::append(
                &mut tx,
                &self.keys,
                now,
                actor,
                if state == ConversationState::Closed {
                    "conversation_closed"
                } else {
                    "conversation_assigned"
                },
                &format!("conversation:{conversation}"),
                json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Staff replies to send: `pending` ones become `sending` (at most `limit`), oldest first.
    /// Before claiming, a reply left `sending` for longer than `grace` (the process died during
    /// its send) becomes `unknown`: WhatsApp may have it, so it is never sent again by itself;
    /// a status webhook that names it settles it.
    pub async fn claim_staff_replies(
        &self,
        limit: i64,
        grace: jiff::SignedDuration,
        now: Timestamp,
    ) -> StoreResult<Vec<OutgoingReply>> {
        let mut tx = self.write_tx().await?;
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE conversation_messages SET state = 'unknown', \
             state_detail = 'the send was interrupted; WhatsApp may or may not have it (not sent again)' \
             WHERE state = 'sending' AND sending_since < $1",
        )
        .bind(secs(now - grace))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        let rows = on_tx!(tx, |c| {
            sqlx::query(
            "SELECT m.id, m.conversation_id, c.phone_e164, m.kind, m.body FROM conversation_messages m \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.state = 'pending' ORDER BY m.id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&mut *c)
        .await
        .map(|v| v.into_iter().map(StoredRow::from).collect::<Vec<_>>())
        })?;
        let mut out = Vec::new();
        for r in &rows {
            let id: i64 = r.get("id");
            on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE conversation_messages SET state = 'sending', sending_since = $1 WHERE id = $2 AND state = 'pending'",
            )
            .bind(secs(now))
            .bind(id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?;
            let kind: String = r.get("kind");
            let body: String = r.get::<Option<String>, _>("body").unwrap_or_default();
            let (body, language) = match kind.as_str() {
                "template" => match body.split_once('@') {
                    Some((name, lang)) => (name.to_owned(), Some(lang.to_owned())),
                    None => (body, None),
                },
                _ => (body, None),
            };
            out.push(OutgoingReply {
                id,
                conversation_id: r.get("conversation_id"),
                phone_e164: r.get("phone_e164"),
                kind,
                body,
                language,
            });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A claimed staff reply was accepted by WhatsApp as `wamid`, or refused (`detail`: codes,
    /// never PHI).
    pub async fn staff_reply_result(
        &self,
        id: i64,
        outcome: Result<&str, &str>,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        match outcome {
            Ok(wamid) => on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE conversation_messages SET state = 'sent', wamid = $1, sent_at = $2, status = COALESCE(status, 'accepted') WHERE id = $3",
            )
            .bind(wamid)
            .bind(secs(now))
            .bind(id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?,
            Err(detail) => on_tx!(tx, |c| {
                sqlx::query(
                "UPDATE conversation_messages SET state = 'failed', state_detail = $1 WHERE id = $2",
            )
            .bind(detail)
            .bind(id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?,
        };
        tx.commit().await?;
        Ok(())
    }

    /// A delivery status for a staff reply (named by its callback `reply:<id>`): recorded on the
    /// message; `failed` marks it failed with the code; an `unknown` one is settled as sent.
    pub async fn apply_staff_reply_status(
        &self,
        id: i64,
        wamid: &str,
        status: &str,
        error_code: Option<i64>,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let failed = status == "failed";
        let detail = error_code.map(|c| format!("WhatsApp reported the message failed (code {c})"));
        // Statuses only move forward (webhooks arrive out of order: a late `delivered` must not
        // hide a `read`); an unknown status changes nothing of it.
        let rank = super::inbound::status_rank(status).unwrap_or(-1);
        on_tx!(tx, |c| {
            sqlx::query(
            "UPDATE conversation_messages SET \
             status = CASE WHEN $6 > (CASE status WHEN 'accepted' THEN 0 WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 \
               WHEN 'read' THEN 3 WHEN 'failed' THEN 4 ELSE -1 END) THEN $1 ELSE status END, \
             wamid = COALESCE(wamid, $2), \
             state = CASE WHEN $3 = 1 THEN 'failed' WHEN state IN ('unknown', 'sending') THEN 'sent' ELSE state END, \
             state_detail = CASE WHEN $3 = 1 THEN $4 ELSE state_detail END \
             WHERE id = $5 AND direction = 'out'",
        )
        .bind(status)
        .bind(wamid)
        .bind(i64::from(failed))
        .bind(detail)
        .bind(id)
        .bind(rank)
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        tx.commit().await?;
        Ok(())
    }

    /// Conversations whose answer is past due and not yet alerted: each is marked alerted and
    /// returned (id and site) once.
    pub async fn take_overdue_conversations(
        &self,
        now: Timestamp,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        let mut tx = self.write_tx().await?;
        let due: Vec<(i64, Option<String>)> = on_tx!(tx, |c| {
            sqlx::query_as(
            "SELECT id, site FROM conversations WHERE state <> 'closed' AND reply_due_at IS NOT NULL \
             AND reply_due_at <= $1 AND sla_alerted_at IS NULL ORDER BY id",
        )
        .bind(secs(now))
        .fetch_all(&mut *c)
        .await
        })?;
        for (id, _) in &due {
            on_tx!(tx, |c| sqlx::query(
                "UPDATE conversations SET sla_alerted_at = $1 WHERE id = $2"
            )
            .bind(secs(now))
            .bind(id)
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(due)
    }
}

/// What staff record from a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaffAction {
    /// As if the patient had tapped it: written back to the EHR the same way.
    Reply(medrelay_mapping::reply::ReplyAction),
    /// Staff phoned the patient (a note in the conversation and the audit trail only).
    Called,
}

impl StaffAction {
    /// `confirm`, `cancel`, `reschedule` or `called`.
    pub fn parse(s: &str) -> Option<StaffAction> {
        use medrelay_mapping::reply::ReplyAction;
        match s {
            "called" => Some(StaffAction::Called),
            other => match ReplyAction::parse(other)? {
                ReplyAction::NotNotified => None,
                a => Some(StaffAction::Reply(a)),
            },
        }
    }

    fn note(self) -> &'static str {
        use medrelay_mapping::reply::ReplyAction;
        match self {
            StaffAction::Called => "called the patient",
            StaffAction::Reply(ReplyAction::Confirm) => "recorded: the patient confirms",
            StaffAction::Reply(ReplyAction::Cancel) => "recorded: the patient cancels",
            StaffAction::Reply(_) => "recorded: the patient asks for another time",
        }
    }
}

impl Store {
    /// Records what staff learnt from the patient (on the phone, in the chat): a confirmation,
    /// cancellation or reschedule request of the conversation's appointment becomes a reply like
    /// a tap (written back to the EHR the same way; a cancellation withdraws its reminders), with
    /// a note in the conversation and an audit record naming who. `Ok(Err(why))` when the
    /// appointment cannot take it (none, not booked, already started).
    pub async fn record_staff_action(
        &self,
        conversation: i64,
        actor: &str,
        action: StaffAction,
        now: Timestamp,
    ) -> StoreResult<Result<(), &'static str>> {
        let mut tx = self.write_tx().await?;
        let row: Option<(String, Option<i64>)> = on_tx!(tx, |c| sqlx::query_as(
            "SELECT contact_hash, appointment_id FROM conversations WHERE id = $1"
        )
        .bind(conversation)
        .fetch_optional(&mut *c)
        .await)?;
        let Some((contact, appointment)) = row else {
            return Ok(Err("no such conversation"));
        };
        if let StaffAction::Reply(reply) = action {
            let Some(appointment) = appointment else {
                return Ok(Err("the conversation concerns no appointment"));
            };
            let state: Option<(String, i64)> = on_tx!(tx, |c| sqlx::query_as(
                "SELECT status, start_at FROM appointments WHERE id = $1"
            )
            .bind(appointment)
            .fetch_optional(&mut *c)
            .await)?;
            match state {
                Some((status, start)) if status == "booked" && start > secs(now) => {}
                Some(_) => return Ok(Err("the appointment is no longer booked or has started")),
                None => return Ok(Err("the appointment is gone")),
            }
            let job: Option<i64> = on_tx!(tx, |c| {
                sqlx::query_scalar(
                "SELECT id FROM outbox WHERE appointment_id = $1 AND wamid IS NOT NULL ORDER BY id DESC LIMIT 1"
            )
            .bind(appointment)
            .fetch_optional(&mut *c)
            .await
            })?;
            let id = format!("staff:{conversation}:{}", uuid::Uuid::new_v4());
            on_tx!(tx, |c| {
                sqlx::query(
                "INSERT INTO replies (wa_message_id, contact_hash, job_id, appointment_id, kind, action, outcome, received_at) \
                 VALUES ($1, $2, $3, $4, 'staff', $5, 'accepted', $6)",
            )
            .bind(&id)
            .bind(&contact)
            .bind(job)
            .bind(appointment)
            .bind(reply.as_str())
            .bind(secs(now))
            .execute(&mut *c)
            .await
            .map(|r| r.rows_affected())
            })?;
            if reply == medrelay_mapping::reply::ReplyAction::Cancel {
                super::inbound::mark_patient_cancelled(&mut tx, appointment, now).await?;
            }
        }
        on_tx!(tx, |c| {
            sqlx::query(
            "INSERT INTO conversation_messages (conversation_id, direction, kind, body, staff_user, state, at) \
             VALUES ($1, 'note', 'action', $2, $3, 'noted', $4)",
        )
        .bind(conversation)
        .bind(action.note())
        .bind(actor)
        .bind(secs(now))
        .execute(&mut *c)
        .await
        .map(|r| r.rows_affected())
        })?;
        audit::append(
            &mut tx,
            &self.keys,
            now,
            actor,
            "staff_action",
            &format!("conversation:{conversation}"),
            json!({"action": action.note(), "appointment": appointment}),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }
}

/// The SLA alert's incident key for a conversation (alert details start with it).
pub fn sla_key(conversation: i64) -> String {
    format!("conversation {conversation}:")
}

/// Conversations not closed, by state (no patient data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InboxCounts {
    pub open: i64,
    pub assigned: i64,
    pub waiting: i64,
    /// Owing an answer past its SLA.
    pub overdue: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::users::Role;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn message<'a>(id: &'a str, reason: ConversationReason, body: &'a str) -> PatientMessage<'a> {
        PatientMessage {
            wa_message_id: id,
            contact_hash: "c1",
            phone_e164: "15550001111",
            reason,
            kind: "text",
            body: Some(body),
            media_id: None,
            received_at: at(0),
            appointment_id: None,
        }
    }

    /// On either backend (`MEDRELAY_TEST_POSTGRES`): one conversation per contact until closed,
    /// an emergency raising its priority, a reply queued, claimed once, sent and reconciled, an
    /// interrupted send never claimed again, the SLA taken once, and the accounts' sessions.
    #[tokio::test]
    async fn conversations_replies_and_sessions_keep_their_rules() {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::Keys::from_secret(b"inbox store test secret");
        let store = super::super::testing::open(&dir.path().join("i.db"), keys)
            .await
            .unwrap();
        let (a, new) = store
            .file_patient_message(
                &message("w1", ConversationReason::FreeText, "hello"),
                Some(at(60)),
                at(1),
            )
            .await
            .unwrap();
        assert!(new);
        let (b, new) = store
            .file_patient_message(
                &message("w2", ConversationReason::Emergency, "help"),
                Some(at(90)),
                at(2),
            )
            .await
            .unwrap();
        assert_eq!(
            (a, new),
            (b, false),
            "the same contact extends its conversation"
        );
        let line = store.conversation_line(a).await.unwrap().unwrap();
        assert_eq!(
            (line.priority, line.reason, line.messages),
            (0, ConversationReason::Emergency, 2)
        );
        assert_eq!(line.reply_due_at, Some(at(60)), "the running clock is kept");

        assert_eq!(
            store.take_overdue_conversations(at(59)).await.unwrap(),
            vec![]
        );
        assert_eq!(
            store.take_overdue_conversations(at(61)).await.unwrap(),
            vec![(a, None)]
        );
        assert_eq!(
            store.take_overdue_conversations(at(62)).await.unwrap(),
            vec![],
            "once"
        );

        let r1 = store
            .queue_staff_reply(a, "ann", "text", "we call you", at(70))
            .await
            .unwrap();
        let r2 = store
            .queue_staff_reply(a, "ann", "text", "second", at(71))
            .await
            .unwrap();
        let line = store.conversation_line(a).await.unwrap().unwrap();
        assert_eq!(
            (line.state, line.reply_due_at),
            (ConversationState::Waiting, None)
        );
        let grace = jiff::SignedDuration::from_mins(10);
        let claimed = store.claim_staff_replies(10, grace, at(72)).await.unwrap();
        assert_eq!(
            claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![r1, r2]
        );
        assert_eq!(claimed[0].phone_e164, "15550001111");
        assert!(
            store
                .claim_staff_replies(10, grace, at(73))
                .await
                .unwrap()
                .is_empty()
        );
        store
            .staff_reply_result(r1, Ok("wamid.1"), at(74))
            .await
            .unwrap();
        store
            .apply_staff_reply_status(r1, "wamid.1", "delivered", None)
            .await
            .unwrap();
        // r2's process died mid-send: after the grace it is `unknown`, and never claimed again.
        assert!(
            store
                .claim_staff_replies(10, grace, at(72 + 601))
                .await
                .unwrap()
                .is_empty()
        );
        let d = store
            .open_conversation(a, "ann", "test", at(700))
            .await
            .unwrap()
            .unwrap();
        let states: Vec<_> = d
            .messages
            .iter()
            .map(|m| (m.direction.as_str(), m.state.as_str(), m.status.clone()))
            .collect();
        assert_eq!(
            states,
            vec![
                ("in", "received", None),
                ("in", "received", None),
                ("out", "sent", Some("delivered".into())),
                ("out", "unknown", None),
            ]
        );
        // A late status settles the unknown one.
        store
            .apply_staff_reply_status(r2, "wamid.2", "sent", None)
            .await
            .unwrap();
        // Statuses only move forward: `read`, then a late `delivered`, stays `read`.
        for status in ["read", "delivered", "sent"] {
            store
                .apply_staff_reply_status(r1, "wamid.1", status, None)
                .await
                .unwrap();
        }
        let d = store
            .open_conversation(a, "ann", "test", at(701))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            d.messages[2].status.as_deref(),
            Some("read"),
            "a late delivered does not hide read"
        );
        assert_eq!(d.messages[3].status.as_deref(), Some("sent"));

        // A patient who writes again reopens it; once closed, the next message opens another.
        store
            .file_patient_message(
                &message("w3", ConversationReason::FreeText, "thanks"),
                Some(at(900)),
                at(800),
            )
            .await
            .unwrap();
        let line = store.conversation_line(a).await.unwrap().unwrap();
        assert_eq!(
            (line.state, line.reply_due_at),
            (ConversationState::Assigned, Some(at(900)))
        );
        assert!(
            store
                .set_conversation_state(a, "ann", ConversationState::Closed, at(801))
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_conversation_state(a, "ann", ConversationState::Closed, at(802))
                .await
                .unwrap()
        );
        let (c, new) = store
            .file_patient_message(
                &message("w4", ConversationReason::FreeText, "again"),
                None,
                at(803),
            )
            .await
            .unwrap();
        assert!(new && c != a);

        // Accounts: a name once; sessions end on revoke and on a password change.
        let sites = vec!["north".to_owned()];
        store
            .add_console_user(
                "ann",
                Role::Staff,
                Some(&sites),
                "$argon2id$x",
                "admin",
                at(0),
            )
            .await
            .unwrap();
        assert!(
            store
                .add_console_user("ann", Role::Admin, None, "$argon2id$y", "admin", at(0))
                .await
                .is_err()
        );
        store
            .start_console_session("ann", "t1", "csrf1", at(1000), at(10), "password")
            .await
            .unwrap();
        let (u, csrf) = store.console_session("t1", at(11)).await.unwrap().unwrap();
        assert_eq!(
            (u.role, u.sites, csrf.as_str()),
            (Role::Staff, Some(sites), "csrf1")
        );
        assert!(
            store
                .console_session("t1", at(1001))
                .await
                .unwrap()
                .is_none(),
            "expired"
        );
        store
            .start_console_session("ann", "t2", "csrf2", at(1000), at(10), "password")
            .await
            .unwrap();
        assert!(
            store
                .change_console_user("ann", Some("$argon2id$z"), "admin", at(12))
                .await
                .unwrap()
        );
        assert!(
            store.console_session("t2", at(13)).await.unwrap().is_none(),
            "revoked"
        );
        for _ in 0..4 {
            assert!(
                !store
                    .record_failed_login("ann", 5, grace, at(20))
                    .await
                    .unwrap()
            );
        }
        assert!(
            store
                .record_failed_login("ann", 5, grace, at(20))
                .await
                .unwrap()
        );
        let rec = store.login_record("ann").await.unwrap().unwrap();
        assert_eq!(rec.user.locked_until, Some(at(20) + grace));
        assert_eq!(store.audit_verify().await.unwrap().broken, None);
        store.close().await;
    }
}
