-- What the test handlers write: one row per handled event, in commit order.
CREATE TABLE effects (
    seq BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    patient TEXT NOT NULL,
    ordinal BIGINT NOT NULL,
    consumer TEXT NOT NULL
);
