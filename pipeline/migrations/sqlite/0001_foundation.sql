-- medrelay schema (SQLite). Times are INTEGER unix seconds UTC unless named *_us (microseconds).
-- PHI columns are marked "PHI" and are pruned by retention; everything else is safe to keep.

-- One CSV file, HL7 connection batch or FHIR poll: what came in, when, and how it went.
CREATE TABLE imports (
    id            INTEGER PRIMARY KEY,
    source        TEXT    NOT NULL,
    input_name    TEXT    NOT NULL,          -- file name or endpoint, never PHI
    input_sha256  TEXT,
    mode          TEXT    NOT NULL,          -- delta | snapshot | message
    as_of_us      INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    rows_ok       INTEGER NOT NULL DEFAULT 0,
    rows_bad      INTEGER NOT NULL DEFAULT 0,
    rows_applied  INTEGER NOT NULL DEFAULT 0,
    swept         INTEGER NOT NULL DEFAULT 0, -- appointments cancelled because absent from a snapshot
    sweep_note    TEXT
);

-- The current state of every appointment, the newest source version wins.
CREATE TABLE appointments (
    id             INTEGER PRIMARY KEY,
    source         TEXT    NOT NULL,
    filler_id      TEXT    NOT NULL,
    placer_id      TEXT,
    sv_at_us       INTEGER NOT NULL,        -- source version: source clock
    sv_seq         INTEGER NOT NULL,        -- source version: tie breaker (line number, version id)
    status         TEXT    NOT NULL,
    start_at       INTEGER NOT NULL,
    end_at         INTEGER,
    site           TEXT    NOT NULL,
    time_zone      TEXT    NOT NULL,
    location       TEXT,
    practitioner   TEXT,
    service_type   TEXT,                    -- PHI (can reveal a condition)
    reason         TEXT,                    -- PHI, never rendered
    patient_ref    TEXT,                    -- PHI
    given_name     TEXT,                    -- PHI
    family_name    TEXT,                    -- PHI
    phone_e164     TEXT,                    -- PHI
    phone_problem  TEXT,                    -- why no phone is usable (no PHI)
    contact_hash   TEXT,                    -- keyed hash of phone_e164: consent and log correlation
    language       TEXT,
    protected      INTEGER NOT NULL DEFAULT 0,
    ehr_consent    TEXT,                    -- opt_in | opt_out | NULL
    content_hash   TEXT    NOT NULL,
    revision       INTEGER NOT NULL DEFAULT 1,
    needs_plan     INTEGER NOT NULL DEFAULT 1,
    seen_as_of_us  INTEGER NOT NULL,        -- last snapshot (or delta) this appointment appeared in
    patient_cancelled_at INTEGER,           -- the patient tapped Cancel: no more reminders
    change_token   INTEGER NOT NULL,        -- which ingest batch last changed the content
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (source, filler_id)
);
CREATE INDEX appointments_needs_plan ON appointments (id) WHERE needs_plan = 1;
-- No index on contact_hash: it is random, so maintaining one halves bulk-import speed (BENCHMARKS.md);
-- the rare lookups by contact (a STOP, a staff revocation) scan instead.
CREATE INDEX appointments_start ON appointments (start_at);

-- One row per committed ingest batch: its id tags the appointments the batch changed.
CREATE TABLE ingest_batches (
    id           INTEGER PRIMARY KEY,
    import_id    INTEGER,
    committed_at INTEGER NOT NULL
);

-- Every applied event (one per source version that changed the stored appointment's version).
-- A re-delivery or a late, older version is not applied, so it adds no row here.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    source        TEXT    NOT NULL,
    filler_id     TEXT    NOT NULL,
    sv_at_us      INTEGER NOT NULL,
    sv_seq        INTEGER NOT NULL,
    import_id     INTEGER,
    raw_ref       TEXT    NOT NULL,
    content_hash  TEXT    NOT NULL,
    received_at   INTEGER NOT NULL
);

-- Input we could not accept, kept whole with the reason (reason never contains PHI; raw does).
CREATE TABLE quarantine (
    id           INTEGER PRIMARY KEY,
    source       TEXT    NOT NULL,
    import_id    INTEGER,
    location     TEXT    NOT NULL,          -- file:line, message control id
    column_name  TEXT,
    reason       TEXT    NOT NULL,
    raw          BLOB,                      -- PHI
    received_at  INTEGER NOT NULL
);

