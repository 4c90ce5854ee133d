-- What the console and `smsbridge history` search by: each filter's first page is a short
-- walk down one of these indexes, newest first (see bench/ for the query plans).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE INDEX messages_from ON messages (from_number, created_at DESC, seq DESC);
CREATE INDEX messages_to ON messages (to_number, created_at DESC, seq DESC);
CREATE INDEX messages_extension ON messages (extension, created_at DESC, seq DESC);
CREATE INDEX messages_status ON messages (status, created_at DESC, seq DESC);
CREATE INDEX messages_body ON messages USING gin (body gin_trgm_ops);
