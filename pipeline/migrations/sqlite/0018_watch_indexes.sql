-- The after-pass checks (issue 16: quarantine growing, opt-out rate) read recent rows by time.
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE INDEX replies_action_time ON replies (action, received_at);
