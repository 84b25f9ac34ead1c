-- Care plans: the current version in care_plans, every version in
-- care_plan_versions. Plan content is the protobuf CarePlan message.
CREATE TABLE care_plans (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL REFERENCES patients (id),
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    UNIQUE (org_id, idempotency_key)
);
CREATE INDEX care_plans_patient ON care_plans (patient_id, created_at, id);

CREATE TABLE care_plan_versions (
    care_plan_id TEXT NOT NULL REFERENCES care_plans (id),
    version BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (care_plan_id, version)
);

-- The care team: one row per member, in chain order.
CREATE TABLE care_team_members (
    patient_id TEXT NOT NULL REFERENCES patients (id),
    position BIGINT NOT NULL,
    clinician_id TEXT NOT NULL,
    role TEXT NOT NULL,
    display_name TEXT NOT NULL,
    PRIMARY KEY (patient_id, position)
);
CREATE INDEX care_team_members_clinician ON care_team_members (clinician_id, patient_id);

CREATE TABLE care_teams (
    patient_id TEXT PRIMARY KEY NOT NULL REFERENCES patients (id),
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Stanley-Brown safety plans: every version kept.
CREATE TABLE safety_plan_versions (
    patient_id TEXT NOT NULL REFERENCES patients (id),
    version BIGINT NOT NULL,
    body BYTEA NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (patient_id, version)
);
