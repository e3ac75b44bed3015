-- A patient's message opens WhatsApp's 24 h customer service window; template messages sent
-- inside it do not count against the messaging limit (issue 16). The limit's window and the
-- sender ask "did this contact write in the 24 h before this send", per contact and time.
CREATE INDEX replies_contact_time ON replies (contact_hash, received_at);
-- The moving 24 h itself (the messaging limit, the status page's send rate) reads messages by
-- send time; without this every pass scanned the whole table.
CREATE INDEX messages_sent_at ON messages (sent_at);
