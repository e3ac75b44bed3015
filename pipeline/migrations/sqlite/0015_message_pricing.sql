-- What each message costs (issue 16): Meta prices per message and says how in the status
-- webhooks' `pricing` object; the report multiplies it by the site's rate table, which is keyed by
-- the recipient's country calling code. The calling code (1, 44, 55...) is kept instead of any part
-- of the number itself.
ALTER TABLE messages ADD COLUMN calling_code     INTEGER;
ALTER TABLE messages ADD COLUMN pricing_category TEXT;    -- utility | marketing | authentication | service ...
ALTER TABLE messages ADD COLUMN pricing_type     TEXT;    -- regular | free_customer_service | free_entry_point | ''
ALTER TABLE messages ADD COLUMN billable         INTEGER; -- 1 | 0; NULL until a status carried pricing