-- One planned message step per (appointment, step, slot start): the idempotency key of a message.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    appointment_id  INTEGER NOT NULL REFERENCES appointments (id),
    step            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,       -- confirmation | reminder | follow_up
    slot_start      INTEGER NOT NULL,
    revision        INTEGER NOT NULL,       -- appointment revision the step was planned from
    lane            INTEGER NOT NULL,       -- lower goes first under a backlog
    template        TEXT    NOT NULL,
    due_at          INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    state           TEXT    NOT NULL,       -- pending | sending | sent | failed | withdrawn | dropped | skipped
    state_reason    TEXT,                   -- why (explain), never PHI
    plan_note       TEXT,                   -- how the due time was chosen
    attempts        INTEGER NOT NULL DEFAULT 0,
    sending_since   INTEGER,
    wamid           TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (appointment_id, step, slot_start)
);
CREATE INDEX outbox_due ON outbox (lane, due_at) WHERE state = 'pending';
CREATE INDEX outbox_appointment ON outbox (appointment_id);

-- A moved or withdrawn appointment withdraws its pending steps in the same transaction as the change.
CREATE TRIGGER appointments_withdraw_stale_steps
AFTER UPDATE OF start_at, status, patient_cancelled_at ON appointments
WHEN NEW.start_at IS NOT OLD.start_at OR NEW.status IS NOT OLD.status
     OR NEW.patient_cancelled_at IS NOT OLD.patient_cancelled_at
BEGIN
    UPDATE outbox
       SET state = 'withdrawn',
           state_reason = CASE
               WHEN NEW.patient_cancelled_at IS NOT NULL THEN 'the patient cancelled on WhatsApp'
               WHEN NEW.status <> 'booked' THEN 'appointment is now ' || NEW.status
               ELSE 'appointment was rescheduled' END,
           updated_at = NEW.updated_at
     WHERE appointment_id = NEW.id
       AND state = 'pending'
       AND (slot_start <> NEW.start_at OR NEW.status <> 'booked' OR NEW.patient_cancelled_at IS NOT NULL)
       AND NOT (kind = 'follow_up' AND NEW.status IN ('fulfilled', 'arrived', 'checked-in'));
END;

-- Every message handed to WhatsApp: the exact body (PHI) and its merged delivery status.
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    job_id        INTEGER NOT NULL REFERENCES outbox (id),
    wamid         TEXT    NOT NULL UNIQUE,
    contact_hash  TEXT    NOT NULL,
    body          TEXT,                     -- PHI: the exact JSON sent
    sent_at       INTEGER NOT NULL,
    status        TEXT    NOT NULL,         -- accepted | sent | delivered | read | failed
    status_rank   INTEGER NOT NULL,
    status_at     INTEGER,
    error_code    INTEGER
);

-- Raw webhook deliveries, stored before the 200 is given.
CREATE TABLE webhook_inbox (
    id            INTEGER PRIMARY KEY,
    received_at   INTEGER NOT NULL,
    body          BLOB    NOT NULL,         -- PHI
    processed_at  INTEGER,
    error         TEXT
);

-- Patient replies (button taps, keywords, free text); the WhatsApp message id makes them idempotent.
CREATE TABLE replies (
    id              INTEGER PRIMARY KEY,
    wa_message_id   TEXT    NOT NULL UNIQUE,
    contact_hash    TEXT    NOT NULL,
    context_wamid   TEXT,
    job_id          INTEGER,
    appointment_id  INTEGER,
    kind            TEXT    NOT NULL,       -- button | text | other
    action          TEXT,                   -- confirm | cancel | reschedule | stop | start | emergency | free_text
    outcome         TEXT    NOT NULL,       -- accepted | repeat | stale | invalid | consent | staff_queue | safety_reply
    text            TEXT,                   -- PHI: free text for the staff queue
    received_at     INTEGER NOT NULL,
    writeback_batch INTEGER
);
CREATE INDEX replies_writeback ON replies (id) WHERE writeback_batch IS NULL AND outcome = 'accepted';

-- Write-back batches: assigned in one transaction, then written (idempotently), then completed.
CREATE TABLE writeback_batches (
    id            INTEGER PRIMARY KEY,
    target        TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    completed_at  INTEGER,
    location      TEXT,
    last_error    TEXT
);

-- Consent ledger: every grant and revocation, by whom and why. Keyed by contact hash, not phone.
CREATE TABLE consent_ledger (
    id            INTEGER PRIMARY KEY,
    contact_hash  TEXT    NOT NULL,
    purpose       TEXT    NOT NULL,         -- logistics | follow_up
    granted       INTEGER NOT NULL,
    source        TEXT    NOT NULL,         -- ehr | patient | staff
    actor         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    at            INTEGER NOT NULL
);
CREATE INDEX consent_contact ON consent_ledger (contact_hash, purpose);

-- Append-only, hash-chained audit trail (hashes instead of PHI).
CREATE TABLE audit_log (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);

-- Alerts for staff (halted templates, emergency phrases, write-back failures). No PHI.
CREATE TABLE alerts (
    id        INTEGER PRIMARY KEY,
    at        INTEGER NOT NULL,
    kind      TEXT    NOT NULL,
    detail    TEXT    NOT NULL,
    resolved_at INTEGER
);
