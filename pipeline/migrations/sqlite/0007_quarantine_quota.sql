-- The quarantine quota: rejected input beyond a feed's or a source address's quota is answered
-- but not kept. One row per incident (drops with less than the quota window between them); the
-- counts only, never content. `source` is the sender's address, or `*` for the feed as a whole.
CREATE TABLE quarantine_dropped (
    id          INTEGER PRIMARY KEY,
    feed        TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    last_at     INTEGER NOT NULL,
    messages    INTEGER NOT NULL,
    bytes       INTEGER NOT NULL
);
CREATE INDEX quarantine_dropped_by_source ON quarantine_dropped (feed, source, last_at);
