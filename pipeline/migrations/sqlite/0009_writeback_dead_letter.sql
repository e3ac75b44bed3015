-- Write-back dead letter (issue 16): a batch the EHR refused for good no longer holds its system
-- forever. `refused` says the last failure was a refusal (AE, 4xx), not a network failure; staff
-- can retry it at once or skip it (`medrelay writeback retry|skip`): a skipped batch is closed
-- without being written, with who, when and why (also in the audit trail), and keeps its replies.
ALTER TABLE writeback_batches ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE writeback_batches ADD COLUMN skipped_at INTEGER;
ALTER TABLE writeback_batches ADD COLUMN skipped_by TEXT;
ALTER TABLE writeback_batches ADD COLUMN skip_reason TEXT;
