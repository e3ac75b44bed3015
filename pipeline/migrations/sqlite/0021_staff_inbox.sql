-- The staff inbox and its console (issue 15). A patient's free text, emergency phrase or media
-- message opens (or extends) a conversation that staff answer from the web console or
-- `medrelay inbox`; console users and their sessions live here too.

-- One conversation with one patient contact; at most one is not closed per contact.
CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    contact_hash    TEXT    NOT NULL,
    phone_e164      TEXT    NOT NULL,        -- PHI: where staff replies go
    site            TEXT,                    -- the site of the appointment it concerns, if known
    appointment_id  INTEGER,                 -- the latest appointment messaged to the contact
    state           TEXT    NOT NULL,        -- open | assigned | waiting | closed
    priority        INTEGER NOT NULL,        -- 0 emergency, 1 normal
    reason          TEXT    NOT NULL,        -- emergency | free_text | media
    assigned_to     TEXT,
    opened_at       INTEGER NOT NULL,
    last_patient_at INTEGER NOT NULL,
    reply_due_at    INTEGER,                 -- the SLA clock: a staff answer is due (NULL: none owed)
    sla_alerted_at  INTEGER,
    closed_at       INTEGER,
    closed_by       TEXT,
    updated_at      INTEGER NOT NULL
);
CREATE UNIQUE INDEX conversations_one_open ON conversations (contact_hash) WHERE state <> 'closed';
CREATE INDEX conversations_queue ON conversations (state, priority, reply_due_at);

-- A patient's message is filed with the latest appointment messaged to the contact.
CREATE INDEX messages_contact_time ON messages (contact_hash, sent_at);

-- What was said in a conversation, both ways. A staff reply is queued here ('pending') and sent
-- once by the service ('sending' -> 'sent'); one whose send may or may not have reached WhatsApp
-- (the process died mid-send) becomes 'unknown' and is never sent again by itself.
CREATE TABLE conversation_messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    direction       TEXT    NOT NULL,        -- in | out
    reply_id        INTEGER,                 -- replies.id of an inbound message
    kind            TEXT    NOT NULL,        -- text | image | document | audio | ... | template
    body            TEXT,                    -- PHI: the text, or a media caption
    media_id        TEXT,                    -- the Cloud API media id, fetched only when opened
    staff_user      TEXT,
    state           TEXT    NOT NULL,        -- received | pending | sending | sent | failed | unknown
    state_detail    TEXT,
    wamid           TEXT,
    status          TEXT,                    -- the last delivery status WhatsApp reported
    at              INTEGER NOT NULL,
    sending_since   INTEGER,
    sent_at         INTEGER
);
CREATE INDEX conversation_messages_by_conversation ON conversation_messages (conversation_id, id);
CREATE INDEX conversation_messages_to_send ON conversation_messages (id) WHERE state IN ('pending', 'sending');

-- Console accounts: local users with argon2id password hashes.
CREATE TABLE console_users (
    name            TEXT    PRIMARY KEY,
    role            TEXT    NOT NULL,        -- viewer | staff | admin
    sites           TEXT    NOT NULL,        -- comma-separated site names, or '*'
    password_hash   TEXT    NOT NULL,        -- PHC string (argon2id)
    disabled_at     INTEGER,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- Console sessions: only a hash of the cookie's token is stored; revoked on sign-out, password
-- change or disable.
CREATE TABLE console_sessions (
    token_hash      TEXT    PRIMARY KEY,
    user_name       TEXT    NOT NULL REFERENCES console_users (name),
    csrf            TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    revoked_at      INTEGER
);
