-- Ordering that a hospital can trust (issue: an older cancellation was dropped as "unchanged").
--
-- The sender's message identity of each applied event, so that a message sent again (a resend
-- after a lost ACK, a re-imported file) is a repeat whenever it arrives: a stream can then apply
-- in arrival order.
ALTER TABLE events ADD COLUMN message_id TEXT;
CREATE INDEX events_appointment ON events (source, filler_id);

-- Events that differed from the stored appointment and changed nothing: older than its version
-- ('older'), or a status change for an appointment that is not stored ('unknown'). Reported by
-- imports, `status` and `explain`, never as "unchanged". No PHI: ids, versions, statuses, refs.
CREATE TABLE ignored_events (
    id              INTEGER PRIMARY KEY,
    feed            TEXT    NOT NULL,
    source          TEXT    NOT NULL,
    filler_id       TEXT    NOT NULL,
    sv_at_us        INTEGER NOT NULL,
    sv_seq          INTEGER NOT NULL,
    stored_sv_at_us INTEGER,
    status          TEXT    NOT NULL,
    stored_status   TEXT,
    reason          TEXT    NOT NULL,    -- older | unknown
    import_id       INTEGER,
    raw_ref         TEXT    NOT NULL,
    received_at     INTEGER NOT NULL
);
CREATE INDEX ignored_events_appointment ON ignored_events (source, filler_id);

ALTER TABLE imports ADD COLUMN rows_older INTEGER NOT NULL DEFAULT 0;
ALTER TABLE imports ADD COLUMN rows_unknown INTEGER NOT NULL DEFAULT 0;
