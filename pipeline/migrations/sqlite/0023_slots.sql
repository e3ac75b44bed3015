-- Open slots and holds (issue 14): the EHR's free times as its latest snapshot listed them, and
-- the hold one appointment wins when a patient picks one (self-service rescheduling, waitlist
-- offers). PostgreSQL 0023 is the same.
CREATE TABLE slots (
    id              INTEGER PRIMARY KEY,
    source          TEXT    NOT NULL,        -- the scheduling system (as appointments.source)
    slot_id         TEXT    NOT NULL,        -- the EHR's id of the slot
    site            TEXT    NOT NULL,
    practitioner    TEXT,
    service_type    TEXT,                    -- PHI like the appointment's: for matching only
    location        TEXT,
    start_at        INTEGER NOT NULL,
    end_at          INTEGER NOT NULL,
    state           TEXT    NOT NULL,        -- free | held | booked | gone
    held_for        INTEGER,                 -- appointments.id of the hold or booking
    held_until      INTEGER,
    seen_gen        INTEGER NOT NULL,        -- the source's snapshot that last listed it
    updated_at      INTEGER NOT NULL,
    UNIQUE (source, slot_id)
);
CREATE INDEX slots_open ON slots (site, start_at) WHERE state IN ('free', 'held');
