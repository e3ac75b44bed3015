-- What the running configuration was when the store last planned (issue 16, config reload): a
-- fingerprint of the message plan and templates. When a start or a reload finds it changed,
-- future appointments are planned again, so added steps are planned and removed ones withdrawn.
CREATE TABLE config_state (
    name        TEXT    NOT NULL PRIMARY KEY,   -- plan_fingerprint
    value       TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);
