-- Post-visit surveys (issue 15). A survey step's message carries rating buttons; the patient's
-- answers (rating, then a 0-10 score and a comment asked inside the service window) are kept per
-- survey message, for the KPI report by site, practitioner and service type.

-- A survey, like a follow-up, is about a visit that happened: a visit that is now fulfilled,
-- arrived or checked in keeps its pending survey.
DROP TRIGGER appointments_withdraw_stale_steps;
CREATE TRIGGER appointments_withdraw_stale_steps
AFTER UPDATE OF start_at, status, patient_cancelled_at ON appointments
WHEN NEW.start_at IS NOT OLD.start_at OR NEW.status IS NOT OLD.status
     OR NEW.patient_cancelled_at IS NOT OLD.patient_cancelled_at
BEGIN
    UPDATE outbox
       SET state = 'withdrawn',
           state_reason = CASE
               WHEN kind = 'no_show' AND slot_start <> NEW.start_at THEN 'appointment was rescheduled'
               WHEN kind = 'no_show' THEN 'appointment is no longer a no-show (now ' || NEW.status || ')'
               WHEN NEW.patient_cancelled_at IS NOT NULL THEN 'the patient cancelled on WhatsApp'
               WHEN NEW.status <> 'booked' THEN 'appointment is now ' || NEW.status
               ELSE 'appointment was rescheduled' END,
           updated_at = NEW.updated_at
     WHERE appointment_id = NEW.id
       AND state = 'pending'
       AND CASE WHEN kind = 'no_show'
                THEN NEW.status <> 'noshow' OR slot_start <> NEW.start_at
                ELSE (slot_start <> NEW.start_at OR NEW.status <> 'booked' OR NEW.patient_cancelled_at IS NOT NULL)
                     AND NOT (kind IN ('follow_up', 'survey') AND NEW.status IN ('fulfilled', 'arrived', 'checked-in'))
           END;
END;

-- One survey answered per survey message.
CREATE TABLE survey_responses (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL UNIQUE REFERENCES outbox (id),
    appointment_id  INTEGER NOT NULL REFERENCES appointments (id),
    contact_hash    TEXT    NOT NULL,
    rating          TEXT    NOT NULL,        -- good | ok | poor
    score           INTEGER,                 -- 0-10 (Net Promoter Score), if asked and answered
    comment         TEXT,                    -- PHI: what the patient wrote
    low             INTEGER NOT NULL DEFAULT 0,   -- 1: at or below the configured low score
    conversation_id INTEGER,                 -- the inbox conversation a low score opened
    awaiting        TEXT,                    -- score | comment: what was asked and not yet answered
    asked_at        INTEGER,                 -- when it was asked
    answered_at     INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX survey_responses_awaiting ON survey_responses (contact_hash, asked_at) WHERE awaiting IS NOT NULL;
CREATE INDEX survey_responses_appointment ON survey_responses (appointment_id);
