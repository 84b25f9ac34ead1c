-- A fingerprint of each submission, so that an idempotency key reused with a
-- different body (e.g. a retry whose answers changed) is a conflict and not a
-- silent replay of the first check-in.
ALTER TABLE checkins ADD COLUMN request_hash TEXT;
