-- Day-only appointments (issue 10: CSV exports with a date and no time, or a placeholder midnight).
-- `start_at` is then the first instant of that local day and `time_unknown` = 1 says so: reminders
-- are planned per day (never on the day itself) and no message renders a time.
ALTER TABLE appointments ADD COLUMN time_unknown INTEGER NOT NULL DEFAULT 0;
