-- What WhatsApp says the business may do (issue 16): the messaging limit as the Graph API or a
-- webhook last stated it. It beats `[whatsapp] messaging_limit` (the configured fallback), and
-- every instance on the database uses the same value. `value` NULL is unlimited.
CREATE TABLE account_limits (
    name        TEXT    NOT NULL PRIMARY KEY,   -- messaging_limit
    value       INTEGER,
    source      TEXT    NOT NULL,               -- graph_api | webhook
    updated_at  INTEGER NOT NULL
);
