-- Whether a POST of the request may be in flight right now (its attempt recorded, its outcome
-- not yet): a look-up of another request's in-doubt send waits while one with the same text is,
-- or it could take that one's record for its own.
ALTER TABLE messages ADD COLUMN posting boolean NOT NULL DEFAULT false;
