-- FHIR Subscriptions number their events (issue 16): the highest event number each Subscription
-- of each feed has delivered, so that a notification or heartbeat whose counter jumps shows the
-- events that never arrived (the `fhir_subscription_gap` alert).
CREATE TABLE subscription_progress (
    feed          TEXT    NOT NULL,
    subscription  TEXT    NOT NULL,     -- the Subscription's reference, as the server names it
    last_event    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (feed, subscription)
);
