-- What the test handler writes: one row per handled event.
CREATE TABLE handled (event_id TEXT PRIMARY KEY NOT NULL);
