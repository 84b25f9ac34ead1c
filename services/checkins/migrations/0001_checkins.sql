-- Check-ins as submitted and scored. The CheckIn protobuf is the body; the
-- journal is kept apart so it never travels where it is not needed.
CREATE TABLE checkins (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    submitted_at BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body BYTEA NOT NULL,
    journal TEXT NOT NULL,
    crisis_triggers TEXT NOT NULL,
    UNIQUE (patient_id, idempotency_key)
);
CREATE INDEX checkins_patient_time ON checkins (patient_id, submitted_at, id);

-- One row per instrument answered, for due items and history.
CREATE TABLE checkin_measures (
    check_in_id TEXT NOT NULL REFERENCES checkins (id),
    patient_id TEXT NOT NULL,
    instrument TEXT NOT NULL,
    total BIGINT,
    submitted_at BIGINT NOT NULL,
    PRIMARY KEY (check_in_id, instrument)
);
CREATE INDEX checkin_measures_patient ON checkin_measures (patient_id, instrument, submitted_at);

CREATE TABLE homework_completions (
    check_in_id TEXT NOT NULL REFERENCES checkins (id),
    patient_id TEXT NOT NULL,
    care_plan_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    completed_at BIGINT NOT NULL,
    PRIMARY KEY (check_in_id, care_plan_id, task_id)
);
CREATE INDEX homework_completions_patient ON homework_completions (patient_id, task_id, completed_at);

-- Projections of careplans events: what this service needs to know about
-- patients, their care teams, plans and safety plans.
CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    time_zone TEXT NOT NULL
);

CREATE TABLE care_team_members (
    patient_id TEXT NOT NULL,
    clinician_id TEXT NOT NULL,
    PRIMARY KEY (patient_id, clinician_id)
);
CREATE INDEX care_team_members_clinician ON care_team_members (clinician_id);

CREATE TABLE care_team_versions (
    patient_id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE care_plans (
    id TEXT PRIMARY KEY NOT NULL,
    patient_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    status TEXT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX care_plans_patient ON care_plans (patient_id);

CREATE TABLE safety_plans (
    patient_id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL
);
