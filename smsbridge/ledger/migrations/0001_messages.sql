-- One row per message, inbound (Flowroute's id) and outbound (the PBX's request id), shared
-- by every component: its history (status, timeline) and the state that makes its one
-- irreversible step (publishing the InboundMessage, POSTing to Flowroute) happen once.

CREATE TABLE messages (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    direction    text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    id           text NOT NULL,
    provider     text,
    from_number  text,
    to_number    text,
    body         text,
    media        jsonb NOT NULL DEFAULT '[]',
    extension    text,
    -- What operators see: received, delivered_to_pbx, unrouted (inbound); queued, sent,
    -- delivered, undelivered, failed, blocked (outbound).
    status       text NOT NULL,
    provider_id  text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    raw          jsonb,
    -- Doing the step once. inbound: new -> publishing -> published;
    -- outbound: queued -> sending -> sent | settled (failed or blocked for good).
    state        text NOT NULL,
    claim_token  uuid,          -- who is doing the step now ...
    claim_until  timestamptz,   -- ... until when (a lease: a dead owner's claim runs out)
    -- From when an attempt may have succeeded without its outcome being recorded: whoever
    -- takes the message over settles that first (the journal, Flowroute's records).
    doubt_since  timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    UNIQUE (direction, id)
);

-- A message's timeline. `event_key` (a status event's AMQP message id) makes recording the same
-- event twice (a redelivery) a no-op.
CREATE TABLE message_events (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    direction   text NOT NULL,
    message_id  text NOT NULL,
    status      text NOT NULL,
    at          timestamptz NOT NULL,
    reason      text,
    detail      jsonb,
    event_key   text
);

CREATE INDEX message_events_message ON message_events (direction, message_id, at);
CREATE UNIQUE INDEX message_events_key ON message_events (direction, message_id, event_key);
CREATE INDEX message_events_at ON message_events (at);
CREATE INDEX messages_created ON messages (created_at DESC, seq DESC);
CREATE INDEX messages_provider_id ON messages (provider_id) WHERE provider_id IS NOT NULL;

-- A status only moves forward: a late 'sent' never hides a 'delivered', and a 'failed'
-- (say, a second request with an id already used) never hides a message that was sent.
CREATE FUNCTION smsbridge_status_rank(status text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'queued' THEN 0
        WHEN 'received' THEN 0
        WHEN 'failed' THEN 1
        WHEN 'blocked' THEN 1
        WHEN 'sent' THEN 2
        WHEN 'delivered_to_pbx' THEN 2
        WHEN 'unrouted' THEN 2
        WHEN 'delivered' THEN 4
        WHEN 'undelivered' THEN 4
        ELSE 1
    END
$$;
