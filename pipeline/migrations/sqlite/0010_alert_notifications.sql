-- Alert sink (issue 16): each alert is pushed once when it fires and once when it is resolved, to a
-- configured webhook (JSON, Slack or Teams text), retried with backoff until the receiver takes it.
-- Alerts raised before this migration count as already notified (an upgrade sends no backlog).
ALTER TABLE alerts ADD COLUMN notified_at INTEGER;
ALTER TABLE alerts ADD COLUMN recovery_notified_at INTEGER;
ALTER TABLE alerts ADD COLUMN notify_failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN next_notify_at INTEGER;
UPDATE alerts SET notified_at = at, recovery_notified_at = resolved_at;
