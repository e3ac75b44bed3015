-- Feeds of one system share appointments, and not every feed carries the EHR's privacy flags (an
-- HL7 message without PD1, a CSV export without an opt-in column). An event that says nothing
-- keeps the stored flags; `ehr_consent_at_us` is when the EHR value last changed, so an export
-- that merely repeats an old opt-in does not count as a new grant.
ALTER TABLE appointments ADD COLUMN ehr_consent_at_us INTEGER;
-- Which feed set the EHR consent and the protection flag (`medrelay explain` shows it).
ALTER TABLE appointments ADD COLUMN ehr_consent_feed TEXT;
ALTER TABLE appointments ADD COLUMN protected_feed TEXT;
UPDATE appointments SET ehr_consent_at_us = sv_at_us WHERE ehr_consent IS NOT NULL;
