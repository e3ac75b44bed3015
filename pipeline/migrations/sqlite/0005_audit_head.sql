-- The audit trail becomes keyed and sealed (issue 11: deleting the newest records went unnoticed,
-- and anyone who could write the file could recompute the unkeyed chain).
--
-- The head: how many records the trail has and the newest one's hash, sealed with an HMAC keyed
-- from the installation secret (`mac`) and updated in the same transaction as every append.
-- Records written before this migration (ids 1..legacy_records) keep their unkeyed SHA-256 chain;
-- the first keyed record names the last of them as its previous hash, so they cannot be changed
-- either. SQL cannot compute the HMAC: `mac` stays NULL until the first open with the secret seals
-- the head (pipeline/src/store/audit.rs, `seal_after_upgrade`).
CREATE TABLE audit_head (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    records        INTEGER NOT NULL,
    last_hash      TEXT    NOT NULL,
    legacy_records INTEGER NOT NULL,
    mac            TEXT
);
INSERT INTO audit_head (id, records, last_hash, legacy_records, mac)
SELECT 1,
       COALESCE(MAX(id), 0),
       COALESCE((SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1), 'genesis'),
       COALESCE(MAX(id), 0),
       NULL
FROM audit_log;

-- `medrelay status` shows an import that never finished (its process was killed) with the batches
-- it committed: found by import id, counted from their audit records.
CREATE INDEX ingest_batches_import ON ingest_batches (import_id);
CREATE INDEX audit_log_ingest_subject ON audit_log (subject) WHERE action = 'ingest';
