-- When each feed last delivered anything (good or bad input): the basis of the `feed_silent` alert
-- (issue 16: the nightly CSV that did not arrive by 06:00, an interface engine that went quiet).
-- One row per feed, updated in the same transaction as the input it records.
CREATE TABLE feed_activity (
    feed           TEXT    NOT NULL PRIMARY KEY,
    last_input_at  INTEGER NOT NULL
);
-- Feeds that delivered before this migration start from their newest import.
INSERT INTO feed_activity (feed, last_input_at)
    SELECT source, MAX(started_at) FROM imports GROUP BY source;
