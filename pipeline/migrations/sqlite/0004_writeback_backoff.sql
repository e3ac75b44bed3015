-- A write-back batch that fails is retried with backoff (not on every pass), and a refusal by the
-- EHR raises an alert once instead of being retried silently.
ALTER TABLE writeback_batches ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE writeback_batches ADD COLUMN failed_at INTEGER;
