-- Lifecycle: one appointment across feeds, per-feed snapshot tracking, no-show follow-ups.
--
-- appointments.source is the scheduling *system* whose ids the feeds carry (by default a connector's
-- own name). Two feeds of one system (an HL7 interface and the nightly CSV of the same EHR) update
-- the same row. Which feed has seen which appointment is tracked here, so that a snapshot sweep
-- cancels only appointments that its own feed once listed, never ones known only through another.
CREATE TABLE appointment_feeds (
    feed           TEXT    NOT NULL,        -- connector name
    appointment_id INTEGER NOT NULL REFERENCES appointments (id),
    seen_as_of_us  INTEGER NOT NULL,        -- newest input of this feed that listed the appointment
    PRIMARY KEY (feed, appointment_id)
) WITHOUT ROWID;

-- Until now every appointment belonged to exactly the feed named by its source.
INSERT INTO appointment_feeds (feed, appointment_id, seen_as_of_us)
SELECT source, id, seen_as_of_us FROM appointments;

-- The placer id links an event without a known filler id to the appointment it is about.
CREATE INDEX appointments_placer ON appointments (source, placer_id) WHERE placer_id IS NOT NULL;

-- No-show follow-ups live only while the appointment is a no-show; the other kinds as before.
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
                     AND NOT (kind = 'follow_up' AND NEW.status IN ('fulfilled', 'arrived', 'checked-in'))
           END;
END;
