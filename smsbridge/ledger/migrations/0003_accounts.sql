-- Each provider account as its sender last reported it (the console's accounts page): whether
-- its keys were refused (held) and since when, and its sends and 429s over the last minute.
CREATE TABLE accounts (
    name                      text PRIMARY KEY,
    held_since                timestamptz,
    held_reason               text,
    sent_last_minute          integer NOT NULL DEFAULT 0,
    rate_limited_last_minute  integer NOT NULL DEFAULT 0,
    reported_by               text,
    updated_at                timestamptz NOT NULL DEFAULT now()
);
