CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    external_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    UNIQUE (org_id, external_id),
    UNIQUE (org_id, idempotency_key)
);
CREATE INDEX patients_org_enrolled ON patients (org_id, enrolled_at, id);
