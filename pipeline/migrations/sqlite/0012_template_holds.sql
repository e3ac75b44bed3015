-- Templates that must not be sent for now (issue 16): WhatsApp paused, disabled or rejected one
-- (message_template_status_update), or recategorised it away from UTILITY under the `halt` policy
-- (template_category_update). Held per template name, across languages; released when WhatsApp
-- approves or reinstates it, or moves it back to UTILITY. The sender defers held templates' steps.
CREATE TABLE template_holds (
    name    TEXT    NOT NULL,               -- the template's name in WhatsApp Manager
    cause   TEXT    NOT NULL,               -- status | category: each is released by its own news
    reason  TEXT    NOT NULL,               -- what WhatsApp said (event, category), never PHI
    since   INTEGER NOT NULL,
    PRIMARY KEY (name, cause)
);
