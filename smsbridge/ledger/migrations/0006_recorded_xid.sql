-- Which transaction recorded each message, for the console's live updates: a poll asks for the
-- messages whose transaction its last snapshot could not see (txid_visible_in_snapshot), so a
-- message shows up once its transaction commits, whatever its created_at (an inbound message
-- is dated when the gateway received it) and whatever order concurrent batches commit in.
-- Rows from before this migration stay NULL: they are never new. txid_* are PostgreSQL 12's
-- names (later ones keep them).
ALTER TABLE messages ADD COLUMN recorded_xid bigint;
ALTER TABLE messages ALTER COLUMN recorded_xid SET DEFAULT txid_current();
CREATE INDEX messages_recorded ON messages (recorded_xid) WHERE recorded_xid IS NOT NULL;
