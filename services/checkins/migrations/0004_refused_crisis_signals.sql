-- Crisis signals found in submissions that were refused (malformed, over a
-- limit, an idempotency key reused with a different body). Only the signal
-- is kept, never the refused input: the body is the RefusedCrisisSignal event
-- it was announced with (trigger ids, the answers of the items that fired,
-- the detector's levels, rule ids and byte spans; no journal text).
CREATE TABLE refused_crisis_signals (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    refusal TEXT NOT NULL,
    triggers TEXT NOT NULL,
    -- A client retrying the same refused request (same key, same body)
    -- records the signal once; without a key every refusal is recorded.
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    body BYTEA NOT NULL,
    UNIQUE (patient_id, idempotency_key, request_hash)
);
CREATE INDEX refused_crisis_signals_patient ON refused_crisis_signals (patient_id, received_at);

-- Who the care team is, in the order alerts climb, so a crisis reply can say
-- which member is being paged.
ALTER TABLE care_team_members ADD COLUMN position BIGINT NOT NULL DEFAULT 0;
ALTER TABLE care_team_members ADD COLUMN role TEXT NOT NULL DEFAULT '';
ALTER TABLE care_team_members ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
