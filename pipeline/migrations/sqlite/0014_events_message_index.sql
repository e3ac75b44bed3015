-- The events index of 0006 served one query only: "was this message (sender identity + content)
-- already applied to this appointment?", asked only for inputs that carry a message identity (HL7).
-- Indexing every event (a CSV row has none) cost the bulk import its maintenance on each insert
-- (BENCHMARKS.md: CSV import +12 % after 0006). Partial: only events with a message identity.
DROP INDEX events_appointment;
CREATE INDEX events_message ON events (source, filler_id, message_id) WHERE message_id IS NOT NULL;
