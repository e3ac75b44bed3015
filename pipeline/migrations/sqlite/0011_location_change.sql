-- A booked appointment that moves to another location at the same time (a room change) is news the
-- patient must hear at once (issue 10): `location_rev` counts such moves, and the scheduler plans a
-- `location_change` step keyed by it (step name `<step>#<rev>`), so each move is announced once.
ALTER TABLE appointments ADD COLUMN location_rev INTEGER NOT NULL DEFAULT 0;

-- A newer move supersedes an announcement that has not gone out yet: the patient hears only the
-- latest location (each message renders the location at send time anyway).
CREATE TRIGGER appointments_withdraw_superseded_location_change
AFTER UPDATE OF location_rev ON appointments
WHEN NEW.location_rev <> OLD.location_rev
BEGIN
    UPDATE outbox
       SET state = 'withdrawn',
           state_reason = 'superseded by a newer location change',
           updated_at = NEW.updated_at
     WHERE appointment_id = NEW.id
       AND state = 'pending'
       AND kind = 'location_change';
END;
